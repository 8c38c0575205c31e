//! The behaviour of each plan [`Step`]: apply (idempotent), probe (does the
//! world show it done?) and undo (idempotent).

use std::path::Path;

use journal::crashpoint::crash_point;
use journal::{Journal, Step};

use crate::error::{ExecError, ImageError, Result};
use crate::images::QemuImg;
use crate::metadata::MetadataStore;

/// What steps act on.
pub struct World<'a> {
    pub journal: &'a Journal,
    pub images: &'a QemuImg,
    pub metadata: &'a MetadataStore,
}

fn remove_file_if_exists(path: &str) -> Result<()> {
    // Checked first: unlink on a read-only file system fails with EROFS
    // even when there is nothing to remove.
    if Path::new(path).symlink_metadata().is_err() {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError {
            action: "remove".into(),
            path: path.into(),
            message: e.to_string(),
        }
        .into()),
    }
}

fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

impl World<'_> {
    /// Whether the world shows `step` done.
    pub fn probe(&self, step: &Step) -> Result<bool> {
        Ok(match step {
            Step::CreateOverlay { path, backing, .. } => {
                exists(path)
                    && self
                        .images
                        .info(path)
                        .map(|i| i.backing_path().as_deref() == Some(backing.path.as_str()))
                        .unwrap_or(false)
            }
            // A merge leaves no mark we can read cheaply; it counts as done
            // once its top image is gone (removed by a later step).
            Step::CommitImage { top, .. } => !exists(top),
            Step::RebaseImage { image, backing, .. } => {
                exists(image)
                    && self
                        .images
                        .info(image)
                        .map(|i| i.backing_path() == backing.as_ref().map(|b| b.path.clone()))
                        .unwrap_or(false)
            }
            Step::RemoveImage { path } => !exists(path),
            Step::SyncXml { domain } => {
                let state = self.journal.state()?;
                self.metadata.in_sync(&state, domain)?
            }
        })
    }

    /// Runs `step`; running it again after success (or after a crash in the
    /// middle of it) is harmless.
    pub fn apply(&self, step: &Step) -> Result<()> {
        match step {
            Step::CreateOverlay { path, backing, .. } => {
                if self.probe(step)? {
                    return Ok(());
                }
                // The plan checked that nothing was at `path`: anything there
                // now is a partial overlay of ours.
                remove_file_if_exists(path)?;
                self.images.create_overlay(path, backing)?;
            }
            Step::CommitImage { top, base, .. } => {
                if !exists(top) {
                    return Ok(());
                }
                self.images.commit(top, base)?;
            }
            Step::RebaseImage {
                image, backing, safe, ..
            } => {
                if self.probe(step)? {
                    return Ok(());
                }
                self.images.rebase(image, backing.as_ref(), *safe)?;
            }
            Step::RemoveImage { path } => remove_file_if_exists(path)?,
            Step::SyncXml { domain } => {
                let state = self.journal.state()?;
                self.metadata.sync_domain(&state, domain)?;
            }
        }
        Ok(())
    }

    /// Undoes `step` (whether or not it ran). Only steps before the commit
    /// point have an undo.
    pub fn undo(&self, step: &Step) -> Result<()> {
        match step {
            Step::CreateOverlay { path, .. } => {
                crash_point("step.undo.remove_overlay");
                remove_file_if_exists(path)
            }
            other => Err(ExecError::Invalid(format!(
                "step \"{}\" runs after the commit point and cannot be undone",
                other.describe()
            ))),
        }
    }
}
