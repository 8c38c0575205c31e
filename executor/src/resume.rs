//! The note a live revert leaves while its domain is stopped: how the
//! domain ran, so that recovery starts it again as it was when a crash
//! falls between the revert's three transactions (stop, revert, start).
//!
//! `<state>/run/<domain>.resume`: `running` or `paused`, then the snapshot,
//! one per line; written durably before the stop, removed after the start.

use std::path::{Path, PathBuf};

use crate::error::{ExecError, Result};

/// A stopped-for-revert domain and how it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeNote {
    pub domain: String,
    /// The vCPUs ran (else: paused).
    pub running: bool,
    /// The snapshot being reverted to.
    pub snapshot: String,
}

fn path(state_dir: &Path, domain: &str) -> PathBuf {
    state_dir.join("run").join(format!("{domain}.resume"))
}

fn io(what: &str, p: &Path, e: std::io::Error) -> ExecError {
    ExecError::Metadata {
        path: p.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

impl ResumeNote {
    /// Writes the note durably (temp file, fsync, rename, directory fsync).
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let p = path(state_dir, &self.domain);
        let dir = p.parent().unwrap_or(state_dir);
        crate::durable::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let tmp = p.with_extension("resume.tmp");
        let text = format!(
            "{}\n{}\n",
            if self.running { "running" } else { "paused" },
            self.snapshot
        );
        std::fs::write(&tmp, text).map_err(|e| io("write", &tmp, e))?;
        crate::durable::fsync_file(&tmp).map_err(|e| io("sync", &tmp, e))?;
        crate::durable::rename(&tmp, &p).map_err(|e| io("rename", &p, e))?;
        Ok(())
    }

    /// Removes the note (durably); absent is fine.
    pub fn remove(state_dir: &Path, domain: &str) -> Result<()> {
        let p = path(state_dir, domain);
        if p.symlink_metadata().is_err() {
            return Ok(());
        }
        crate::durable::remove_file(&p).map_err(|e| io("remove", &p, e))?;
        Ok(())
    }

    /// Every note in the state directory (unreadable ones are skipped:
    /// a half-written note was never renamed into place).
    pub fn all(state_dir: &Path) -> Vec<ResumeNote> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(state_dir.join("run")) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Some(domain) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".resume"))
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let mut lines = text.lines();
            let running = match lines.next() {
                Some("running") => true,
                Some("paused") => false,
                _ => continue,
            };
            out.push(ResumeNote {
                domain: domain.to_string(),
                running,
                snapshot: lines.next().unwrap_or_default().to_string(),
            });
        }
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        out
    }
}
