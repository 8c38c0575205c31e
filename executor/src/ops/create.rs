//! `snapshot create` on a stopped domain: an overlay on every selected
//! disk, atomic across disks.

use std::collections::{BTreeMap, BTreeSet};

use journal::{
    ChainImage, DiskSnapshotMode, ImageRecord, Intent, LiveSwitch, Plan, SnapshotDisk, SnapshotRecord,
    StateChange, Step, TxnId,
};

use super::checkpoint::{new_checkpoint_record, switch_bitmap_ops, CheckpointRequest, DiskTop};
use super::{check_new_image_path, check_world_chains, derived_path, live_chains, now_secs, require_defined};
use crate::engine::Executor;
use crate::error::{ExecError, PlanError, Result};
use crate::names::validate_name;
use crate::xml::domain::{domain_element_text, set_disk_sources};
use crate::xml::snapshot::DiskRequest;

/// A snapshot-create request.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub domain: String,
    pub name: String,
    pub description: Option<String>,
    /// Per-disk choices; disks not listed get an external overlay with the
    /// default name.
    pub disks: Vec<DiskRequest>,
    /// Take a checkpoint of this name in the same transaction (a bitmap on
    /// every disk, in the new overlays).
    pub checkpoint: Option<String>,
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateReport {
    pub txn: TxnId,
    /// (disk, overlay) for every external disk.
    pub overlays: Vec<(String, String)>,
    /// The dirty-bitmap changes (a checkpoint taken with the snapshot, and
    /// the recording bitmap carried into the overlays).
    pub bitmap_changes: Vec<String>,
}

impl Executor {
    /// Takes an external, disk-only snapshot of a domain. Of a running
    /// domain: the overlays are opened in QEMU and ONE QMP `transaction`
    /// switches every disk at once (the commit point).
    pub fn snapshot_create(&self, req: &CreateRequest) -> Result<CreateReport> {
        validate_name("snapshot", &req.name)?;
        let state = self.journal().state()?;
        let dom = require_defined(&state, &req.domain)?;
        let running = dom.core.runtime.clone();
        // A domain libvirt runs is switched through libvirt's API.
        let libvirt = match self.libvirt_state(&req.domain)? {
            Some((uri, true)) => Some(uri),
            _ => None,
        };
        // QEMU's view of each disk: the active node, checked against the
        // journal's chain.
        let live = match &running {
            Some(rt) => Some(live_chains(self, dom, rt)?),
            None => None,
        };
        let domain = &req.domain;
        if let Some(uri) = &libvirt {
            super::libvirt_ops::check_live_chains(self, dom, uri)?;
        }
        if dom.snapshots.contains_key(&req.name) {
            return Err(PlanError::SnapshotExists {
                domain: domain.to_string(),
                snapshot: req.name.clone(),
            }
            .into());
        }
        let mut requested: BTreeMap<&str, &DiskRequest> = BTreeMap::new();
        for d in &req.disks {
            if !dom.core.disks.contains_key(&d.disk) {
                if let Some(o) = crate::xml::domain::other_disk(&dom.core.xml, &d.disk) {
                    if d.mode == journal::DiskSnapshotMode::No {
                        continue;
                    }
                    return Err(ExecError::refused(format!(
                        "disk {} of domain {domain} is {}; snapjournal snapshots file-backed disks only (exclude it with --diskspec {},snapshot=no)",
                        d.disk, o.kind, d.disk
                    )));
                }
                return Err(ExecError::refused(format!(
                    "domain {domain} has no disk {} (it has: {})",
                    d.disk,
                    dom.core.disks.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            if requested.insert(&d.disk, d).is_some() {
                return Err(ExecError::refused(format!("disk {} is given twice", d.disk)));
            }
        }
        check_world_chains(dom)?;
        let mut bitmap_ops = Vec::new();
        if let Some(cp) = &req.checkpoint {
            validate_name("checkpoint", cp)?;
            if dom.checkpoints.contains_key(cp) {
                return Err(PlanError::CheckpointExists {
                    domain: domain.to_string(),
                    checkpoint: cp.clone(),
                }
                .into());
            }
        }

        let mut steps = Vec::new();
        let mut changes = Vec::new();
        let mut snap_disks = Vec::new();
        let mut overlays = Vec::new();
        let mut planned = BTreeSet::new();
        let mut sources = BTreeMap::new();
        let mut adds = Vec::new();
        let mut switches = Vec::new();
        for disk in dom.core.disks.values() {
            let r = requested.get(disk.target.as_str());
            let mode = r.map(|r| r.mode).unwrap_or(DiskSnapshotMode::External);
            if mode == DiskSnapshotMode::No {
                if let Some(active) = disk.active() {
                    let top = DiskTop {
                        active: active.path.clone(),
                        overlay: None,
                    };
                    bitmap_ops.extend(switch_bitmap_ops(
                        dom,
                        &disk.target,
                        &top,
                        req.checkpoint.as_deref(),
                    ));
                }
                snap_disks.push(SnapshotDisk {
                    disk: disk.target.clone(),
                    mode,
                    overlay: None,
                    frozen: None,
                });
                continue;
            }
            let active = disk.active().ok_or_else(|| {
                ExecError::refused(format!(
                    "domain {domain}, disk {}: the disk has no image",
                    disk.target
                ))
            })?;
            let path = r
                .and_then(|r| r.file.clone())
                .unwrap_or_else(|| derived_path(&active.path, &req.name));
            check_new_image_path(domain, &disk.target, &path, &planned)?;
            if state.images.contains_key(&path) {
                return Err(ExecError::refused(format!(
                    "domain {domain}, disk {}: {path} is already recorded as an image of the journal",
                    disk.target
                )));
            }
            planned.insert(path.clone());
            steps.push(Step::CreateOverlay {
                disk: disk.target.clone(),
                path: path.clone(),
                backing: active.clone(),
            });
            let top = DiskTop {
                active: active.path.clone(),
                overlay: Some(path.clone()),
            };
            bitmap_ops.extend(switch_bitmap_ops(
                dom,
                &disk.target,
                &top,
                req.checkpoint.as_deref(),
            ));
            let overlay = ChainImage::qcow2(path.clone());
            let mut chain = vec![overlay.clone()];
            chain.extend(disk.chain.iter().cloned());
            changes.push(StateChange::DiskChainChanged {
                domain: domain.clone(),
                disk: disk.target.clone(),
                chain,
            });
            changes.push(StateChange::ImageCreated {
                image: ImageRecord {
                    path: path.clone(),
                    domain: domain.clone(),
                },
            });
            sources.insert(disk.target.clone(), overlay);
            snap_disks.push(SnapshotDisk {
                disk: disk.target.clone(),
                mode,
                overlay: Some(path.clone()),
                frozen: Some(active.clone()),
            });
            if let Some(live) = &live {
                let top_node = live
                    .get(&disk.target)
                    .and_then(|d| d.chain.first())
                    .map(|l| l.node.clone())
                    .unwrap_or_default();
                let overlay_node = crate::live::graph::format_node(&path);
                adds.push(Step::BlockdevAdd {
                    domain: domain.clone(),
                    disk: disk.target.clone(),
                    node: overlay_node.clone(),
                    path: path.clone(),
                });
                switches.push(LiveSwitch {
                    disk: disk.target.clone(),
                    top_node,
                    overlay_node,
                });
            }
            overlays.push((disk.target.clone(), path));
        }
        if let Some(uri) = &libvirt {
            // libvirt carries the recording bitmaps into the overlays
            // itself; a checkpoint in the same transaction it cannot take.
            if req.checkpoint.is_some() {
                return Err(ExecError::refused(format!(
                    "domain {domain} runs under libvirt, whose snapshot cannot take a checkpoint in the same step; take the snapshot, then `checkpoint create`"
                )));
            }
            let excluded = super::libvirt_ops::excluded_disks(dom, &overlays);
            steps.push(Step::LibvirtSnapshot {
                domain: domain.clone(),
                uri: uri.clone(),
                disks: overlays.clone(),
                excluded,
            });
        } else if live.is_some() {
            steps.extend(adds);
            steps.push(Step::LiveSnapshot {
                domain: domain.clone(),
                disks: switches,
                bitmaps: bitmap_ops.clone(),
            });
        } else {
            steps.extend(bitmap_ops.iter().map(|op| Step::Bitmap {
                domain: domain.clone(),
                op: op.clone(),
            }));
        }
        if overlays.is_empty() {
            return Err(ExecError::refused(format!(
                "snapshot {} of domain {domain} would include no disk",
                req.name
            )));
        }
        let new_xml = set_disk_sources(&format!("definition of domain {domain}"), &dom.core.xml, &sources)?;
        if let Some(cp) = &req.checkpoint {
            let creq = CheckpointRequest {
                domain: domain.clone(),
                name: cp.clone(),
                description: req.description.clone(),
                disks: Vec::new(),
            };
            let (checkpoint, domain_xml) = new_checkpoint_record(dom, &creq, &new_xml)?;
            changes.push(StateChange::CheckpointRecorded {
                domain: domain.clone(),
                checkpoint,
                domain_xml,
            });
        }
        changes.push(StateChange::DomainXmlSet {
            domain: domain.clone(),
            xml: new_xml,
        });
        changes.push(StateChange::SnapshotRecorded {
            domain: domain.clone(),
            snapshot: SnapshotRecord {
                name: req.name.clone(),
                description: req.description.clone(),
                creation_time: now_secs(),
                state: if running.is_some() || libvirt.is_some() {
                    "disk-snapshot"
                } else {
                    "shutoff"
                }
                .into(),
                parent: dom.core.current_snapshot.clone(),
                disks: snap_disks,
            },
            // The `<domain>` element alone, as the rendered XML carries it
            // (so a dumped snapshot redefines as identical).
            domain_xml: domain_element_text(&format!("definition of domain {domain}"), &dom.core.xml)?
                .to_string(),
        });
        changes.push(StateChange::CurrentSnapshotSet {
            domain: domain.clone(),
            snapshot: Some(req.name.clone()),
        });
        let commit_index = steps.len() as u32;
        steps.push(Step::SyncXml {
            domain: domain.clone(),
        });
        let plan = Plan {
            steps,
            commit_index,
            changes,
        };
        let txn = self.run(
            Intent::SnapshotCreate {
                domain: domain.clone(),
                snapshot: req.name.clone(),
            },
            plan,
            Some(dom),
        )?;
        Ok(CreateReport {
            txn,
            overlays,
            bitmap_changes: bitmap_ops.iter().map(|o| o.describe()).collect(),
        })
    }
}
