//! Power loss, not only process death: the whole world of a case (images,
//! overlays, XML, the state directory with RocksDB) lives on a FUSE file
//! system that knows what a power cut would keep ([`model`], served by
//! [`fuse`]). Two enumerations over every offline operation:
//! - at crash point N: the operation dies there, every process using the
//!   file system is killed, the power is cut, the durable tree is mounted
//!   again, recovery runs, every invariant is checked;
//! - before the k-th sync: the file system freezes when the k-th fsync or
//!   fsyncdir arrives (inside qemu-img, RocksDB or snapjournal), which
//!   crash points cannot reach; then the same.
//!
//! Each cut runs under a [`Policy`]: drop everything unsynced, keep names,
//! a seeded random subset, torn 4 KiB writes.

pub mod fuse;
pub mod live;
pub mod model;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use self::fuse::Mounted;
use self::model::{Model, Policy};
use crate::fixture::Fixture;
use crate::runner::{Case, Outcome, Reference};
use crate::scenario::Op;

/// Where the cut happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// At the operation's N-th crash point.
    CrashPoint(u64),
    /// When the k-th sync after the starting state arrives.
    Sync(u64),
    /// Once the run has ended (the caller was told): what the run left
    /// unsynced — the closing `Finished` or `Aborted` record, step records
    /// — is lost, and recovery must find the same outcome.
    End,
}

impl CutAt {
    /// The case (not reached yet) of a cut of operation `name` on `disks`
    /// disks here under `policy`; `trace` names the crash points.
    pub(crate) fn case(self, name: &str, disks: usize, policy: Policy, trace: &[String]) -> Case {
        let (n, point) = match self {
            CutAt::CrashPoint(n) => (
                n,
                trace.get(n as usize - 1).cloned().unwrap_or_else(|| "?".into()),
            ),
            CutAt::Sync(k) => (k, format!("sync #{k}")),
            CutAt::End => (0, "after the run".to_string()),
        };
        Case {
            op: format!("{name}+power-cut:{}", policy.name()),
            disks,
            crash_at: n,
            point,
            recovery_crash_at: None,
            recovery_point: None,
            outcome: Outcome::NotReached,
            millis: 0,
        }
    }
}

/// Kills every process whose working directory lies under `dir`
/// (snapjournal and the qemu-img it runs: the power is gone for them all)
/// and waits until they are gone.
pub fn kill_users(dir: &Path) {
    let me = std::process::id();
    // A child of this process between fork and exec still runs this
    // program, with copies of its descriptors: not a user to kill.
    let my_exe = std::fs::read_link("/proc/self/exe").ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let p = e.path();
            if pid == me || (my_exe.is_some() && std::fs::read_link(p.join("exe")).ok() == my_exe) {
                continue;
            }
            // By working directory only: every snapjournal run of a world
            // starts in its fixture (and its qemu-img children inherit it),
            // while a descriptor under the mount can be one another case's
            // child inherited by accident (a file this process opened on
            // one thread while another forked).
            let uses = std::fs::read_link(p.join("cwd")).is_ok_and(|c| c.starts_with(dir));
            if uses && executor::live::qemu::alive(pid) {
                found.push(pid);
            }
        }
        if found.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in found {
            executor::live::qemu::signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One world: a mount point, the file system on it, the fixture inside
/// (and, for a running domain, a real directory for its sockets).
pub(crate) struct World {
    mountpoint: tempfile::TempDir,
    mounted: Option<Mounted>,
    fixture: Option<Fixture>,
    run: Option<tempfile::TempDir>,
}

impl World {
    /// A fixture with `disks` disks on a fresh power-cut file system.
    pub(crate) fn empty(disks: usize, env: &[(String, String)], live: bool) -> Result<World> {
        let mountpoint = tempfile::Builder::new().prefix("sj-powercut-").tempdir()?;
        let run = if live {
            Some(tempfile::Builder::new().prefix("sj-run-").tempdir()?)
        } else {
            None
        };
        let mounted = Mounted::mount(mountpoint.path(), Model::new())?;
        let mut fixture =
            Fixture::new_with_run_dir(mountpoint.path(), disks, run.as_ref().map(|r| r.path()))?;
        fixture.env.extend(env.iter().cloned());
        Ok(World {
            mountpoint,
            mounted: Some(mounted),
            fixture: Some(fixture),
            run,
        })
    }

    fn new(op: Op, disks: usize, env: &[(String, String)]) -> Result<World> {
        let w = World::empty(disks, env, false)?;
        op.setup(w.f())?;
        w.m().sync_all();
        Ok(w)
    }

    pub(crate) fn f(&self) -> &Fixture {
        self.fixture
            .as_ref()
            .expect("the fixture lives as long as the world")
    }

    pub(crate) fn m(&self) -> &Mounted {
        self.mounted.as_ref().expect("mounted")
    }

    /// Runs `snapjournal args` with the file system set to freeze at the
    /// `k`-th sync from now, and kills the run once it froze; whether the
    /// freeze came (the run may end first).
    pub(crate) fn run_until_frozen(&self, args: &[&str], k: u64) -> Result<bool> {
        self.m().freeze_at(k);
        let mut child = self
            .f()
            .command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        loop {
            if self.m().frozen() {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(true);
            }
            if child.try_wait()?.is_some() {
                return Ok(self.m().frozen());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills every QEMU of the world (SIGKILL, as a power cut would),
    /// found through the real run directory: the state directory's `run`
    /// link lies on the file system, which may be frozen already.
    pub(crate) fn kill_qemus(&self) {
        let Some(run) = &self.run else { return };
        // The agents first (found by their working directory), so that
        // none launches a QEMU after the ones below were found.
        kill_users(self.mountpoint.path());
        let mut pids = Vec::new();
        for e in std::fs::read_dir(run.path()).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "pid") {
                continue;
            }
            self.f().witness.note(&p);
            pids.extend(executor::live::qemu::read_pidfile(&p));
        }
        // And a QEMU caught between daemonizing (its working directory is
        // `/`) and writing its pidfile: its command line names the run
        // directory.
        let marker = run.path().display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        for pid in pids {
            self.f().witness.killed_by_test(pid);
            executor::live::qemu::signal(pid, libc::SIGKILL);
            executor::live::qemu::wait_exit(pid, Duration::from_secs(10));
        }
    }

    /// Power cut: every user killed, the durable tree under `policy`
    /// mounted again in place.
    pub(crate) fn cut(&mut self, policy: Policy) -> Result<()> {
        kill_users(self.mountpoint.path());
        let Some(m) = self.mounted.take() else {
            bail!("not mounted")
        };
        let model = m.cut(policy);
        self.mounted = Some(Mounted::mount(self.mountpoint.path(), model)?);
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_qemus();
        kill_users(self.mountpoint.path());
        drop(self.fixture.take());
        drop(self.mounted.take());
        drop(self.run.take());
    }
}

/// How many syncs `op` makes from its starting state to its end.
pub fn count_syncs(op: Op, disks: usize) -> Result<u64> {
    let w = World::new(op, disks, &[])?;
    let out = w.f().command(&op.args()).output()?;
    if !out.status.success() {
        bail!(
            "{} on the power-cut file system failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(w.m().syncs())
}

/// One case: `op` on `disks` disks, cut at `at` under `policy`, recovered
/// and checked against `reference`.
pub fn run_case(op: Op, disks: usize, reference: &Reference, at: CutAt, policy: Policy) -> Result<Case> {
    run_case_with_env(op, disks, reference, at, policy, &[])
}

/// [`run_case`] with extra environment for every `snapjournal` run (the
/// mutation test drops one fsync this way).
pub fn run_case_with_env(
    op: Op,
    disks: usize,
    reference: &Reference,
    at: CutAt,
    policy: Policy,
    env: &[(String, String)],
) -> Result<Case> {
    let started = Instant::now();
    let mut w = World::new(op, disks, env)?;
    let sums = w.f().user_file_sums()?;
    let mut case = at.case(op.name(), disks, policy, &reference.trace);
    let reached = match at {
        CutAt::CrashPoint(n) => {
            let st = w
                .f()
                .command(&op.args())
                .env("SNAPJOURNAL_CRASH_AT", n.to_string())
                .output()?
                .status;
            st.signal() == Some(libc::SIGKILL)
        }
        CutAt::Sync(k) => w.run_until_frozen(&op.args(), k)?,
        CutAt::End => {
            w.f().command(&op.args()).output()?;
            true
        }
    };
    if !reached {
        case.millis = started.elapsed().as_millis();
        return Ok(case);
    }
    // A cut inside qemu-img, while it had an image with dirty bitmaps
    // open read-write, may leave them missing or marked in use: QEMU
    // clears the bitmap directory (synced) before rewriting it, and marks
    // bitmaps in use while it holds them. That loses the change tracking,
    // which fsck reports (never a silently wrong bitmap); everything else
    // is judged as always.
    let in_qemu_img = matches!(at, CutAt::Sync(_)) && w.m().frozen_by().as_deref() == Some("qemu-img");
    if in_qemu_img {
        case.point.push_str(" in qemu-img");
    }
    w.cut(policy)?;
    crate::runner::recover_and_judge_with(w.f(), op, reference, &sums, case, started, in_qemu_img)
}

/// What a power-cut case runs.
pub enum Target {
    /// An offline operation on `disks` disks.
    Offline {
        op: Op,
        disks: usize,
        reference: std::sync::Arc<Reference>,
    },
    /// A live operation on a running two-disk domain.
    Live {
        op: crate::livechaos::LiveOp,
        reference: std::sync::Arc<crate::livechaos::LiveReference>,
    },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Offline { op, .. } => op.name(),
            Target::Live { op, .. } => op.name(),
        }
    }

    fn disks(&self) -> usize {
        match self {
            Target::Offline { disks, .. } => *disks,
            Target::Live { reference, .. } => reference.disks,
        }
    }
}

/// One power-cut case to run.
pub struct PowerJob {
    pub target: Target,
    pub at: CutAt,
    pub policy: Policy,
}

fn push_cases(
    out: &mut Vec<PowerJob>,
    target: impl Fn() -> Target,
    points: u64,
    syncs: u64,
    pp: &[Policy],
    sp: &[Policy],
) {
    for n in 1..=points {
        for &policy in pp {
            out.push(PowerJob {
                target: target(),
                at: CutAt::CrashPoint(n),
                policy,
            });
        }
    }
    for k in 1..=syncs {
        for &policy in sp {
            out.push(PowerJob {
                target: target(),
                at: CutAt::Sync(k),
                policy,
            });
        }
    }
    for &policy in pp {
        out.push(PowerJob {
            target: target(),
            at: CutAt::End,
            policy,
        });
    }
}

/// The cases of `ops` on `disks` and of the live `live_ops`: every crash
/// point under each of `point_policies`, every sync under each of
/// `sync_policies`.
pub fn jobs(
    ops: &[Op],
    disks: &[usize],
    live_ops: &[crate::livechaos::LiveOp],
    live_disks: usize,
    point_policies: &[Policy],
    sync_policies: &[Policy],
) -> Result<Vec<PowerJob>> {
    let mut out = Vec::new();
    for &op in ops {
        for &d in disks {
            let reference = std::sync::Arc::new(crate::runner::reference(op, d)?);
            let syncs = count_syncs(op, d)?;
            let points = reference.trace.len() as u64;
            eprintln!(
                "{} on {d} disk(s): {points} crash points, {syncs} syncs",
                op.name()
            );
            push_cases(
                &mut out,
                || Target::Offline {
                    op,
                    disks: d,
                    reference: reference.clone(),
                },
                points,
                syncs,
                point_policies,
                sync_policies,
            );
        }
    }
    for &op in live_ops {
        let reference = std::sync::Arc::new(crate::livechaos::reference(op, live_disks)?);
        let syncs = live::count_syncs(op, live_disks)?;
        let points = reference.trace.len() as u64;
        eprintln!(
            "{} on {live_disks} disk(s): {points} crash points, {syncs} syncs",
            op.name()
        );
        push_cases(
            &mut out,
            || Target::Live {
                op,
                reference: reference.clone(),
            },
            points,
            syncs,
            point_policies,
            sync_policies,
        );
    }
    Ok(out)
}

/// Runs `jobs` on `parallel` threads; cases come back in order.
pub fn run_jobs(jobs: Vec<PowerJob>, parallel: usize) -> Vec<Case> {
    crate::runner::run_parallel(jobs, parallel, Some("power-cut"), |j| {
        let ran = match &j.target {
            Target::Offline { op, disks, reference } => run_case(*op, *disks, reference, j.at, j.policy),
            Target::Live { op, reference } => live::run_case(*op, reference, j.at, j.policy),
        };
        ran.unwrap_or_else(|e| {
            Case::could_not_run(
                format!("{}+power-cut:{}", j.target.name(), j.policy.name()),
                j.target.disks(),
                match j.at {
                    CutAt::CrashPoint(n) | CutAt::Sync(n) => n,
                    CutAt::End => 0,
                },
                format!("{:?}", j.at),
                &e,
            )
        })
    })
}
