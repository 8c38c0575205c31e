//! `snapshot revert` (external): new overlays on the snapshot's images, the
//! snapshot's historic definition back, the abandoned overlays removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use journal::{ChainImage, DiskSnapshotMode, ImageRecord, Intent, Plan, StateChange, Step, TxnId};

use super::{
    check_new_image_path, check_world_chains, collect_garbage, derived_path, require_domain, world_chain,
};
use crate::engine::Executor;
use crate::error::{ExecError, Result};
use crate::xml::domain::{parse_domain, set_disk_sources};

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
            return Err(ExecError::Invalid(format!(
                "domain {} is not defined",
                req.domain
            )));
        };
        refuse_reverting_checkpoints(&dom, &req.snapshot)?;
        let Some(rt) = dom.core.runtime.clone() else {
            return self.snapshot_revert_stopped(req);
        };
        if !dom.snapshots.contains_key(&req.snapshot) {
            return Err(ExecError::Invalid(format!(
                "domain {} has no snapshot called {}",
                req.domain, req.snapshot
            )));
        }
        let was_running = self
            .live()
            .with_qemu(&rt, |q| q.running())
            .map_err(|e| ExecError::Invalid(format!("domain {}: {e}", req.domain)))?
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

    fn snapshot_revert_stopped(&self, req: &RevertRequest) -> Result<RevertReport> {
        let state = self.journal().state()?;
        let dom = require_domain(&state, &req.domain)?;
        let domain = &req.domain;
        let snap = dom.snapshots.get(&req.snapshot).ok_or_else(|| {
            ExecError::Invalid(format!("domain {domain} has no snapshot called {}", req.snapshot))
        })?;
        refuse_reverting_checkpoints(dom, &req.snapshot)?;
        for d in req.overlays.keys() {
            if !snap
                .disks
                .iter()
                .any(|s| &s.disk == d && s.mode == DiskSnapshotMode::External)
            {
                return Err(ExecError::Invalid(format!(
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
                ExecError::Invalid(format!(
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
        // Disks the snapshot did not cover keep their present images.
        for hd in &historic.disks {
            if chains.contains_key(&hd.target) {
                continue;
            }
            let chain = match dom.core.disks.get(&hd.target) {
                Some(present) => present.chain.clone(),
                None => {
                    let src = hd.source.as_deref().ok_or_else(|| {
                        ExecError::Invalid(format!(
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
        let removed = collect_garbage(&state, domain, &mut changes, &mut steps, false);
        // Abandoned present images the journal did not create are kept.
        let after = super::simulate(&state, &changes);
        let referenced = after
            .domains
            .get(domain)
            .map(|d| d.referenced_images())
            .unwrap_or_default();
        let kept = dom
            .core
            .disks
            .values()
            .flat_map(|d| d.chain.iter())
            .filter(|i| !referenced.contains(&i.path) && !state.images.contains_key(&i.path))
            .map(|i| i.path.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
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
        })
    }
}

/// A revert abandons the present overlays and starts new ones that no
/// bitmap tracks: refused while checkpoints keep bitmaps on reverted disks.
fn refuse_reverting_checkpoints(dom: &journal::DomainState, snapshot: &str) -> Result<()> {
    let Some(snap) = dom.snapshots.get(snapshot) else {
        return Ok(());
    };
    let disks = snap
        .disks
        .iter()
        .filter(|d| d.mode == DiskSnapshotMode::External)
        .map(|d| d.disk.as_str());
    super::checkpoint::refuse_with_checkpoints(dom, disks, &format!("reverting to snapshot {snapshot}"))
}
