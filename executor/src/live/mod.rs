//! Running domains: QEMU processes, their QMP connections, and the live
//! halves of the plan steps (blockdev-add, the snapshot transaction, block
//! jobs, blockdev-del, launch and stop).
//!
//! Every live step knows what to do when its QEMU is gone (killed, crashed):
//! nothing, for steps whose effect died with the process; the same merge
//! through qemu-img, for block jobs. Whether QEMU is gone is decided by
//! [`Live::with_qemu`]: nothing answers on the socket and the recorded
//! process is not alive.

pub mod bitmaps;
pub mod graph;
pub mod jobs;
pub mod machine;
pub mod qemu;
pub mod qmp;
pub mod settle;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use journal::Runtime;

use self::qmp::{Qmp, QmpError};

/// Whether the QEMU process of `runtime` is alive (a recycled pid of some
/// other program does not count).
fn process_alive(runtime: &Runtime) -> bool {
    runtime
        .process()
        .is_some_and(|pid| qemu::is_qemu_on(pid, Path::new(&runtime.qmp_socket)))
}

/// Progress of a block job, for progress bars and `--json` progress events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobProgress {
    pub domain: String,
    pub disk: String,
    pub job: String,
    /// `commit` or `stream`.
    pub kind: String,
    /// QEMU's job status (`running`, `ready`, `concluded`, …).
    pub status: String,
    pub current: u64,
    pub total: u64,
}

/// A progress callback.
pub type ProgressFn = Box<dyn Fn(&JobProgress) + Send + Sync>;

/// The live backend: one QMP connection per socket, kept for the life of
/// the executor (QEMU's monitor serves one client at a time).
#[derive(Default)]
pub struct Live {
    conns: Mutex<BTreeMap<String, Qmp>>,
    progress: Option<ProgressFn>,
}

impl Live {
    /// Sets the callback that block jobs report progress to.
    pub fn set_progress(&mut self, f: ProgressFn) {
        self.progress = Some(f);
    }

    pub(crate) fn report(&self, p: &JobProgress) {
        if let Some(f) = &self.progress {
            f(p);
        }
    }

    /// Runs `f` on the QEMU of `runtime`. `Ok(None)`: that QEMU is gone
    /// (nothing answers on its socket and its process, when known, is not
    /// alive). A QEMU that is alive but does not answer is an error.
    pub fn with_qemu<R>(
        &self,
        runtime: &Runtime,
        f: impl FnOnce(&mut Qmp) -> Result<R, QmpError>,
    ) -> Result<Option<R>, QmpError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let key = runtime.qmp_socket.clone();
        if !conns.contains_key(&key) {
            match Qmp::connect(Path::new(&key)) {
                Ok(q) => {
                    conns.insert(key.clone(), q);
                }
                Err(QmpError::Unreachable { .. }) if !process_alive(runtime) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        let Some(q) = conns.get_mut(&key) else {
            return Ok(None);
        };
        match f(q) {
            Ok(r) => Ok(Some(r)),
            Err(e @ (QmpError::Refused { .. } | QmpError::Unsettled { .. })) => Err(e),
            Err(e) => {
                // The connection failed: drop it, and tell a dead QEMU from
                // a broken connection.
                conns.remove(&key);
                let reconnect = Qmp::connect(Path::new(&key));
                match reconnect {
                    Err(QmpError::Unreachable { .. }) if !process_alive(runtime) => Ok(None),
                    Ok(q) => {
                        conns.insert(key, q);
                        Err(e)
                    }
                    Err(_) => Err(e),
                }
            }
        }
    }

    /// Whether the QEMU of `runtime` answers.
    pub fn reachable(&self, runtime: &Runtime) -> Result<bool, QmpError> {
        Ok(self.with_qemu(runtime, |q| q.running())?.is_some())
    }

    /// Whether the QEMU of `runtime` is gone, decided from its process
    /// (pid or pidfile, checked in /proc) without talking to its monitor
    /// when the process is known; QMP is asked only for a QEMU attached
    /// without a pid. A read of one domain never waits on another
    /// domain's monitor this way.
    pub fn gone(&self, runtime: &Runtime) -> Result<bool, QmpError> {
        match runtime.process() {
            Some(_) => Ok(!process_alive(runtime)),
            None => Ok(!self.reachable(runtime)?),
        }
    }

    /// Forgets the connection to `socket` (after QEMU was stopped).
    pub fn forget(&self, socket: &str) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.remove(socket);
    }
}
