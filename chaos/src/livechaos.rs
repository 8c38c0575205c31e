//! Crash-point enumeration of live operations on a real QEMU.
//!
//! For each operation a traced run lists its crash points; then, for each
//! point and for each fate of QEMU (it survives the agent, or it is killed
//! too), a fresh fixture with a running QEMU is brought to the starting
//! state, the operation dies at that point, the guest writes once more
//! through QEMU (when QEMU is alive), recovery runs, and the invariants are
//! checked: fsck clean, recovery again a no-op, the state the pre-op or the
//! post-op state, QEMU's graph equal to the journal's with no job or node
//! left behind, and, after QEMU is stopped, every pattern the guest wrote
//! readable through the chains.

use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use crate::fixture::{region_holds, Fixture};
use crate::invariants::{summary, Summary};
use crate::runner::{Case, Outcome};
use crate::scenario::{A, B, C, D};

/// A live operation of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LiveOp {
    /// Snapshot both disks of a running domain (one QMP transaction).
    Create,
    /// Delete the newest snapshot: active block-commit.
    DeleteActive,
    /// Delete the oldest snapshot, over the user's base: block-stream into
    /// an intermediate image.
    DeleteStream,
    /// Revert a running domain: stop, revert, start.
    Revert,
    /// Snapshot and checkpoint c2 in one QMP transaction, with checkpoint
    /// c1 recording.
    SnapshotWithCheckpoint,
    /// Delete checkpoint c2 (in the active overlay) of a running domain:
    /// merged into c1, which takes its place.
    CheckpointDelete,
    /// Delete the newest snapshot by an active block-commit while
    /// checkpoints keep bitmaps on the disks: c2's recording bitmap is
    /// carried into the base, which becomes the active image.
    DeleteWithCheckpoints,
    /// Revert a running domain to a snapshot older than checkpoint c2: c2
    /// is removed, c1 records in the new overlays.
    RevertWithCheckpoints,
}

impl LiveOp {
    /// Every live operation.
    pub const ALL: [LiveOp; 8] = [
        LiveOp::Create,
        LiveOp::DeleteActive,
        LiveOp::DeleteStream,
        LiveOp::Revert,
        LiveOp::SnapshotWithCheckpoint,
        LiveOp::CheckpointDelete,
        LiveOp::DeleteWithCheckpoints,
        LiveOp::RevertWithCheckpoints,
    ];

    /// The operation's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            LiveOp::Create => "live-create",
            LiveOp::DeleteActive => "live-delete-active-commit",
            LiveOp::DeleteStream => "live-delete-stream",
            LiveOp::Revert => "live-revert",
            LiveOp::SnapshotWithCheckpoint => "live-snapshot-with-checkpoint",
            LiveOp::CheckpointDelete => "live-checkpoint-delete",
            LiveOp::DeleteWithCheckpoints => "live-delete-with-checkpoints",
            LiveOp::RevertWithCheckpoints => "live-revert-with-checkpoints",
        }
    }

    /// A revert (stop, revert, start: three transactions).
    pub fn is_revert(self) -> bool {
        matches!(self, LiveOp::Revert | LiveOp::RevertWithCheckpoints)
    }

    /// Parses a name from [`LiveOp::name`].
    pub fn parse(s: &str) -> Option<LiveOp> {
        LiveOp::ALL.into_iter().find(|o| o.name() == s)
    }

    pub(crate) fn args(self) -> Vec<&'static str> {
        match self {
            LiveOp::Create => vec!["snapshot", "create", "vm", "s9"],
            LiveOp::DeleteActive => vec!["snapshot", "delete", "vm", "s2"],
            LiveOp::DeleteStream => vec!["snapshot", "delete", "vm", "s1"],
            LiveOp::Revert => vec!["snapshot", "revert", "vm", "s1"],
            LiveOp::SnapshotWithCheckpoint => vec!["snapshot", "create", "vm", "s9", "--checkpoint", "c2"],
            LiveOp::CheckpointDelete => vec!["checkpoint", "delete", "vm", "c2"],
            LiveOp::DeleteWithCheckpoints => vec!["snapshot", "delete", "vm", "s2"],
            LiveOp::RevertWithCheckpoints => vec!["snapshot", "revert", "vm", "s1"],
        }
    }

    /// Starts QEMU and writes/snapshots up to the starting state.
    pub(crate) fn setup(self, f: &Fixture) -> Result<()> {
        f.start()?;
        f.guest_write(A, 0)?;
        if self == LiveOp::Create {
            return Ok(());
        }
        if self == LiveOp::DeleteWithCheckpoints {
            // c1 records in s1's overlays, c2 in s2's (one region each, so
            // the delete commits).
            f.ok(&["checkpoint", "create", "vm", "c1"])?;
            f.ok(&["snapshot", "create", "vm", "s1"])?;
            f.guest_write(B, 1)?;
            f.ok(&["snapshot", "create", "vm", "s2", "--checkpoint", "c2"])?;
            f.guest_write(C, 2)?;
            return Ok(());
        }
        if self == LiveOp::RevertWithCheckpoints {
            f.ok(&["checkpoint", "create", "vm", "c1"])?;
            f.ok(&["snapshot", "create", "vm", "s1"])?;
            // QEMU stores c1's bitmap in the base image (the active image
            // when c1 was taken) when it closes it: restarted here, so
            // that the base is final before I8 takes its checksum and the
            // revert's stop does not write it.
            f.ok(&["domain", "stop", "vm"])?;
            f.start()?;
            f.guest_write(B, 1)?;
            f.ok(&["checkpoint", "create", "vm", "c2"])?;
            return Ok(());
        }
        if matches!(self, LiveOp::SnapshotWithCheckpoint | LiveOp::CheckpointDelete) {
            f.ok(&["checkpoint", "create", "vm", "c1"])?;
            f.guest_write(B, 1)?;
            if self == LiveOp::CheckpointDelete {
                f.ok(&["snapshot", "create", "vm", "s1", "--checkpoint", "c2"])?;
                f.guest_write(C, 2)?;
            }
            return Ok(());
        }
        f.ok(&["snapshot", "create", "vm", "s1"])?;
        f.guest_write(B, 1)?;
        if self == LiveOp::Revert {
            return Ok(());
        }
        f.ok(&["snapshot", "create", "vm", "s2"])?;
        f.guest_write(C, 2)?;
        Ok(())
    }

    /// What the present must read (region → pattern) after the operation
    /// (`post`) or without it.
    pub(crate) fn present(self, post: bool) -> Vec<(u64, u8)> {
        match self {
            LiveOp::Create => vec![(0, A)],
            LiveOp::DeleteActive | LiveOp::DeleteStream => vec![(0, A), (1, B), (2, C)],
            LiveOp::Revert | LiveOp::RevertWithCheckpoints if post => vec![(0, A)],
            LiveOp::Revert | LiveOp::RevertWithCheckpoints => vec![(0, A), (1, B)],
            LiveOp::DeleteWithCheckpoints => vec![(0, A), (1, B), (2, C)],
            LiveOp::SnapshotWithCheckpoint => vec![(0, A), (1, B)],
            LiveOp::CheckpointDelete => vec![(0, A), (1, B), (2, C)],
        }
    }
}

/// What happens to QEMU when the agent dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QemuFate {
    Survives,
    Killed,
}

/// The region the guest writes after the crash.
pub(crate) const AFTER_CRASH_REGION: u64 = 4;

/// The `crash_at` of a case whose operation finishes, after which QEMU is
/// killed (a host's OOM killer): every flushed guest write must survive.
pub const AFTER_FINISHED: u64 = 0;

fn read_trace(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, n)| n.to_string()))
        .collect()
}

/// The reference run: pre and post summaries and the crash points passed.
pub struct LiveReference {
    /// The disks of the domain the operation ran on.
    pub disks: usize,
    pub pre: Summary,
    pub post: Summary,
    pub trace: Vec<String>,
    /// How long the operation took, process start to exit.
    pub millis: u64,
}

/// Runs `op` once on a domain with `disks` disks without crashing,
/// tracing its crash points.
pub fn reference(op: LiveOp, disks: usize) -> Result<LiveReference> {
    let f = Fixture::new(disks)?;
    op.setup(&f)?;
    let pre = summary(&f)?;
    let tf = f.root.path().join("trace-live");
    let t0 = Instant::now();
    let out = f
        .command(&op.args())
        .env("SNAPJOURNAL_CRASH_TRACE", &tf)
        .output()?;
    let millis = t0.elapsed().as_millis() as u64;
    if !out.status.success() {
        bail!(
            "reference run of {} failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let post = summary(&f)?;
    let deaths = f.qemu_deaths();
    if !deaths.is_empty() {
        bail!("reference run of {}: {}", op.name(), deaths.join("; "));
    }
    Ok(LiveReference {
        disks,
        pre,
        post,
        trace: read_trace(&tf),
        millis,
    })
}

/// One case: `op` dies at its `crash_at`-th crash point, QEMU meets
/// `fate`, recovery (itself killed at `recovery_crash_at`, then run
/// again), checks.
pub fn run_case(
    op: LiveOp,
    reference: &LiveReference,
    crash_at: u64,
    fate: QemuFate,
    recovery_crash_at: Option<u64>,
) -> Result<Case> {
    let started = Instant::now();
    let f = Fixture::new(reference.disks)?;
    let case = run_case_on(&f, op, reference, crash_at, fate, recovery_crash_at, started);
    with_qemu_deaths(&f, case)
}

/// Adds every QEMU death the test did not cause to `case`'s violations (or
/// to its error).
pub(crate) fn with_qemu_deaths(f: &Fixture, case: Result<Case>) -> Result<Case> {
    let deaths = f.qemu_deaths();
    if deaths.is_empty() {
        return case;
    }
    let mut case = case.map_err(|e| e.context(deaths.join("; ")))?;
    let mut v = match std::mem::replace(&mut case.outcome, Outcome::NotReached) {
        Outcome::Violation(v) => v,
        _ => Vec::new(),
    };
    v.extend(deaths);
    case.outcome = Outcome::Violation(v);
    Ok(case)
}

fn run_case_on(
    f: &Fixture,
    op: LiveOp,
    reference: &LiveReference,
    crash_at: u64,
    fate: QemuFate,
    recovery_crash_at: Option<u64>,
    started: Instant,
) -> Result<Case> {
    op.setup(f)?;
    // The guest legitimately writes to a user image while it is a disk's
    // active layer: I8 covers the user images below the active layers.
    let active: Vec<String> = f.active()?.into_iter().map(|(_, p)| p).collect();
    let user_sums: Vec<(String, u32)> = f
        .user_file_sums()?
        .into_iter()
        .filter(|(p, _)| !active.contains(p))
        .collect();
    let mut case = Case {
        op: format!(
            "{}{}",
            op.name(),
            if fate == QemuFate::Killed {
                "+qemu-killed"
            } else {
                ""
            }
        ),
        disks: reference.disks,
        crash_at,
        point: if crash_at == AFTER_FINISHED {
            "after Finished (QEMU killed, as a host's OOM killer would)".into()
        } else {
            reference
                .trace
                .get(crash_at as usize - 1)
                .cloned()
                .unwrap_or_else(|| "?".into())
        },
        recovery_crash_at,
        recovery_point: None,
        outcome: Outcome::NotReached,
        millis: 0,
    };
    let mut cmd = f.command(&op.args());
    if crash_at != AFTER_FINISHED {
        cmd.env("SNAPJOURNAL_CRASH_AT", crash_at.to_string());
    }
    let st = cmd.output()?.status;
    f.note_qemus();
    if crash_at == AFTER_FINISHED && !st.success() {
        case.outcome = Outcome::Violation(vec![format!("the operation failed: {st}")]);
        return Ok(case);
    }
    if crash_at != AFTER_FINISHED && st.signal() != Some(libc::SIGKILL) {
        case.millis = started.elapsed().as_millis();
        return Ok(case);
    }
    let mut want = Vec::new();
    match fate {
        QemuFate::Killed => f.kill_qemu(),
        QemuFate::Survives => {
            // The guest keeps writing while nobody recovers yet.
            if f.qemu_pid().is_some() {
                f.guest_write(D, AFTER_CRASH_REGION)?;
                want.push((AFTER_CRASH_REGION, vec![D]));
            }
        }
    }
    if let Some(j) = recovery_crash_at {
        let st = f
            .command(&["recover"])
            .env("SNAPJOURNAL_CRASH_AT", j.to_string())
            .output()?
            .status;
        f.note_qemus();
        if st.signal() != Some(libc::SIGKILL) && !st.success() {
            case.outcome = Outcome::Violation(vec![format!("crashed recovery exited with {st}")]);
            return Ok(case);
        }
    }
    let out = f.run(&["recover"])?;
    if !out.status.success() {
        case.outcome = Outcome::Violation(vec![format!(
            "recover failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )]);
        return Ok(case);
    }
    let (violations, post) = check(f, op, reference, &user_sums, &want, fate)?;
    case.outcome = Outcome::judged(violations, post);
    case.millis = started.elapsed().as_millis();
    Ok(case)
}

/// fsck's findings as violations. A QEMU killed with the agent never stored
/// its dirty bitmaps: those it held are missing, marked in use, or as they
/// were before its last changes in the images, and fsck reports the lost
/// change tracking; that is QEMU's
/// nature, not a broken transaction, so it is not a violation then.
fn fsck_violations(f: &Fixture, fate: QemuFate, v: &mut Vec<String>) -> Result<()> {
    let exec = recovery::open_without_recovery(&f.state)?;
    let report = recovery::fsck(&exec, None, false)?;
    for x in &report.findings {
        let lost = crate::invariants::is_lost_tracking(x.kind);
        if fate == QemuFate::Killed && lost {
            continue;
        }
        v.push(format!("{} {} {}: {}", x.invariant, x.kind, x.subject, x.message));
    }
    for x in &report.could_not_check {
        v.push(format!("fsck could not check: {x}"));
    }
    Ok(())
}

/// The invariants after recovery; returns the violations and whether the
/// state is the post-op one.
/// Whether `now` is the post-op state of a delete that merged in the
/// other direction than the reference run did (a pull instead of a
/// commit: the planner picks whichever moves less data, and guest writes
/// during the operation can tip it): the same snapshots, current snapshot
/// and checkpoints, and on every disk a chain as long as the reference's,
/// on the same base, whose active image is one of the pre-op chain's.
fn merged_the_other_way(now: &Summary, reference: &LiveReference) -> bool {
    let (pre, post) = (&reference.pre, &reference.post);
    now.snapshots == post.snapshots
        && now.current == post.current
        && now.checkpoints == post.checkpoints
        && now.chains.len() == post.chains.len()
        && now.chains.iter().all(|(disk, chain)| {
            let (Some(want), Some(before)) = (post.chains.get(disk), pre.chains.get(disk)) else {
                return false;
            };
            chain.len() == want.len()
                && chain.last() == want.last()
                && chain.first().is_some_and(|a| before.contains(a))
        })
}

/// `after_crash`: regions the guest wrote after the operation started, each
/// with the patterns it may hold (the last acknowledged write, or one that
/// was in flight).
pub(crate) fn check(
    f: &Fixture,
    op: LiveOp,
    reference: &LiveReference,
    user_sums: &[(String, u32)],
    after_crash: &[(u64, Vec<u8>)],
    fate: QemuFate,
) -> Result<(Vec<String>, bool)> {
    let mut v = Vec::new();
    fsck_violations(f, fate, &mut v)?;
    let again: serde_json::Value = serde_json::from_str(&f.ok(&["--json", "recover"])?)?;
    if again["transactions"].as_array().is_none_or(|a| !a.is_empty()) {
        v.push(format!("I7 a second recovery found work: {again}"));
    }
    let now = summary(f)?;
    let deletes = matches!(op, LiveOp::DeleteActive | LiveOp::DeleteStream);
    let post = if now == reference.post
        || (deletes && now != reference.pre && merged_the_other_way(&now, reference))
    {
        true
    } else if now == reference.pre {
        false
    } else {
        v.push(format!(
            "I6 the state is neither the pre-op nor the post-op state:\n  now  {now:?}\n  pre  {:?}\n  post {:?}",
            reference.pre, reference.post
        ));
        return Ok((v, false));
    };
    let state = f.state()?;
    let dom = state
        .domains
        .get(&f.domain)
        .ok_or_else(|| anyhow!("domain {} is gone", f.domain))?;
    // A domain recorded running: QEMU's graph is the journal's (I2), with
    // no job and no node of ours left behind.
    if dom.core.runtime.is_some() {
        match f.graph() {
            Err(e) => v.push(format!(
                "I2 the domain is recorded running but QEMU does not answer: {e}"
            )),
            Ok(g) => {
                for d in dom.core.disks.values() {
                    let ours: Vec<&str> = d.chain.iter().map(|c| c.path.as_str()).collect();
                    let real: Option<Vec<&str>> = g
                        .devices
                        .iter()
                        .find(|x| x.id == d.target)
                        .map(|x| x.chain.iter().map(|l| l.path.as_str()).collect());
                    if real.as_deref() != Some(&ours[..]) {
                        v.push(format!(
                            "I2 disk {}: QEMU has {real:?}, the journal {ours:?}",
                            d.target
                        ));
                    }
                }
                let in_chains: std::collections::BTreeSet<&str> = dom
                    .core
                    .disks
                    .values()
                    .flat_map(|d| d.chain.iter().map(|c| c.path.as_str()))
                    .collect();
                for (node, (_, file)) in &g.nodes {
                    if !in_chains.contains(file.as_str()) {
                        v.push(format!("I3 QEMU still has node {node} on {file}, in no chain"));
                    }
                }
            }
        }
        match f.qmp().and_then(|mut q| q.jobs().map_err(|e| anyhow!("{e}"))) {
            Ok(jobs) if !jobs.is_empty() => v.push(format!("I7 block jobs left in QEMU: {jobs:?}")),
            Ok(_) => {}
            Err(e) => v.push(format!("cannot list QEMU's jobs: {e}")),
        }
        if let Err(e) = f.ok(&["domain", "stop", "vm"]) {
            v.push(format!("stopping the domain failed: {e}"));
            return Ok((v, post));
        }
        // The bitmaps QEMU stored on its way out, as the journal says.
        fsck_violations(f, fate, &mut v)?;
    }
    // I3: no stray file; I8: user images untouched.
    let state = f.state()?;
    let dom = state
        .domains
        .get(&f.domain)
        .ok_or_else(|| anyhow!("domain gone"))?;
    let referenced = dom.referenced_images();
    for e in std::fs::read_dir(&f.img)? {
        let p = e?.path().to_string_lossy().into_owned();
        if !referenced.contains(&p) && !p.ends_with(".qcow2") {
            v.push(format!("I3 orphan file {p} in the image directory"));
        }
    }
    let active_now: Vec<&str> = dom
        .core
        .disks
        .values()
        .map(|d| d.chain[0].path.as_str())
        .collect();
    for (p, sum) in user_sums {
        if active_now.contains(&p.as_str()) {
            continue;
        }
        match std::fs::read(p) {
            Ok(b) if crc32c::crc32c(&b) == *sum => {}
            Ok(_) => v.push(format!("I8 user image {p} was modified")),
            Err(_) => v.push(format!("I8 user image {p} was deleted")),
        }
    }
    // I5: everything the guest wrote reads back through the chains.
    let mut want: Vec<(u64, Vec<u8>)> = op.present(post).into_iter().map(|(r, p)| (r, vec![p])).collect();
    for (r, ps) in after_crash {
        want.retain(|(x, _)| x != r);
        want.push((*r, ps.clone()));
    }
    for d in dom.core.disks.values() {
        for r in 0..5u64 {
            let ps = want
                .iter()
                .find(|(x, _)| *x == r)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| vec![0]);
            let mut held = false;
            for p in &ps {
                held |= region_holds(&d.chain[0].path, *p, r)?;
            }
            if !held {
                v.push(format!(
                    "I5 disk {}: region {r} of {} holds none of {ps:02x?}",
                    d.target, d.chain[0].path
                ));
            }
        }
    }
    Ok((v, post))
}

/// One case to run.
pub struct LiveJob {
    pub op: LiveOp,
    pub reference: std::sync::Arc<LiveReference>,
    pub crash_at: u64,
    pub fate: QemuFate,
    pub recovery_crash_at: Option<u64>,
}

/// Every crash point of `ops` with QEMU surviving, and with QEMU killed
/// too; recovery is also killed at each of its first crash points for the
/// cases at the live commit points (the switch, the commit job in ready).
/// Not `thorough` (CI's bounded mode): QEMU is killed at every third crash
/// point only, and recovery only at the switch.
pub fn jobs(ops: &[LiveOp], thorough: bool, disks: usize) -> Result<Vec<LiveJob>> {
    let mut out = Vec::new();
    for &op in ops {
        let reference = std::sync::Arc::new(reference(op, disks)?);
        eprintln!(
            "{} on {disks} disk(s): {} crash points",
            op.name(),
            reference.trace.len()
        );
        out.push(LiveJob {
            op,
            reference: reference.clone(),
            crash_at: AFTER_FINISHED,
            fate: QemuFate::Killed,
            recovery_crash_at: None,
        });
        for crash_at in 1..=reference.trace.len() as u64 {
            for fate in [QemuFate::Survives, QemuFate::Killed] {
                if fate == QemuFate::Killed && !thorough && crash_at % 3 != 1 {
                    continue;
                }
                out.push(LiveJob {
                    op,
                    reference: reference.clone(),
                    crash_at,
                    fate,
                    recovery_crash_at: None,
                });
            }
            let point = &reference.trace[crash_at as usize - 1];
            if point == "live.switch.after" || (thorough && point == "live.job.ready") {
                for j in 1..=12u64 {
                    out.push(LiveJob {
                        op,
                        reference: reference.clone(),
                        crash_at,
                        fate: QemuFate::Survives,
                        recovery_crash_at: Some(j),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Runs `jobs` on `parallel` threads; cases come back in order.
pub fn run_jobs(jobs: Vec<LiveJob>, parallel: usize) -> Vec<Case> {
    crate::runner::run_parallel(jobs, parallel, None, |j| {
        run_case(j.op, &j.reference, j.crash_at, j.fate, j.recovery_crash_at).unwrap_or_else(|e| Case {
            recovery_crash_at: j.recovery_crash_at,
            ..Case::could_not_run(j.op.name().into(), j.reference.disks, j.crash_at, "?".into(), &e)
        })
    })
}

/// A fault case: the reply to QMP `command` is lost (the connection drops
/// right after QEMU ran it) during `op`. The operation must either finish
/// or fail with a clear error; after recovery every invariant holds.
pub fn reply_lost(op: LiveOp, command: &str) -> Result<crate::faults::FaultCase> {
    let reference = reference(op, 2)?;
    let f = Fixture::new(2)?;
    op.setup(&f)?;
    let out = f
        .command(&op.args())
        .env("SNAPJOURNAL_FAULT_QMP_DROP", command)
        .output()?;
    f.note_qemus();
    let mut problems = Vec::new();
    if out.status.signal().is_some() {
        problems.push(format!("the operation died: {}", out.status));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let rec = f.run(&["recover"])?;
    if !rec.status.success() {
        problems.push(format!(
            "recover failed: {}",
            String::from_utf8_lossy(&rec.stderr)
        ));
    }
    let (v, post) = check(&f, op, &reference, &[], &[], QemuFate::Survives)?;
    problems.extend(v);
    problems.extend(f.qemu_deaths());
    let fault = format!("qmp-reply-lost:{command} during {}", op.name());
    Ok(crate::faults::FaultCase {
        fault,
        outcome: if !problems.is_empty() {
            "violation".into()
        } else if out.status.success() {
            "succeeded".into()
        } else {
            "recovered".into()
        },
        detail: if problems.is_empty() {
            format!(
                "{} state; {}",
                if post { "post-op" } else { "pre-op" },
                if stderr.is_empty() {
                    "no error".to_string()
                } else {
                    stderr
                }
            )
        } else {
            problems.join("; ")
        },
    })
}
