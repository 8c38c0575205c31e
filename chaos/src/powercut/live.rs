//! Power cuts under running domains: QEMU runs its images from the
//! power-cut file system (its sockets and pidfile live on a real
//! directory), the guest's writes are flushed through QEMU, and a cut at a
//! live operation's crash point or at the k-th sync — QEMU's own flushes
//! included — takes QEMU down with everything else. Recovery then finds
//! the domain's QEMU gone; every flushed guest write must read back.

use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use anyhow::Result;

use super::model::Policy;
use super::{CutAt, World};
use crate::livechaos::{check, with_qemu_deaths, LiveOp, LiveReference, QemuFate};
use crate::runner::{Case, Outcome};

/// One case: `op` on the reference's disks of a running domain, cut at `at` under
/// `policy`, recovered and checked against `reference`.
pub fn run_case(op: LiveOp, reference: &LiveReference, at: CutAt, policy: Policy) -> Result<Case> {
    let started = Instant::now();
    let mut w = World::empty(reference.disks, &[], true)?;
    op.setup(w.f())?;
    w.m().sync_all();
    let result = run_case_on(&mut w, op, reference, at, policy, started);
    with_qemu_deaths(w.f(), result)
}

fn run_case_on(
    w: &mut World,
    op: LiveOp,
    reference: &LiveReference,
    at: CutAt,
    policy: Policy,
    started: Instant,
) -> Result<Case> {
    let active: Vec<String> = w.f().active()?.into_iter().map(|(_, p)| p).collect();
    let user_sums: Vec<(String, u32)> = w
        .f()
        .user_file_sums()?
        .into_iter()
        .filter(|(p, _)| !active.contains(p))
        .collect();
    let mut case = at.case(op.name(), reference.disks, policy, &reference.trace);
    let reached = match at {
        CutAt::CrashPoint(n) => {
            let st = w
                .f()
                .command(&op.args())
                .env("SNAPJOURNAL_CRASH_AT", n.to_string())
                .output()?
                .status;
            w.f().note_qemus();
            // The power goes the moment the agent died.
            w.m().freeze();
            st.signal() == Some(libc::SIGKILL)
        }
        CutAt::Sync(k) => {
            w.f().note_qemus();
            w.run_until_frozen(&op.args(), k)?
        }
        CutAt::End => {
            w.f().command(&op.args()).output()?;
            w.f().note_qemus();
            w.m().freeze();
            true
        }
    };
    if !reached {
        case.millis = started.elapsed().as_millis();
        return Ok(case);
    }
    // QEMU goes down with the power.
    w.kill_qemus();
    w.cut(policy)?;
    let f = w.f();
    let rec = f.run(&["recover"])?;
    if !rec.status.success() {
        case.outcome = Outcome::Violation(vec![format!(
            "recover after the power cut failed: {}{}",
            String::from_utf8_lossy(&rec.stderr),
            String::from_utf8_lossy(&rec.stdout)
        )]);
        return Ok(case);
    }
    let (v, post) = check(f, op, reference, &user_sums, &[], QemuFate::Killed)?;
    case.outcome = Outcome::judged(v, post);
    case.millis = started.elapsed().as_millis();
    Ok(case)
}

/// How many syncs `op` makes from its starting state to its end.
pub fn count_syncs(op: LiveOp, disks: usize) -> Result<u64> {
    let w = World::empty(disks, &[], true)?;
    op.setup(w.f())?;
    w.m().sync_all();
    let out = w.f().command(&op.args()).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{} on the power-cut file system failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(w.m().syncs())
}
