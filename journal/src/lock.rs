//! The state-directory lock: one process owns a state directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{JournalError, Result};

/// How long a second opener waits for the lock before it is refused.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Holds an exclusive `flock` on `<dir>/lock` for as long as it lives; the
/// file names the holder's PID.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join("lock");
        let io = |source| JournalError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // A holder that is exiting, or a child forked by a holder that has
        // not yet exec'd (it shares the lock until then), releases the lock
        // within moments: wait up to LOCK_WAIT before refusing.
        let started = std::time::Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) && started.elapsed() < LOCK_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(JournalError::StateDirLocked {
                    dir: dir.to_path_buf(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.into()
                    },
                });
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        // The PID only informs a refused opener; the flock is the lock. It
        // is not synced: after a crash no process holds the flock, and a
        // stale PID is never read.
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
