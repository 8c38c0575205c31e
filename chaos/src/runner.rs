//! Crash-point enumeration: a traced run lists the crash points an
//! operation passes; then, for each one, a fresh fixture runs the operation
//! in a child that dies exactly there, recovery runs, and every invariant
//! is checked. Double faults crash recovery too.

use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::fixture::Fixture;
use crate::invariants::{summary, Summary};
use crate::scenario::Op;

/// How a case ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum Outcome {
    RolledBack,
    RolledForward,
    /// The crash point was not reached (the run finished first).
    NotReached,
    Violation(Vec<String>),
}

impl Outcome {
    /// The outcome of a case whose invariants were checked: its
    /// violations, else whether the state is the post-op one.
    pub fn judged(violations: Vec<String>, post: bool) -> Outcome {
        if !violations.is_empty() {
            Outcome::Violation(violations)
        } else if post {
            Outcome::RolledForward
        } else {
            Outcome::RolledBack
        }
    }
}

/// Runs `run` over `jobs` on `parallel` threads; the cases come back in the
/// jobs' order. With a `label`, progress and violations go to stderr.
pub fn run_parallel<J: Send>(
    jobs: Vec<J>,
    parallel: usize,
    label: Option<&str>,
    run: impl Fn(J) -> Case + Sync,
) -> Vec<Case> {
    let total = jobs.len();
    let queue = std::sync::Mutex::new(jobs.into_iter().enumerate().rev().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                let Some((i, j)) = next else { break };
                let case = run(j);
                if let (Some(l), Outcome::Violation(v)) = (label, &case.outcome) {
                    eprintln!(
                        "  VIOLATION {l} {} {} disk(s) at {}: {}",
                        case.op,
                        case.disks,
                        case.point,
                        v.join("; ")
                    );
                }
                if let Ok(mut r) = results.lock() {
                    r.push((i, case));
                    if let Some(l) = label.filter(|_| r.len() % 50 == 0) {
                        eprintln!("  {} / {total} {l} cases", r.len());
                    }
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_default();
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, c)| c).collect()
}

/// One crash case.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub op: String,
    pub disks: usize,
    /// 1-based index of the crash point in the operation's trace.
    pub crash_at: u64,
    pub point: String,
    /// For double faults: the crash point in recovery.
    pub recovery_crash_at: Option<u64>,
    pub recovery_point: Option<String>,
    pub outcome: Outcome,
    pub millis: u128,
}

impl Case {
    /// A case that could not run: the error is its violation.
    pub fn could_not_run(op: String, disks: usize, crash_at: u64, point: String, e: &anyhow::Error) -> Case {
        Case {
            op,
            disks,
            crash_at,
            point,
            recovery_crash_at: None,
            recovery_point: None,
            outcome: Outcome::Violation(vec![format!("the case could not run: {e:#}")]),
            millis: 0,
        }
    }
}

/// The reference states of an operation on `disks` disks.
pub struct Reference {
    pub pre: Summary,
    pub post: Summary,
    pub trace: Vec<String>,
}

fn trace_file(f: &Fixture, name: &str) -> std::path::PathBuf {
    f.root.path().join(format!("trace-{name}"))
}

pub(crate) fn read_trace(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, n)| n.to_string()))
        .collect())
}

/// Runs `op` once without crashing, tracing its crash points.
pub fn reference(op: Op, disks: usize) -> Result<Reference> {
    let f = Fixture::new(disks)?;
    op.setup(&f)?;
    let pre = summary(&f)?;
    let tf = trace_file(&f, "op");
    let out = f
        .command(&op.args())
        .env("SNAPJOURNAL_CRASH_TRACE", &tf)
        .output()?;
    if !out.status.success() {
        bail!(
            "reference run of {} on {disks} disk(s) failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let post = summary(&f)?;
    Ok(Reference {
        pre,
        post,
        trace: read_trace(&tf)?,
    })
}

/// Runs `op` armed to die at its `crash_at`-th crash point; whether it
/// died there (false: it finished first).
fn crash_op(f: &Fixture, op: Op, crash_at: u64) -> Result<bool> {
    let out = f
        .command(&op.args())
        .env("SNAPJOURNAL_CRASH_AT", crash_at.to_string())
        .output()?;
    Ok(out.status.signal() == Some(libc::SIGKILL))
}

/// Traces what recovery passes after a crash of `op` at `crash_at`.
pub fn recovery_trace(op: Op, disks: usize, crash_at: u64) -> Result<Vec<String>> {
    let f = Fixture::new(disks)?;
    op.setup(&f)?;
    if !crash_op(&f, op, crash_at)? {
        return Ok(vec![]);
    }
    let tf = trace_file(&f, "recover");
    f.command(&["recover"])
        .env("SNAPJOURNAL_CRASH_TRACE", &tf)
        .output()?;
    read_trace(&tf)
}

/// A fixture brought to an operation's starting state once, saved, and
/// restored at the same absolute path before each case (paths inside the
/// journal and the qcow2 headers stay valid), so a case costs only the
/// operation, the recovery and the checks.
pub struct Prepared {
    pub fixture: Fixture,
    saved: tempfile::TempDir,
    pub op: Op,
    /// Checksums of the user's images in the starting state.
    pub sums: Vec<(String, u32)>,
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()?;
    if !st.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

impl Prepared {
    /// Builds the starting state of `op` on `disks` disks.
    pub fn new(op: Op, disks: usize) -> Result<Prepared> {
        let fixture = Fixture::new(disks)?;
        op.setup(&fixture)?;
        let sums = fixture.user_file_sums()?;
        let saved = tempfile::Builder::new().prefix("sj-saved-").tempdir()?;
        copy_tree(fixture.root.path(), saved.path())?;
        Ok(Prepared {
            fixture,
            saved,
            op,
            sums,
        })
    }

    /// Puts the fixture back in the starting state.
    pub fn restore(&self) -> Result<()> {
        let root = self.fixture.root.path();
        for e in std::fs::read_dir(root)? {
            let p = e?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        copy_tree(self.saved.path(), root)
    }
}

/// One crash case on a fresh fixture: crash `op` at `crash_at` (and
/// recovery at `recovery_crash_at`), recover, check.
pub fn run_case(
    op: Op,
    disks: usize,
    reference: &Reference,
    crash_at: u64,
    recovery_crash_at: Option<u64>,
    recovery_point: Option<String>,
) -> Result<Case> {
    let p = Prepared::new(op, disks)?;
    run_case_on(&p, reference, crash_at, recovery_crash_at, recovery_point)
}

/// One crash case on a prepared fixture (restored first).
pub fn run_case_on(
    prepared: &Prepared,
    reference: &Reference,
    crash_at: u64,
    recovery_crash_at: Option<u64>,
    recovery_point: Option<String>,
) -> Result<Case> {
    let started = Instant::now();
    prepared.restore()?;
    let f = &prepared.fixture;
    let op = prepared.op;
    let disks = f.disks.len();
    let sums = prepared.sums.clone();
    let point = reference
        .trace
        .get(crash_at as usize - 1)
        .cloned()
        .unwrap_or_else(|| "?".into());
    let mut case = Case {
        op: op.name().into(),
        disks,
        crash_at,
        point,
        recovery_crash_at,
        recovery_point,
        outcome: Outcome::NotReached,
        millis: 0,
    };
    if !crash_op(f, op, crash_at)? {
        case.millis = started.elapsed().as_millis();
        return Ok(case);
    }
    if let Some(j) = recovery_crash_at {
        let st = f
            .command(&["recover"])
            .env("SNAPJOURNAL_CRASH_AT", j.to_string())
            .output()?
            .status;
        if st.signal() != Some(libc::SIGKILL) && !st.success() {
            case.outcome = Outcome::Violation(vec![format!("crashed recovery exited with {st}")]);
            return Ok(case);
        }
    }
    recover_and_judge(f, op, reference, &sums, case, started)
}

/// Runs `recover` on `f` and judges the outcome into `case`: a failed
/// recovery or a broken invariant is a violation, else the state tells
/// rolled forward from rolled back.
pub fn recover_and_judge(
    f: &Fixture,
    op: Op,
    reference: &Reference,
    sums: &[(String, u32)],
    case: Case,
    started: Instant,
) -> Result<Case> {
    recover_and_judge_with(f, op, reference, sums, case, started, false)
}

/// [`recover_and_judge`]; with `lost_tracking_reported`, fsck's findings
/// of lost change tracking (a bitmap missing, in use, or not recording)
/// are the expected report of a crash inside qemu-img, not violations.
pub fn recover_and_judge_with(
    f: &Fixture,
    op: Op,
    reference: &Reference,
    sums: &[(String, u32)],
    mut case: Case,
    started: Instant,
    lost_tracking_reported: bool,
) -> Result<Case> {
    let out = f.run(&["recover"])?;
    if !out.status.success() {
        case.outcome = Outcome::Violation(vec![format!(
            "recover failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )]);
        return Ok(case);
    }
    let violations = crate::invariants::check_with(
        f,
        op,
        &reference.pre,
        &reference.post,
        sums,
        lost_tracking_reported,
    )?;
    let post = violations.is_empty() && summary(f)? == reference.post;
    case.outcome = Outcome::judged(violations, post);
    case.millis = started.elapsed().as_millis();
    Ok(case)
}
