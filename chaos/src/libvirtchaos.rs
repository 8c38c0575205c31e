//! Crash enumeration against the libvirt backend: a domain libvirt runs
//! (running or shut off), with a snapshot of libvirt's own and two of the
//! journal's, is adopted; then an operation runs through libvirt's API and
//! snapjournal is killed at every crash point it passes — alone, with
//! libvirtd SIGKILLed and restarted at the same moment, or with the
//! domain's QEMU killed. Recovery runs, and the judge checks: recovery and
//! fsck clean (fsck compares libvirt's definition, snapshot and checkpoint
//! metadata, live chains and block jobs with the journal), the snapshots
//! either all before or all after the operation, libvirt listing exactly
//! the journal's, every disk reading what the guest wrote, and a running
//! domain still running (unless its QEMU was killed).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fixture::{region_holds, write_pattern};
use crate::libvirt::{virsh, LibvirtFixture};
use crate::runner::{read_trace, run_parallel, Case, Outcome};
use crate::scenario::{A, B, C};

/// An operation on the adopted domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvOp {
    /// `snapshot create` (running: the disk-only snapshot through libvirt).
    Create,
    /// Delete the middle snapshot (running: a block commit below the
    /// active image).
    DeleteMiddle,
    /// Delete the newest snapshot (running: an active commit, pivoted).
    DeleteLeaf,
    /// Delete the oldest, libvirt's own (its base stays the user's).
    DeleteRoot,
    /// Revert to the middle snapshot (running: stopped and started).
    Revert,
}

/// How the crash is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// snapjournal alone.
    Agent,
    /// snapjournal, and libvirtd SIGKILLed and restarted.
    Libvirtd,
    /// snapjournal, and the domain's QEMU.
    Qemu,
}

impl LvOp {
    /// Every operation.
    pub const ALL: [LvOp; 5] = [
        LvOp::Create,
        LvOp::DeleteMiddle,
        LvOp::DeleteLeaf,
        LvOp::DeleteRoot,
        LvOp::Revert,
    ];

    /// The operation's name (`--libvirt-op`).
    pub fn name(self) -> &'static str {
        match self {
            LvOp::Create => "create",
            LvOp::DeleteMiddle => "delete-middle",
            LvOp::DeleteLeaf => "delete-leaf",
            LvOp::DeleteRoot => "delete-root",
            LvOp::Revert => "revert",
        }
    }

    fn args(self, domain: &str) -> Vec<String> {
        let v: Vec<&str> = match self {
            LvOp::Create => vec!["snapshot", "create", domain, "s4"],
            LvOp::DeleteMiddle => vec!["snapshot", "delete", domain, "s2"],
            LvOp::DeleteLeaf => vec!["snapshot", "delete", domain, "s3"],
            LvOp::DeleteRoot => vec!["snapshot", "delete", domain, "s1"],
            LvOp::Revert => vec!["snapshot", "revert", domain, "s2"],
        };
        v.into_iter().map(String::from).collect()
    }

    /// The snapshots after the operation (before: s1, s2, s3).
    fn post(self) -> Vec<&'static str> {
        match self {
            LvOp::Create => vec!["s1", "s2", "s3", "s4"],
            LvOp::DeleteMiddle => vec!["s1", "s3"],
            LvOp::DeleteLeaf => vec!["s1", "s2"],
            LvOp::DeleteRoot => vec!["s2", "s3"],
            LvOp::Revert => vec!["s1", "s2", "s3"],
        }
    }

    /// What the guest reads after the operation (region, pattern).
    fn post_data(self) -> Vec<(u64, u8)> {
        match self {
            LvOp::Revert => vec![(0, A)],
            _ => vec![(0, A), (1, B), (2, C)],
        }
    }
}

/// The starting state: libvirt's own snapshot s1, A written, adopted,
/// the journal's s2, B written, s3, C written.
fn setup(disks: usize, running: bool) -> Result<LibvirtFixture> {
    let f = LibvirtFixture::new(disks, running)?;
    virsh(&["snapshot-create-as", &f.domain, "s1", "--disk-only", "--atomic"])?;
    write(&f, running, A, 0)?;
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"])?;
    f.ok(&["snapshot", "create", &f.domain, "s2"])?;
    write(&f, running, B, 1)?;
    f.ok(&["snapshot", "create", &f.domain, "s3"])?;
    write(&f, running, C, 2)?;
    Ok(f)
}

fn write(f: &LibvirtFixture, running: bool, pattern: u8, region: u64) -> Result<()> {
    if running {
        return f.guest_write(pattern, region);
    }
    for (_, chain) in f.chains(true)? {
        write_pattern(&chain[0], pattern, region)?;
    }
    Ok(())
}

/// The journal's snapshot names and every disk's active image.
fn journal_view(f: &LibvirtFixture) -> Result<(Vec<String>, Vec<String>)> {
    let exec = recovery::open_without_recovery(&f.state)?;
    let state = exec.journal().state()?;
    let d = state
        .domains
        .get(&f.domain)
        .with_context(|| format!("domain {} is gone from the journal", f.domain))?;
    let snaps = d.snapshots.keys().cloned().collect();
    let active = d
        .core
        .disks
        .values()
        .filter_map(|x| x.active().map(|a| a.path.clone()))
        .collect();
    Ok((snaps, active))
}

/// The libvirtd the suite talks to: its pidfile —
/// `$SNAPJOURNAL_LIBVIRTD_PIDFILE`, else the one `scripts/libvirtd`
/// writes, else libvirtd's default.
fn libvirtd_pidfile() -> String {
    if let Ok(p) = std::env::var("SNAPJOURNAL_LIBVIRTD_PIDFILE") {
        return p;
    }
    ["/var/tmp/snapjournal-libvirtd/libvirtd.pid", "/run/libvirtd.pid"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/var/tmp/snapjournal-libvirtd/libvirtd.pid")
        .to_string()
}

/// SIGKILLs libvirtd and starts it again with the same pidfile; returns
/// once it answers.
pub fn kill_and_restart_libvirtd() -> Result<()> {
    let pidfile = libvirtd_pidfile();
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("reading libvirtd's pidfile {pidfile} (start it with scripts/libvirtd)"))?
        .trim()
        .parse()
        .context("libvirtd's pidfile")?;
    // SAFETY: kill(2) on the daemon's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Gone, or a zombie (a libvirtd this suite restarted is its child
    // until reaped): either way it no longer serves.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reap it if it is ours.
    // SAFETY: waitpid(2) with WNOHANG on a pid; harmless if not our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    let _ = std::fs::remove_file(&pidfile);
    // Started through a shell that exits at once, with this process not a
    // subreaper meanwhile, so libvirtd ends up init's child, as a daemon
    // should: as the suite's child (a subreaper), every QEMU it starts
    // would end as the suite's zombie, and libvirtd then answered slowly.
    let mut was: libc::c_int = 0;
    // SAFETY: prctl(2) reading and setting this process's subreaper flag.
    unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut was as *mut libc::c_int) };
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
    let started = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "setsid libvirtd --pid-file '{pidfile}' >>'{pidfile}.log' 2>&1 < /dev/null &"
        ))
        .status();
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, was as libc::c_ulong, 0, 0, 0) };
    if !started?.success() {
        bail!("could not start libvirtd again");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while virsh(&["version"]).is_err() {
        if Instant::now() > deadline {
            bail!("libvirtd did not answer within 30 s of its restart");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn kill_qemu(f: &LibvirtFixture) -> Result<()> {
    let pidfile = format!("/run/libvirt/qemu/{}.pid", f.domain);
    if let Ok(text) = std::fs::read_to_string(&pidfile) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            // SAFETY: kill(2) on the domain's QEMU.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // libvirt notices the death and marks the domain shut off.
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.running().unwrap_or(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The crash points `op` passes (a traced run on a fresh fixture).
pub fn trace(op: LvOp, disks: usize, running: bool) -> Result<Vec<String>> {
    let f = setup(disks, running)?;
    let tf = f.dir.join("trace");
    let out = f
        .command(&op.args(&f.domain).iter().map(String::as_str).collect::<Vec<_>>())
        .env("SNAPJOURNAL_CRASH_TRACE", &tf)
        .output()?;
    if !out.status.success() {
        bail!(
            "reference run of {} failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    read_trace(&tf)
}

fn case_name(op: LvOp, running: bool, kill: Kill) -> String {
    format!(
        "libvirt-{}-{}{}",
        if running { "live" } else { "offline" },
        op.name(),
        match kill {
            Kill::Agent => "",
            Kill::Libvirtd => "+libvirtd",
            Kill::Qemu => "+qemu",
        }
    )
}

/// One case: crash `op` at `crash_at`, kill what `kill` says, recover,
/// judge.
pub fn run_case(op: LvOp, disks: usize, running: bool, kill: Kill, crash_at: u64, point: &str) -> Case {
    let started = Instant::now();
    let mut case = Case {
        op: case_name(op, running, kill),
        disks,
        crash_at,
        point: point.to_string(),
        recovery_crash_at: None,
        recovery_point: None,
        outcome: Outcome::NotReached,
        millis: 0,
    };
    match judge_case(op, disks, running, kill, crash_at) {
        Ok(o) => case.outcome = o,
        Err(e) => case.outcome = Outcome::Violation(vec![format!("the case could not run: {e:#}")]),
    }
    case.millis = started.elapsed().as_millis();
    case
}

fn judge_case(op: LvOp, disks: usize, running: bool, kill: Kill, crash_at: u64) -> Result<Outcome> {
    let f = setup(disks, running)?;
    let args = op.args(&f.domain);
    let out = f
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .env("SNAPJOURNAL_CRASH_AT", crash_at.to_string())
        .output()?;
    if out.status.signal() != Some(libc::SIGKILL) {
        return Ok(Outcome::NotReached);
    }
    let mut qemu_killed = false;
    match kill {
        Kill::Agent => {}
        Kill::Libvirtd => kill_and_restart_libvirtd()?,
        Kill::Qemu => {
            qemu_killed = f.running()?;
            kill_qemu(&f)?;
        }
    }
    let mut violations = Vec::new();
    let rec = f.run(&["recover"])?;
    if !rec.status.success() {
        violations.push(format!(
            "recover failed ({}): {}{}",
            rec.status,
            String::from_utf8_lossy(&rec.stdout),
            String::from_utf8_lossy(&rec.stderr)
        ));
        return Ok(Outcome::Violation(violations));
    }
    let fsck = f.run(&["fsck"])?;
    if !fsck.status.success() {
        violations.push(format!(
            "fsck after recovery: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        ));
    }
    let (snaps, active) = journal_view(&f)?;
    let pre = vec!["s1", "s2", "s3"];
    let post = op.post();
    let names: Vec<&str> = snaps.iter().map(String::as_str).collect();
    // A revert keeps the snapshots: the data tells which side it is on.
    let data_post = op.post_data();
    let data_pre = vec![(0, A), (1, B), (2, C)];
    let reads = |want: &[(u64, u8)]| -> Result<bool> {
        for img in &active {
            for r in 0..4u64 {
                let p = want.iter().find(|(x, _)| *x == r).map(|(_, p)| *p).unwrap_or(0);
                if !region_holds(img, p, r)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    };
    let forward = if op == LvOp::Revert {
        if reads(&data_post)? {
            true
        } else if reads(&data_pre)? {
            false
        } else {
            violations.push("the disks read neither the pre-revert nor the reverted data".into());
            false
        }
    } else if names == post {
        if !reads(&data_post)? {
            violations.push(format!(
                "after {}: the disks do not read what the guest wrote",
                op.name()
            ));
        }
        true
    } else if names == pre {
        if !reads(&data_pre)? {
            violations.push("rolled back, but the disks do not read what the guest wrote".into());
        }
        false
    } else {
        violations.push(format!("snapshots {names:?} are neither {pre:?} nor {post:?}"));
        false
    };
    let lv = f.libvirt_snapshots()?;
    if lv != snaps {
        violations.push(format!("libvirt lists {lv:?}, the journal {snaps:?}"));
    }
    if running && !qemu_killed && !f.running()? {
        violations.push("the domain was running and is shut off after recovery".into());
    }
    Ok(Outcome::judged(violations, forward))
}

/// Every case of `ops`: each crash point with snapjournal killed (in
/// parallel), then those inside libvirt calls (points named `libvirt.*`
/// and the steps around them) with libvirtd or QEMU killed too (libvirtd
/// cases one at a time: the daemon is shared).
/// `only`: just that crash point (reproduction); `wide`: libvirtd and
/// QEMU are killed at the `step.*` points too, not only at `libvirt.*`.
pub fn run(
    ops: &[LvOp],
    disks: usize,
    running: &[bool],
    jobs: usize,
    kills: &[Kill],
    only: Option<u64>,
    wide: bool,
) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for &live in running {
        for &op in ops {
            let points = trace(op, disks, live)?;
            eprintln!(
                "libvirt {} {}: {} crash points",
                if live { "live" } else { "offline" },
                op.name(),
                points.len()
            );
            for &kill in kills {
                // libvirtd and QEMU are killed at the points around the
                // libvirt calls (and, shut off, there is no QEMU to kill).
                let picked: Vec<(u64, String)> = points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i as u64 + 1, p.clone()))
                    .filter(|(_, p)| {
                        kill == Kill::Agent
                            || (live && (p.starts_with("libvirt.") || (wide && p.starts_with("step."))))
                    })
                    .filter(|(n, _)| only.is_none_or(|o| o == *n))
                    .collect();
                let par = if kill == Kill::Libvirtd { 1 } else { jobs };
                let label = case_name(op, live, kill);
                cases.extend(run_parallel(picked, par, Some(&label), |(n, p)| {
                    run_case(op, disks, live, kill, n, &p)
                }));
            }
        }
    }
    Ok(cases)
}
