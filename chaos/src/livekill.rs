//! Kills at any moment, not only at crash points: a live operation is
//! SIGKILLed after a seeded random delay while the guest keeps writing
//! through a second QMP monitor of its QEMU; then recovery runs and every
//! invariant is checked, QEMU's survival included (the test never kills
//! QEMU here, so any QEMU death is a violation).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use executor::live::qmp::Qmp;

use crate::fixture::{region_holds, Fixture, REGION};
use crate::livechaos::{
    check, reference, with_qemu_deaths, LiveOp, LiveReference, QemuFate, AFTER_CRASH_REGION,
};
use crate::random::Rng;
use crate::runner::{Case, Outcome};

/// What the background guest writer saw.
#[derive(Debug, Default, Clone)]
struct Writes {
    /// The pattern of the last write QEMU acknowledged (write and flush).
    acked: Option<u8>,
    /// A write sent but not acknowledged when the writer stopped.
    in_flight: Option<u8>,
    count: u32,
}

/// Writes patterns 0x40, 0x41, … over the after-crash region of every
/// disk through the monitor at `socket` until `stop`, or until QEMU stops
/// answering.
fn writer(socket: &Path, disks: &[String], stop: &AtomicBool, seen: &Mutex<Writes>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let Ok(mut q) = Qmp::connect_until(socket, deadline) else {
        return;
    };
    let mut pattern: u8 = 0x40;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(mut w) = seen.lock() {
            w.in_flight = Some(pattern);
        }
        for d in disks {
            if q.guest_write(d, pattern, AFTER_CRASH_REGION * REGION, REGION)
                .is_err()
            {
                return;
            }
        }
        if let Ok(mut w) = seen.lock() {
            w.acked = Some(pattern);
            w.in_flight = None;
            w.count += 1;
        }
        pattern = if pattern == 0x7f { 0x40 } else { pattern + 1 };
    }
}

/// One case: `op` killed `delay_ms` after it started.
pub fn run_case(op: LiveOp, reference: &LiveReference, delay_ms: u64, case_no: u64) -> Result<Case> {
    let started = Instant::now();
    let mut f = Fixture::new(2)?;
    let guest_socket = f.root.path().join("guest.qmp");
    f.env.push((
        "SNAPJOURNAL_TEST_EXTRA_QMP".into(),
        guest_socket.display().to_string(),
    ));
    let result = run_case_on(&f, op, reference, delay_ms, case_no, &guest_socket, started);
    with_qemu_deaths(&f, result)
}

fn run_case_on(
    f: &Fixture,
    op: LiveOp,
    reference: &LiveReference,
    delay_ms: u64,
    case_no: u64,
    guest_socket: &Path,
    started: Instant,
) -> Result<Case> {
    op.setup(f)?;
    let active: Vec<String> = f.active()?.into_iter().map(|(_, p)| p).collect();
    let user_sums: Vec<(String, u32)> = f
        .user_file_sums()?
        .into_iter()
        .filter(|(p, _)| !active.contains(p))
        .collect();
    let mut case = Case {
        op: format!("{}+random-kill", op.name()),
        disks: 2,
        crash_at: case_no,
        point: format!("killed {delay_ms} ms after start"),
        recovery_crash_at: None,
        recovery_point: None,
        outcome: Outcome::NotReached,
        millis: 0,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Writes::default()));
    let writer_thread = {
        let (stop, seen) = (stop.clone(), seen.clone());
        let socket = guest_socket.to_path_buf();
        let disks = f.disks.clone();
        std::thread::spawn(move || writer(&socket, &disks, &stop, &seen))
    };
    // Let the guest write before the operation starts.
    let until = Instant::now() + Duration::from_secs(5);
    while seen.lock().map(|w| w.count).unwrap_or(0) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut child = f
        .command(&op.args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(delay_ms));
    let killed = matches!(child.try_wait(), Ok(None));
    if killed {
        let _ = child.kill();
    }
    let st = child.wait()?;
    f.note_qemus();
    let mut problems = Vec::new();
    if !killed && !st.success() {
        problems.push(format!("the operation failed on its own ({st})"));
    }
    if killed && st.signal() != Some(libc::SIGKILL) && !st.success() {
        problems.push(format!("the operation ended with {st}"));
    }
    // Recovery runs while the guest still writes.
    let rec = f.run(&["recover"])?;
    stop.store(true, Ordering::SeqCst);
    let _ = writer_thread.join();
    let w = seen.lock().map(|w| w.clone()).unwrap_or_default();
    if !rec.status.success() {
        problems.push(format!(
            "recover failed: {}",
            String::from_utf8_lossy(&rec.stderr).trim()
        ));
        case.outcome = Outcome::Violation(problems);
        case.millis = started.elapsed().as_millis();
        return Ok(case);
    }
    let mut may_hold: Vec<u8> = w.acked.into_iter().chain(w.in_flight).collect();
    if may_hold.is_empty() || op.is_revert() {
        // Revert gives the disks the snapshot's data back (region 4 was
        // never written there); rolled back, it is judged below.
        may_hold.push(0);
    }
    let (v, post) = check(
        f,
        op,
        reference,
        &user_sums,
        &[(AFTER_CRASH_REGION, may_hold)],
        QemuFate::Survives,
    )?;
    problems.extend(v);
    if op.is_revert() && !post {
        if let Some(acked) = w.acked {
            for (disk, path) in f.active()? {
                let ok = region_holds(&path, acked, AFTER_CRASH_REGION)?
                    || w.in_flight
                        .is_some_and(|p| region_holds(&path, p, AFTER_CRASH_REGION).unwrap_or(false));
                if !ok {
                    problems.push(format!(
                        "I5 disk {disk}: the revert rolled back but region {AFTER_CRASH_REGION} lost the guest's acknowledged write {acked:#04x}"
                    ));
                }
            }
        }
    }
    case.point = format!(
        "{} ({} guest writes acknowledged{})",
        case.point,
        w.count,
        if killed {
            ""
        } else {
            "; the operation had finished"
        }
    );
    case.outcome = Outcome::judged(problems, post);
    case.millis = started.elapsed().as_millis();
    Ok(case)
}

/// `cases` seeded cases over `ops`: each picks an operation and a moment
/// in 0..1.2× the operation's reference duration.
pub fn run(ops: &[LiveOp], seed: u64, cases: u64) -> Result<Vec<Case>> {
    let mut rng = Rng::new(seed);
    let mut refs: Vec<(LiveOp, LiveReference)> = Vec::new();
    for &op in ops {
        let r = reference(op, 2)?;
        eprintln!("{}: reference run {} ms", op.name(), r.millis);
        refs.push((op, r));
    }
    let mut out = Vec::new();
    for n in 1..=cases {
        let (op, r) = &refs[rng.below(refs.len() as u64) as usize];
        let delay = rng.below(r.millis * 6 / 5 + 1);
        let case = run_case(*op, r, delay, n).unwrap_or_else(|e| {
            Case::could_not_run(
                format!("{}+random-kill", op.name()),
                2,
                n,
                format!("killed {delay} ms after start"),
                &e,
            )
        });
        if let Outcome::Violation(v) = &case.outcome {
            eprintln!(
                "  case {n} ({}, {}): VIOLATION {}",
                case.op,
                case.point,
                v.join("; ")
            );
        }
        out.push(case);
    }
    Ok(out)
}
