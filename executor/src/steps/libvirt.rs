//! Steps on a domain libvirt runs: the snapshot commit point and block
//! jobs through libvirt's API (the same merge through qemu-img when
//! libvirt no longer runs the domain), and the projection of the journal
//! into libvirt's metadata that `SyncXml` adds for such a domain.

use super::*;
#[allow(unused_imports)]
use crate::error::PlanError;

use std::collections::{BTreeMap, BTreeSet};

use journal::{DomainState, LibvirtMerge};

use crate::libvirt::project::{Drift, Moment, Projection};
use crate::libvirt::{checkpoints, LibvirtError};
use crate::live::JobProgress;
use crate::xml::checkpoint::render_checkpoint;

fn lv_err(e: LibvirtError) -> ExecError {
    ExecError::Live(e.to_string())
}

/// The offline form of a libvirt merge (no QEMU nodes).
fn as_offline(merge: &LibvirtMerge) -> LiveMerge {
    match merge.clone() {
        LibvirtMerge::Commit { top, base, active } => LiveMerge::Commit {
            device_node: String::new(),
            top,
            top_node: String::new(),
            base,
            base_node: String::new(),
            active,
        },
        LibvirtMerge::Pull { top, dropped, below } => LiveMerge::Stream {
            top,
            top_node: String::new(),
            dropped,
            below,
            below_node: None,
        },
    }
}

/// Names ordered so that every parent comes before its children.
fn parents_first<'a>(items: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> Vec<String> {
    let parent: BTreeMap<&str, Option<&str>> = items.collect();
    let depth = |mut n: &'a str| {
        let mut d = 0usize;
        while let Some(Some(p)) = parent.get(n) {
            d += 1;
            if d > parent.len() {
                break;
            }
            n = p;
        }
        d
    };
    let mut names: Vec<(usize, &str)> = parent.keys().map(|n| (depth(n), *n)).collect();
    names.sort();
    names.into_iter().map(|(_, n)| n.to_string()).collect()
}

impl World<'_> {
    /// The libvirt URI of `domain` when libvirt runs it.
    pub fn libvirt_uri(&self, domain: &str) -> Result<Option<String>> {
        Ok(self.journal.libvirt_uri(domain)?)
    }

    /// What libvirt must show for `dom` (the documents are rendered from
    /// the journal only for what [`crate::libvirt::Libvirt::project`] rewrites).
    pub fn libvirt_projection(
        &self,
        dom: &DomainState,
        touched: Option<(BTreeSet<String>, BTreeSet<String>)>,
    ) -> Projection {
        Projection {
            domain_xml: dom.core.xml.clone(),
            active: dom
                .core
                .disks
                .values()
                .filter_map(|d| Some((d.target.clone(), d.active()?.path.clone())))
                .collect(),
            chains: dom
                .core
                .disks
                .values()
                .filter(|d| d.active().is_some())
                .map(|d| (d.target.clone(), d.chain.iter().map(|c| c.path.clone()).collect()))
                .collect(),
            snapshots: parents_first(
                dom.snapshots
                    .values()
                    .map(|s| (s.name.as_str(), s.parent.as_deref())),
            ),
            current: dom.core.current_snapshot.clone(),
            checkpoints: parents_first(
                dom.checkpoints
                    .values()
                    .map(|c| (c.name.as_str(), c.parent.as_deref())),
            ),
            touched,
        }
    }

    /// The `<domainsnapshot>` or `<domaincheckpoint>` of `m`, rendered
    /// from the journal.
    fn render_moment(&self, dom: &DomainState, m: Moment) -> Result<String> {
        let name = &dom.core.name;
        match m {
            Moment::Snapshot(n) => {
                let rec = dom.snapshots.get(n).ok_or_else(|| {
                    ExecError::from(PlanError::NoSuchSnapshot {
                        domain: name.to_string(),
                        snapshot: n.to_string(),
                    })
                })?;
                crate::metadata::render_snapshot_of(self.journal, name, rec)
            }
            Moment::Checkpoint(n) => {
                let rec = dom.checkpoints.get(n).ok_or_else(|| {
                    ExecError::from(PlanError::NoSuchCheckpoint {
                        domain: name.to_string(),
                        checkpoint: n.to_string(),
                    })
                })?;
                let historic = crate::metadata::checkpoint_historic(self.journal, name, n)?;
                Ok(render_checkpoint(rec, &historic)?)
            }
        }
    }

    /// Rewrites libvirt's view of `domain` from the journal (nothing to do
    /// for a domain libvirt does not run, or one no longer defined: libvirt
    /// keeps its definition, the journal forgot it).
    pub fn sync_libvirt(
        &self,
        domain: &str,
        touched: Option<(BTreeSet<String>, BTreeSet<String>)>,
    ) -> Result<()> {
        let Some(uri) = self.libvirt_uri(domain)? else {
            return Ok(());
        };
        let Some(dom) = self.journal.domain(domain)? else {
            return Ok(());
        };
        let p = self.libvirt_projection(&dom, touched);
        let render = |m: Moment| self.render_moment(&dom, m).map_err(|e| e.to_string());
        self.libvirt.project(&uri, domain, &p, &render).map_err(|e| {
            ExecError::Live(format!(
                "{e} (libvirt's metadata is rewritten from the journal after every commit)"
            ))
        })
    }

    /// How libvirt's view of `domain` differs from the journal (`None`:
    /// libvirt does not run it).
    pub fn libvirt_drift(&self, domain: &str) -> Result<Option<Drift>> {
        let Some(uri) = self.libvirt_uri(domain)? else {
            return Ok(None);
        };
        let Some(dom) = self.journal.domain(domain)? else {
            return Ok(None);
        };
        let p = self.libvirt_projection(&dom, None);
        Ok(Some(self.libvirt.drift(&uri, domain, &p).map_err(lv_err)?))
    }

    /// Whether a libvirt step shows done.
    pub(super) fn probe_libvirt(&self, step: &Step) -> Result<bool> {
        match step {
            Step::LibvirtSnapshot {
                domain, uri, disks, ..
            } => {
                if !self.libvirt.is_active(uri, domain).map_err(lv_err)? {
                    // Not running: the definition the projection writes
                    // names the overlays.
                    return Ok(true);
                }
                self.libvirt.switched(uri, domain, disks).map_err(lv_err)
            }
            Step::LibvirtBlockJob {
                domain,
                uri,
                disk,
                merge,
            } => {
                if self.libvirt.is_active(uri, domain).map_err(lv_err)? {
                    self.libvirt.merge_done(uri, domain, disk, merge).map_err(lv_err)
                } else {
                    self.offline_merge_done(&as_offline(merge))
                }
            }
            Step::LibvirtCheckpoint {
                domain, uri, name, ..
            } => {
                let d = self.libvirt.domain(uri, domain).map_err(lv_err)?;
                checkpoints::exists(uri, domain, &d, name).map_err(lv_err)
            }
            Step::LibvirtCheckpointDelete { domain, uri, name } => {
                let d = self.libvirt.domain(uri, domain).map_err(lv_err)?;
                Ok(!checkpoints::exists(uri, domain, &d, name).map_err(lv_err)?)
            }
            other => Err(not_in_family(other, "libvirt")),
        }
    }

    /// Runs a libvirt step (idempotent).
    pub(super) fn apply_libvirt(&self, step: &Step) -> Result<()> {
        match step {
            Step::LibvirtSnapshot {
                domain,
                uri,
                disks,
                excluded,
            } => {
                crash_point("libvirt.snapshot.before");
                if self.libvirt.is_active(uri, domain).map_err(lv_err)? {
                    self.libvirt
                        .snapshot(uri, domain, disks, excluded)
                        .map_err(lv_err)?;
                }
                crash_point("libvirt.snapshot.after");
                Ok(())
            }
            Step::LibvirtBlockJob {
                domain,
                uri,
                disk,
                merge,
            } => {
                if !self.libvirt.is_active(uri, domain).map_err(lv_err)? {
                    return self.offline_merge(&as_offline(merge));
                }
                let kind = match merge {
                    LibvirtMerge::Commit { .. } => "commit",
                    LibvirtMerge::Pull { .. } => "stream",
                };
                let report = |status: &str, current: u64, total: u64| {
                    self.live.report(&JobProgress {
                        domain: domain.clone(),
                        disk: disk.clone(),
                        job: format!("libvirt-{disk}"),
                        kind: kind.into(),
                        status: status.into(),
                        current,
                        total,
                    })
                };
                match self.libvirt.merge(uri, domain, disk, merge, &report) {
                    Ok(()) => Ok(()),
                    // libvirt stopped running the domain meanwhile: the
                    // same merge on the files.
                    Err(e) => {
                        if !self.libvirt.is_active(uri, domain).unwrap_or(true) {
                            return self.offline_merge(&as_offline(merge));
                        }
                        Err(lv_err(e))
                    }
                }
            }
            Step::LibvirtCheckpoint {
                domain,
                uri,
                name,
                xml,
            } => {
                let d = self.libvirt.domain(uri, domain).map_err(lv_err)?;
                if !checkpoints::exists(uri, domain, &d, name).map_err(lv_err)? {
                    if !self.libvirt.is_active(uri, domain).map_err(lv_err)? {
                        return Err(ExecError::Live(format!(
                            "domain {domain} stopped running before checkpoint {name} was taken through libvirt"
                        )));
                    }
                    crash_point("libvirt.checkpoint.before");
                    checkpoints::create(uri, domain, &d, name, xml).map_err(lv_err)?;
                }
                Ok(())
            }
            Step::LibvirtCheckpointDelete { domain, uri, name } => {
                if !self.libvirt.is_active(uri, domain).map_err(lv_err)? {
                    // Shut off, libvirt cannot remove bitmaps: only the
                    // metadata goes (the bitmap stays in the image, named
                    // by no checkpoint; fsck ignores such bitmaps).
                    let d = self.libvirt.domain(uri, domain).map_err(lv_err)?;
                    return checkpoints::forget(uri, domain, &d, name).map_err(lv_err);
                }
                let d = self.libvirt.domain(uri, domain).map_err(lv_err)?;
                checkpoints::delete(uri, domain, &d, name).map_err(lv_err)
            }
            other => Err(not_in_family(other, "libvirt")),
        }
    }

    /// Undoes a libvirt step before the commit point.
    pub(super) fn undo_libvirt(&self, step: &Step) -> Result<()> {
        match step {
            Step::LibvirtSnapshot {
                domain, uri, disks, ..
            } => {
                // The persistent definition too: a domain switched and
                // stopped since has written to the overlays.
                let switched = (self.libvirt.is_active(uri, domain).map_err(lv_err)?
                    && self.libvirt.switched(uri, domain, disks).map_err(lv_err)?)
                    || self
                        .libvirt
                        .switched_in(uri, domain, disks, true)
                        .map_err(lv_err)?;
                if switched {
                    return Err(ExecError::Live(format!(
                        "domain {domain}: libvirt already switched the disks onto the overlays, which may hold guest writes; the transaction must go forward, not back"
                    )));
                }
                Ok(())
            }
            Step::LibvirtCheckpoint {
                domain, uri, name, ..
            } => {
                let d = self.libvirt.domain(uri, domain).map_err(lv_err)?;
                if self.libvirt.is_active(uri, domain).map_err(lv_err)? {
                    checkpoints::delete(uri, domain, &d, name).map_err(lv_err)
                } else {
                    checkpoints::forget(uri, domain, &d, name).map_err(lv_err)
                }
            }
            other => Err(cannot_undo(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_before_children() {
        let items = [("c", Some("b")), ("a", None), ("b", Some("a")), ("z", None)];
        let order = parents_first(items.into_iter());
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert!(pos("a") < pos("b") && pos("b") < pos("c"));
        assert_eq!(order.len(), 4);
    }
}
