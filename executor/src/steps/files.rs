//! Steps on files: overlays created, images merged, rebased and removed,
//! the XML projection written. Each step's probe, apply and undo together.

#[allow(unused_imports)]
use super::*;

impl World<'_> {
    /// Whether the world shows a file step done.
    pub(super) fn probe_files(&self, step: &Step) -> Result<bool> {
        Ok(match step {
            // The header tells (read in-process: recovery probes every
            // crashed create's overlays).
            Step::CreateOverlay { path, backing, .. } => {
                exists(path)
                    && crate::qcow2::read_header(path)
                        .map(|h| h.format == "qcow2" && h.backing.as_deref() == Some(backing.path.as_str()))
                        .unwrap_or(false)
                    // qemu-img writes the backing name last; the tables
                    // must read too.
                    && matches!(crate::qcow2::qcow2_data_bytes(path), Ok(Some(_)))
            }
            // A merge leaves no mark we can read cheaply; it counts as done
            // once its top image is gone (removed by a later step).
            Step::CommitImage { top, .. } => !exists(top),
            Step::RebaseImage { image, backing, .. } => {
                exists(image)
                    && crate::qcow2::read_header(image)
                        .map(|h| h.backing == backing.as_ref().map(|b| b.path.clone()))
                        .unwrap_or(false)
            }
            Step::RemoveImage { path } => !exists(path),
            Step::SyncXml { domain } => {
                let dom = self.journal.domain(domain)?;
                self.metadata.in_sync(self.journal, dom.as_ref(), domain)?
                    && self.libvirt_drift(domain)?.is_none_or(|d| d.findings.is_empty())
            }
            other => return Err(not_in_family(other, "file")),
        })
    }

    /// Runs a file step (idempotent).
    pub(super) fn apply_files(&self, step: &Step) -> Result<()> {
        self.apply_plain(step)
    }

    /// Undoes a file step before the commit point.
    pub(super) fn undo_files(&self, step: &Step) -> Result<()> {
        match step {
            Step::CreateOverlay { path, .. } => {
                crash_point("step.undo.remove_overlay");
                remove_file_if_exists(path)
            }
            other => Err(cannot_undo(other)),
        }
    }

    /// [`Step::SyncXml`] for a transaction whose state `changes` are known:
    /// only the files they touch are rendered and compared.
    /// For a domain libvirt runs, libvirt's metadata too.
    pub fn sync_xml(
        &self,
        domain: &str,
        changes: &[journal::StateChange],
        strays: super::Strays,
    ) -> Result<()> {
        let touched = crate::metadata::touched_items(changes, domain);
        match &touched {
            Some((snapshots, checkpoints)) => {
                self.metadata.sync_items(
                    self.journal,
                    domain,
                    snapshots,
                    checkpoints,
                    strays == super::Strays::MayBeLeft,
                )?;
            }
            None => {
                let state = self.journal.state()?;
                self.metadata.sync_domain(self.journal, &state, domain)?;
            }
        }
        self.sync_libvirt(domain, touched)
    }

    /// The steps that touch only files.
    pub(super) fn apply_plain(&self, step: &Step) -> Result<()> {
        match step {
            Step::CreateOverlay { path, backing, .. } => {
                if !self.probe(step)? {
                    // The plan checked that nothing was at `path`: anything
                    // there now is a partial overlay of ours.
                    remove_file_if_exists(path)?;
                    self.images.create_overlay(path, backing)?;
                }
                // qemu-img syncs the file, never its directory: the name is
                // made durable before the commit point relies on it, also
                // when a run that died before this line had created it.
                crate::durable::persist_new_file(Path::new(path)).map_err(|e| ImageError {
                    action: "make durable".into(),
                    path: path.clone(),
                    message: e.to_string(),
                })?;
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
                self.metadata.sync_domain(self.journal, &state, domain)?;
                self.sync_libvirt(domain, None)?;
            }
            other => {
                return Err(ExecError::refused(format!(
                    "step \"{}\" is not a file step",
                    other.describe()
                )))
            }
        }
        Ok(())
    }

    /// A safe [`Step::RebaseImage`] that the journal does not record done,
    /// run again from the image it was rebased from. qemu-img writes the
    /// new backing name into the header before its metadata cache reaches
    /// the disk: after a power cut the header can say "done" while the
    /// copied clusters are lost. So the header is put back on the old
    /// backing (header only: what was copied equals its data) and the copy
    /// is made again. The old backing is the image below `image` in the
    /// chain the plan was made from, or an image the plan removes whose
    /// own backing is the new one; when neither exists any more there is
    /// nothing to redo from (the copy had completed: the removal comes
    /// after it).
    pub fn apply_interrupted_rebase(
        &self,
        ctx: StepCtx,
        step: &Step,
        plan: &journal::Plan,
        prior: Option<&journal::DomainCore>,
    ) -> Result<()> {
        let Step::RebaseImage {
            disk,
            image,
            backing,
            safe: true,
        } = step
        else {
            return self.apply(ctx, step);
        };
        if !self.probe(step)? {
            return self.apply(ctx, step);
        }
        let new = backing.as_ref().map(|b| b.path.as_str());
        let from_chain = prior
            .and_then(|core| core.disks.get(disk))
            .and_then(|d| {
                let i = d.chain.iter().position(|c| &c.path == image)?;
                d.chain.get(i + 1).cloned()
            })
            .filter(|o| Some(o.path.as_str()) != new && exists(&o.path));
        let from_plan = || {
            plan.steps.iter().find_map(|s| match s {
                Step::RemoveImage { path }
                    if path != image
                        && exists(path)
                        && crate::qcow2::read_header(path)
                            .map(|h| h.backing.as_deref() == new)
                            .unwrap_or(false) =>
                {
                    Some(journal::ChainImage::qcow2(path.clone()))
                }
                _ => None,
            })
        };
        let Some(old) = from_chain.or_else(from_plan) else {
            return Ok(());
        };
        crash_point("step.rebase.redo");
        self.images.rebase(image, Some(&old), false)?;
        self.images.rebase(image, backing.as_ref(), true)?;
        Ok(())
    }
}
