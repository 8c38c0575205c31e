//! Who ended each QEMU. A test process that is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`) becomes the parent of every daemonized QEMU
//! its `snapjournal` runs start (QEMU's launcher exits once QEMU runs), so
//! it can read each QEMU's exit status: killed by the test, quit or
//! stopped by snapjournal, or crashed. A QEMU that died in a way nobody
//! explains is a violation, reported with its log and the QMP traffic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Makes this process the reaper of its orphaned descendants. Idempotent;
/// `false` when the kernel refused.
pub fn become_subreaper() -> bool {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer and touches
    // no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

/// How a QEMU process ended, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuEnd {
    /// It still runs.
    Running,
    /// It exited with this code (0: `quit`, or SIGTERM handled).
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// Not a child of this process (or already reaped elsewhere): unknown.
    Unknown,
}

/// Reaps `pid` if it ended (never blocks).
pub fn poll_end(pid: u32) -> QemuEnd {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the status into our local integer only.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if r == 0 {
        QemuEnd::Running
    } else if r < 0 {
        QemuEnd::Unknown
    } else if libc::WIFSIGNALED(status) {
        QemuEnd::Signaled(libc::WTERMSIG(status))
    } else if libc::WIFEXITED(status) {
        QemuEnd::Exited(libc::WEXITSTATUS(status))
    } else {
        QemuEnd::Running
    }
}

/// The name of signal `sig`.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGTRAP => "SIGTRAP".into(),
        other => format!("signal {other}"),
    }
}

#[derive(Debug, Clone)]
struct Watched {
    pidfile: PathBuf,
    killed_by_test: bool,
    end: Option<QemuEnd>,
}

/// The QEMUs one fixture has seen, and how each ended.
#[derive(Debug, Default)]
pub struct Witness {
    seen: Mutex<BTreeMap<u32, Watched>>,
}

impl Witness {
    /// Notes the QEMU named by `pidfile` (alive or not: a QEMU that crashed
    /// leaves its pidfile behind).
    pub fn note(&self, pidfile: &Path) {
        let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return;
        };
        if pid == 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(pid).or_insert_with(|| Watched {
            pidfile: pidfile.to_path_buf(),
            killed_by_test: false,
            end: None,
        });
    }

    /// Records that the test itself kills `pid`.
    pub fn killed_by_test(&self, pid: u32) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = seen.get_mut(&pid) {
            w.killed_by_test = true;
        }
    }

    /// Reaps every noted QEMU that ended and returns one message for each
    /// that died unexplained: a crash signal, a non-zero exit, or a SIGKILL
    /// that neither the test nor snapjournal (its line in QEMU's log) sent.
    /// Each death is reported once.
    pub fn unexplained_deaths(&self, qmp_trace: Option<&Path>) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (pid, w) in seen.iter_mut() {
            if w.end.is_some() {
                continue;
            }
            let end = poll_end(*pid);
            if end == QemuEnd::Running {
                continue;
            }
            w.end = Some(end);
            let log = executor::live::qemu::log_tail(&w.pidfile, 2000);
            let explained = match end {
                QemuEnd::Exited(0) | QemuEnd::Unknown | QemuEnd::Running => true,
                QemuEnd::Signaled(libc::SIGKILL) => {
                    w.killed_by_test || log.contains(&format!("killing QEMU pid {pid}"))
                }
                QemuEnd::Signaled(libc::SIGTERM) => true,
                _ => false,
            };
            if explained {
                continue;
            }
            let how = match end {
                QemuEnd::Signaled(s) => format!("died of {}", signal_name(s)),
                QemuEnd::Exited(c) => format!("exited with code {c}"),
                _ => "ended".into(),
            };
            let traffic = qmp_trace
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(12)..].join("\n    ")
                })
                .unwrap_or_default();
            out.push(format!(
                "QEMU (pid {pid}) {how}, which the test did not cause; its log: {}; the last QMP traffic:\n    {}",
                if log.is_empty() { "(empty)".to_string() } else { log },
                if traffic.is_empty() { "(none recorded)" } else { &traffic }
            ));
        }
        out
    }

    /// Reaps every noted QEMU that has ended without judging it (after the
    /// fixture killed them all).
    pub fn reap_all(&self) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for pid in seen.keys() {
            let _ = poll_end(*pid);
        }
    }
}

/// QEMU segfault lines in the kernel log (`dmesg`), or `None` when the log
/// cannot be read here. The chaos suite compares the count before and
/// after a run with the deaths its witness reported.
pub fn kernel_qemu_segfaults() -> Option<usize> {
    let out = std::process::Command::new("dmesg").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("qemu-system") && l.contains("segfault"))
            .count(),
    )
}
