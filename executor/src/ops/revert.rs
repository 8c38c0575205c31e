//! `snapshot revert` (external): new overlays on the snapshot's images, the
//! snapshot's historic definition back, the abandoned overlays removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use journal::{
    BitmapAction, BitmapOp, ChainImage, DiskSnapshotMode, ImageRecord, Intent, Plan, StateChange, Step, TxnId,
};

use super::{
    check_new_image_path, check_world_chains, collect_garbage, derived_path, require_domain, world_chain,
};
use crate::engine::Executor;
use crate::error::{ExecError, PlanError, Result};
use crate::xml::domain::{parse_domain, set_disk_sources};

/// What a revert does to the checkpoints: the ones it removes, and
/// (disk, bitmap) recording in each new overlay.
type RevertedCheckpoints = (Vec<String>, Vec<(String, String)>);

/// A revert request.
#[derive(Debug, Clone, Default)]
pub struct RevertRequest {
    pub domain: String,
    pub snapshot: String,
    /// Overlay file per disk (from `<domainsnapshotrevert>`); disks not
    /// listed get `<image>.<snapshot>-N`.
    pub overlays: BTreeMap<String, String>,
}

/// What a revert did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevertReport {
    pub txn: TxnId,
    /// (disk, new overlay).
    pub overlays: Vec<(String, String)>,
    /// Abandoned images the journal created, now removed.
    pub removed: Vec<String>,
    /// Abandoned images the journal did not create (a disk the user
    /// swapped): kept.
    pub kept: Vec<String>,
    /// For a domain that was running: whether its vCPUs were running (it is
    /// started again the same way, on the reverted disks).
    pub restarted: Option<bool>,
    /// Checkpoints removed because they do not describe the reverted disks
    /// (taken after the snapshot, or on another branch).
    pub dropped_checkpoints: Vec<String>,
    /// (disk, bitmap): the recording bitmap added to each new overlay, so
    /// the checkpoints that still apply go on tracking writes.
    pub recording: Vec<(String, String)>,
}

impl Executor {
    /// Reverts a domain to an external snapshot.
    ///
    /// A running domain is stopped first (QEMU flushes and closes its
    /// images, so every guest write is in the abandoned present, never in
    /// the reverted disks), reverted like a stopped one, and started again
    /// paused or running as it was. Three transactions: a crash between
    /// them leaves the domain stopped, reverted or not, never half-reverted.
    pub fn snapshot_revert(&self, req: &RevertRequest) -> Result<RevertReport> {
        let Some(dom) = self.journal().domain(&req.domain)? else {
            return Err(PlanError::DomainNotDefined {
                domain: req.domain.clone(),
            }
            .into());
        };
        let libvirt = self.libvirt_state(&req.domain)?;
        if let Some((uri, true)) = &libvirt {
            return self.snapshot_revert_libvirt(req, &dom, uri);
        }
        let Some(rt) = dom.core.runtime.clone() else {
            return self.snapshot_revert_stopped(req);
        };
        if !dom.snapshots.contains_key(&req.snapshot) {
            return Err(PlanError::NoSuchSnapshot {
                domain: req.domain.clone(),
                snapshot: req.snapshot.clone(),
            }
            .into());
        }
        let was_running = self
            .live()
            .with_qemu(&rt, |q| q.running())
            .map_err(|e| ExecError::refused(format!("domain {}: {e}", req.domain)))?
            .unwrap_or(false);
        // Three transactions (stop, revert, start): a durable note says how
        // the domain ran, so that recovery starts it again as it was if a
        // crash falls between them.
        let note = crate::resume::ResumeNote {
            domain: req.domain.clone(),
            running: was_running,
            snapshot: req.snapshot.clone(),
        };
        note.write(self.journal().dir())?;
        self.domain_stop(&req.domain)?;
        let reverted = self.snapshot_revert_stopped(req);
        let started = self.domain_start(&req.domain, !was_running);
        crate::resume::ResumeNote::remove(self.journal().dir(), &req.domain)?;
        let mut report = match (reverted, started) {
            (Ok(r), Ok(_)) => r,
            // Not `Invalid` ("nothing was changed"): the domain was
            // stopped and started, and may have been reverted.
            (Err(e), Ok(_)) => {
                return Err(ExecError::Live(format!(
                    "domain {}: the revert to {} failed ({e}); the domain was started again on its disks as they were",
                    req.domain, req.snapshot
                )))
            }
            (Err(e), Err(s)) => {
                return Err(ExecError::Live(format!(
                    "domain {}: the revert to {} failed ({e}) and the domain, stopped for it, could not be started again ({s}); it stays stopped: `snapjournal domain start {}`",
                    req.domain, req.snapshot, req.domain
                )))
            }
            (Ok(_), Err(s)) => {
                return Err(ExecError::Live(format!(
                    "domain {} was reverted to {} but could not be started again ({s}); it stays stopped: `snapjournal domain start {}`",
                    req.domain, req.snapshot, req.domain
                )))
            }
        };
        report.restarted = Some(was_running);
        Ok(report)
    }

    /// A revert of a running domain libvirt runs: stopped through libvirt
    /// (QEMU quits, flushing its images), reverted like a stopped domain
    /// (the projection defines the reverted disks in libvirt), started
    /// again through libvirt as it ran. A durable note lets recovery start
    /// it again if a crash falls in between.
    fn snapshot_revert_libvirt(
        &self,
        req: &RevertRequest,
        dom: &journal::DomainState,
        uri: &str,
    ) -> Result<RevertReport> {
        if !dom.snapshots.contains_key(&req.snapshot) {
            return Err(PlanError::NoSuchSnapshot {
                domain: req.domain.clone(),
                snapshot: req.snapshot.clone(),
            }
            .into());
        }
        let lv = |e: crate::libvirt::LibvirtError| ExecError::refused(e.to_string());
        let was_running = self.libvirt().vcpus_running(uri, &req.domain).map_err(lv)?;
        let note = crate::resume::ResumeNote {
            domain: req.domain.clone(),
            running: was_running,
            snapshot: req.snapshot.clone(),
        };
        note.write(self.journal().dir())?;
        if let Err(e) = self.libvirt().stop(uri, &req.domain) {
            crate::resume::ResumeNote::remove(self.journal().dir(), &req.domain)?;
            return Err(ExecError::refused(e.to_string()));
        }
        let reverted = self.snapshot_revert_stopped(req);
        let started = self.libvirt().start(uri, &req.domain, !was_running);
        crate::resume::ResumeNote::remove(self.journal().dir(), &req.domain)?;
        match (reverted, started) {
            (Ok(mut r), Ok(())) => {
                r.restarted = Some(was_running);
                Ok(r)
            }
            (Err(e), Ok(())) => Err(ExecError::Live(format!(
                "domain {}: the revert to {} failed ({e}); libvirt started the domain again on its disks as they were",
                req.domain, req.snapshot
            ))),
            (Err(e), Err(s)) => Err(ExecError::Live(format!(
                "domain {}: the revert to {} failed ({e}) and libvirt could not start the domain again ({s}); it stays shut off: `virsh -c {uri} start {}`",
                req.domain, req.snapshot, req.domain
            ))),
            (Ok(_), Err(s)) => Err(ExecError::Live(format!(
                "domain {} was reverted to {} but libvirt could not start it again ({s}); it stays shut off: `virsh -c {uri} start {}`",
                req.domain, req.snapshot, req.domain
            ))),
        }
    }

    fn snapshot_revert_stopped(&self, req: &RevertRequest) -> Result<RevertReport> {
        let state = self.journal().state()?;
        let dom = require_domain(&state, &req.domain)?;
        let domain = &req.domain;
        let snap = dom.snapshots.get(&req.snapshot).ok_or_else(|| {
            ExecError::from(PlanError::NoSuchSnapshot {
                domain: domain.to_string(),
                snapshot: req.snapshot.to_string(),
            })
        })?;
        for d in req.overlays.keys() {
            if !snap
                .disks
                .iter()
                .any(|s| &s.disk == d && s.mode == DiskSnapshotMode::External)
            {
                return Err(ExecError::refused(format!(
                    "snapshot {} of domain {domain} has no external disk {d}",
                    req.snapshot
                )));
            }
        }
        check_world_chains(dom)?;
        let historic_xml = crate::metadata::snapshot_historic(self.journal(), domain, &snap.name)?;
        let historic = parse_domain(
            &format!("historic domain of snapshot {}", snap.name),
            &historic_xml,
        )?;

        let mut steps = Vec::new();
        let mut changes = Vec::new();
        let mut planned = BTreeSet::new();
        let mut sources = BTreeMap::new();
        let mut chains: BTreeMap<String, Vec<ChainImage>> = BTreeMap::new();
        let mut overlays = Vec::new();
        for sd in &snap.disks {
            if sd.mode != DiskSnapshotMode::External {
                continue;
            }
            let frozen = sd.frozen.as_ref().ok_or_else(|| {
                ExecError::refused(format!(
                    "snapshot {}, disk {}: no image recorded",
                    snap.name, sd.disk
                ))
            })?;
            let below = world_chain(domain, &sd.disk, &frozen.path)?;
            let path = match req.overlays.get(&sd.disk) {
                Some(p) => p.clone(),
                None => (1..)
                    .map(|n| derived_path(&frozen.path, &format!("{}-{n}", snap.name)))
                    .find(|p| !Path::new(p).exists() && !state.images.contains_key(p) && !planned.contains(p))
                    .unwrap_or_default(),
            };
            check_new_image_path(domain, &sd.disk, &path, &planned)?;
            planned.insert(path.clone());
            steps.push(Step::CreateOverlay {
                disk: sd.disk.clone(),
                path: path.clone(),
                backing: frozen.clone(),
            });
            changes.push(StateChange::ImageCreated {
                image: ImageRecord {
                    path: path.clone(),
                    domain: domain.clone(),
                },
            });
            let overlay = ChainImage::qcow2(path.clone());
            let mut chain = vec![overlay.clone()];
            chain.extend(below);
            chains.insert(sd.disk.clone(), chain);
            sources.insert(sd.disk.clone(), overlay);
            overlays.push((sd.disk.clone(), path));
        }
        let (dropped_checkpoints, recording) =
            self.revert_checkpoints(dom, &snap.name, &chains, &mut changes)?;
        for (disk, bitmap) in &recording {
            steps.push(Step::Bitmap {
                domain: domain.clone(),
                op: BitmapOp {
                    disk: disk.clone(),
                    image: chains[disk][0].path.clone(),
                    action: BitmapAction::Add {
                        name: bitmap.clone(),
                        enabled: true,
                    },
                },
            });
        }
        // Disks the snapshot did not cover keep their present images.
        for hd in &historic.disks {
            if chains.contains_key(&hd.target) {
                continue;
            }
            let chain = match dom.core.disks.get(&hd.target) {
                Some(present) => present.chain.clone(),
                None => {
                    let src = hd.source.as_deref().ok_or_else(|| {
                        ExecError::refused(format!(
                            "snapshot {}: disk {} of its definition has no source",
                            snap.name, hd.target
                        ))
                    })?;
                    world_chain(domain, &hd.target, src)?
                }
            };
            if let Some(a) = chain.first() {
                sources.insert(hd.target.clone(), a.clone());
            }
            chains.insert(hd.target.clone(), chain);
        }
        let xml = set_disk_sources(
            &format!("historic domain of snapshot {}", snap.name),
            &historic_xml,
            &sources,
        )?;
        changes.push(StateChange::DomainXmlSet {
            domain: domain.clone(),
            xml,
        });
        for (disk, chain) in &chains {
            changes.push(StateChange::DiskChainChanged {
                domain: domain.clone(),
                disk: disk.clone(),
                chain: chain.clone(),
            });
        }
        for disk in dom.core.disks.keys() {
            if !chains.contains_key(disk) {
                changes.push(StateChange::DiskRemoved {
                    domain: domain.clone(),
                    disk: disk.clone(),
                });
            }
        }
        changes.push(StateChange::CurrentSnapshotSet {
            domain: domain.clone(),
            snapshot: Some(snap.name.clone()),
        });
        let commit_index = steps.len() as u32;
        // Abandoned images the journal does not own (a disk the user
        // swapped) are kept and named.
        let garbage = collect_garbage(&state, domain, &mut changes, &mut steps, false);
        let (removed, kept) = (garbage.removed, garbage.shared);
        steps.push(Step::SyncXml {
            domain: domain.clone(),
        });
        let plan = Plan {
            steps,
            commit_index,
            changes,
        };
        let txn = self.run(
            Intent::SnapshotRevert {
                domain: domain.clone(),
                snapshot: snap.name.clone(),
            },
            plan,
            Some(dom),
        )?;
        Ok(RevertReport {
            txn,
            overlays,
            removed,
            kept,
            restarted: None,
            dropped_checkpoints,
            recording,
        })
    }

    /// What a revert does to the checkpoints, given the new chain of each
    /// reverted disk (the new overlay first): a checkpoint whose bitmap on
    /// a reverted disk is in no image below the new overlay does not
    /// describe the reverted data (it was taken after the snapshot, or on
    /// another branch) and is removed, with the checkpoints under it; the
    /// others stay right, because the snapshot's images hold their changes
    /// up to the snapshot, and the newest of them on each reverted disk
    /// records in the new overlay (returned as (disk, bitmap)). A removed
    /// checkpoint that also covers a disk the revert leaves as it is is
    /// refused: its bitmap there records now.
    fn revert_checkpoints(
        &self,
        dom: &journal::DomainState,
        snapshot: &str,
        chains: &BTreeMap<String, Vec<ChainImage>>,
        changes: &mut Vec<StateChange>,
    ) -> Result<RevertedCheckpoints> {
        if dom.checkpoints.is_empty() || chains.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let domain = &dom.core.name;
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        for (disk, chain) in chains {
            let mut present = BTreeSet::new();
            for image in chain.iter().skip(1).filter(|i| i.format == "qcow2") {
                for b in self.images().bitmaps(&image.path)? {
                    // A bitmap left in use by a QEMU that died lost its
                    // tracking: no base to go on from.
                    if !b.in_use {
                        present.insert(b.name);
                    }
                }
            }
            for c in dom.checkpoints.values() {
                if c.bitmap_on(disk).is_some_and(|b| !present.contains(b)) {
                    dropped.insert(c.name.clone());
                }
            }
        }
        // A checkpoint under a removed one goes with it.
        loop {
            let more: Vec<String> = dom
                .checkpoints
                .values()
                .filter(|c| {
                    !dropped.contains(&c.name) && c.parent.as_ref().is_some_and(|p| dropped.contains(p))
                })
                .map(|c| c.name.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            dropped.extend(more);
        }
        for name in &dropped {
            let c = &dom.checkpoints[name];
            if let Some((disk, _)) = c.bitmaps().find(|(d, _)| !chains.contains_key(*d)) {
                return Err(ExecError::refused(format!(
                    "domain {domain}: reverting to snapshot {snapshot} leaves disk {disk} as it is, but checkpoint {name}, which covers it, does not describe the reverted disks and would have to go; delete checkpoint {name} first (`checkpoint delete`)"
                )));
            }
        }
        let mut after = dom.clone();
        for n in &dropped {
            after.checkpoints.remove(n);
        }
        let recording = chains
            .keys()
            .filter_map(|disk| {
                let c = after.newest_checkpoint(Some(disk))?;
                Some((disk.clone(), c.bitmap_on(disk)?.to_string()))
            })
            .collect();
        for name in &dropped {
            changes.push(StateChange::CheckpointRemoved {
                domain: domain.clone(),
                checkpoint: name.clone(),
            });
        }
        Ok((dropped.into_iter().collect(), recording))
    }
}
