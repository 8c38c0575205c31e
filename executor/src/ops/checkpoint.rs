//! Checkpoints: a persistent dirty bitmap per disk that records which
//! clusters the guest wrote since the checkpoint (for incremental backup).
//!
//! The bitmaps form a chain per disk, as libvirt keeps them: only the
//! newest checkpoint's bitmap records writes; creating a checkpoint disables
//! the previous one and adds the new one, so the changes since checkpoint C
//! are the union of C's bitmap and every later one. Deleting C merges its
//! bitmap into its nearest ancestor's on each disk (enabling the ancestor's
//! if C's was the recording one), so the remaining checkpoints stay right.
//! A snapshot carries the recording bitmap into the new overlay (added
//! there, disabled in the image below) so writes after the snapshot are
//! still tracked.

use std::collections::BTreeMap;

use journal::{
    BitmapAction, BitmapOp, CheckpointRecord, DomainState, Intent, Plan, StateChange, Step, TxnId,
};

use super::{check_world_chains, device_chains, now_secs, require_defined};
use crate::engine::Executor;
use crate::error::{ExecError, PlanError, Result};
use crate::live::graph::BlockGraph;
use crate::names::validate_name;
use crate::xml::domain::domain_element_text;
use crate::xml::tree::escape;

/// A checkpoint-create request.
#[derive(Debug, Clone, Default)]
pub struct CheckpointRequest {
    pub domain: String,
    pub name: String,
    pub description: Option<String>,
    /// Per-disk choices (`true`: a bitmap, `false`: `checkpoint='no'`);
    /// disks not listed get a bitmap.
    pub disks: Vec<(String, bool)>,
}

/// What a checkpoint create or delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointReport {
    pub txn: TxnId,
    /// One line per bitmap change, in order.
    pub bitmap_changes: Vec<String>,
}

/// Where the bitmap work of a new checkpoint or a snapshot happens, per
/// disk: the active image now, and the overlay a snapshot puts on it.
#[derive(Debug, Clone)]
pub(crate) struct DiskTop {
    pub active: String,
    pub overlay: Option<String>,
}

/// The bitmap changes on one disk when a checkpoint is taken (`new_bitmap`)
/// and/or a snapshot puts an overlay on it: the new bitmap (or the carried
/// recording one) is added where writes will land, and the bitmap that
/// recorded until now is disabled.
pub(crate) fn switch_bitmap_ops(
    dom: &DomainState,
    disk: &str,
    top: &DiskTop,
    new_bitmap: Option<&str>,
) -> Vec<BitmapOp> {
    let recording = dom
        .newest_checkpoint(Some(disk))
        .and_then(|c| c.bitmap_on(disk))
        .map(str::to_string);
    let op = |image: &str, action| BitmapOp {
        disk: disk.to_string(),
        image: image.to_string(),
        action,
    };
    let target = top.overlay.as_deref().unwrap_or(&top.active);
    let added = match (new_bitmap, &top.overlay) {
        (Some(b), _) => Some(b.to_string()),
        (None, Some(_)) => recording.clone(),
        (None, None) => None,
    };
    let Some(added) = added else { return Vec::new() };
    let mut ops = vec![op(
        target,
        BitmapAction::Add {
            name: added,
            enabled: true,
        },
    )];
    if let Some(r) = recording {
        ops.push(op(&top.active, BitmapAction::Disable { name: r }));
    }
    ops
}

/// Checks a new checkpoint request and builds its record (parent: the
/// newest checkpoint) with one bitmap per chosen disk, named after it, and
/// its historic `<domain>`.
pub(crate) fn new_checkpoint_record(
    dom: &DomainState,
    req: &CheckpointRequest,
    domain_xml: &str,
) -> Result<(CheckpointRecord, String)> {
    validate_name("checkpoint", &req.name)?;
    // The `<domain>` element alone, as the rendered XML carries it (so a
    // dumped checkpoint redefines as identical).
    let domain_xml =
        domain_element_text(&format!("definition of domain {}", dom.core.name), domain_xml)?.to_string();
    let domain = &dom.core.name;
    if dom.checkpoints.contains_key(&req.name) {
        return Err(PlanError::CheckpointExists {
            domain: domain.to_string(),
            checkpoint: req.name.clone(),
        }
        .into());
    }
    let mut chosen: BTreeMap<&str, bool> = BTreeMap::new();
    for (disk, bitmap) in &req.disks {
        if !dom.core.disks.contains_key(disk) {
            if let Some(o) = crate::xml::domain::other_disk(&dom.core.xml, disk) {
                if !*bitmap {
                    continue;
                }
                return Err(ExecError::refused(format!(
                    "disk {disk} of domain {domain} is {}; checkpoints keep bitmaps in qcow2 disks only (exclude it with --diskspec {disk},checkpoint=no)",
                    o.kind
                )));
            }
            return Err(ExecError::refused(format!(
                "domain {domain} has no disk {disk} (it has: {})",
                dom.core.disks.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if chosen.insert(disk, *bitmap).is_some() {
            return Err(ExecError::refused(format!("disk {disk} is given twice")));
        }
    }
    let disks: Vec<(String, String)> = dom
        .core
        .disks
        .keys()
        .map(|d| {
            let on = chosen.get(d.as_str()).copied().unwrap_or(true);
            (d.clone(), if on { req.name.clone() } else { String::new() })
        })
        .collect();
    if disks.iter().all(|(_, b)| b.is_empty()) {
        return Err(ExecError::refused(format!(
            "checkpoint {} of domain {domain} would cover no disk",
            req.name
        )));
    }
    let record = CheckpointRecord {
        name: req.name.clone(),
        description: req.description.clone(),
        creation_time: now_secs(),
        parent: dom.newest_checkpoint(None).map(|c| c.name.clone()),
        disks,
    };
    Ok((record, domain_xml))
}

/// The bitmaps each image holds: (name, recording).
type ImageBitmaps = BTreeMap<String, Vec<(String, bool)>>;

impl Executor {
    /// The bitmaps of the images of the domain's chains (`active_only`:
    /// of each active image): from QEMU's graph when it runs, else from the
    /// images (a qemu-img call each).
    fn chain_bitmaps(
        &self,
        dom: &DomainState,
        graph: Option<&BlockGraph>,
        active_only: bool,
    ) -> Result<ImageBitmaps> {
        let mut out = BTreeMap::new();
        for disk in dom.core.disks.values() {
            let images = if active_only {
                &disk.chain[..disk.chain.len().min(1)]
            } else {
                &disk.chain[..]
            };
            for image in images {
                let list = match graph {
                    Some(g) => g
                        .format_node_of(&image.path)
                        .and_then(|n| g.bitmaps.get(n))
                        .map(|l| l.iter().map(|b| (b.name.clone(), b.recording)).collect())
                        .unwrap_or_default(),
                    None if image.format == "qcow2" => self
                        .images()
                        .bitmaps(&image.path)?
                        .into_iter()
                        .map(|b| (b.name, b.enabled))
                        .collect(),
                    None => Vec::new(),
                };
                out.insert(image.path.clone(), list);
            }
        }
        Ok(out)
    }

    fn graph_of(&self, dom: &DomainState) -> Result<Option<BlockGraph>> {
        let Some(rt) = &dom.core.runtime else {
            return Ok(None);
        };
        // One read of QEMU's graph: the chains are checked on it.
        let name = &dom.core.name;
        let graph = self
            .live()
            .with_qemu(rt, BlockGraph::read)
            .map_err(|e| ExecError::refused(format!("domain {name}: {e}")))?
            .ok_or_else(|| {
                ExecError::refused(format!(
                    "domain {name}: its QEMU is gone; run `snapjournal recover`"
                ))
            })?;
        device_chains(dom, &graph, "the running QEMU")?;
        Ok(Some(graph))
    }

    /// Takes a checkpoint: a new persistent dirty bitmap on each chosen
    /// disk's active image. Offline through qemu-img; on a running domain as
    /// ONE QMP transaction (the commit point).
    pub fn checkpoint_create(&self, req: &CheckpointRequest) -> Result<CheckpointReport> {
        let state = self.journal().state()?;
        let dom = require_defined(&state, &req.domain)?;
        let domain = &req.domain;
        if let Some((uri, true)) = self.libvirt_state(domain)? {
            return self.checkpoint_create_libvirt(req, dom, &uri);
        }
        let (record, domain_xml) = new_checkpoint_record(dom, req, &dom.core.xml)?;
        let graph = self.graph_of(dom)?;
        if graph.is_none() {
            check_world_chains(dom)?;
        }
        let present = self.chain_bitmaps(dom, graph.as_ref(), true)?;
        let mut ops = Vec::new();
        for (disk, bitmap) in record.bitmaps() {
            let active = dom.core.disks[disk].active().ok_or_else(|| {
                ExecError::refused(format!("domain {domain}, disk {disk}: the disk has no image"))
            })?;
            if active.format != "qcow2" {
                return Err(ExecError::refused(format!(
                    "domain {domain}, disk {disk}: {} is {}; bitmaps need qcow2",
                    active.path, active.format
                )));
            }
            if present
                .get(&active.path)
                .is_some_and(|l| l.iter().any(|(n, _)| n == bitmap))
            {
                return Err(ExecError::refused(format!(
                    "domain {domain}, disk {disk}: {} already holds a bitmap called {bitmap}",
                    active.path
                )));
            }
            let top = DiskTop {
                active: active.path.clone(),
                overlay: None,
            };
            ops.extend(switch_bitmap_ops(dom, disk, &top, Some(bitmap)));
        }
        let mut steps: Vec<Step> = if graph.is_some() {
            vec![Step::LiveSnapshot {
                domain: domain.clone(),
                disks: Vec::new(),
                bitmaps: ops.clone(),
            }]
        } else {
            ops.iter()
                .map(|op| Step::Bitmap {
                    domain: domain.clone(),
                    op: op.clone(),
                })
                .collect()
        };
        let commit_index = steps.len() as u32;
        steps.push(Step::SyncXml {
            domain: domain.clone(),
        });
        let plan = Plan {
            steps,
            commit_index,
            changes: vec![StateChange::CheckpointRecorded {
                domain: domain.clone(),
                checkpoint: record,
                domain_xml,
            }],
        };
        let txn = self.run(
            Intent::CheckpointCreate {
                domain: domain.clone(),
                checkpoint: req.name.clone(),
            },
            plan,
            Some(dom),
        )?;
        Ok(CheckpointReport {
            txn,
            bitmap_changes: ops.iter().map(BitmapOp::describe).collect(),
        })
    }

    /// Deletes a checkpoint. Its bitmap on each disk is merged into the
    /// nearest ancestor's (renamed to it in images that hold only the
    /// checkpoint's), the ancestor's enabled if the checkpoint's was
    /// recording, and removed. The metadata goes first (the commit point);
    /// the bitmap changes only roll forward. `metadata_only` leaves the
    /// bitmaps.
    pub fn checkpoint_delete(
        &self,
        domain: &str,
        name: &str,
        metadata_only: bool,
    ) -> Result<CheckpointReport> {
        let libvirt = match self.libvirt_state(domain)? {
            Some((uri, true)) if !metadata_only => Some(uri),
            _ => None,
        };
        let state = self.journal().state()?;
        let dom = require_defined(&state, domain)?;
        let cp = dom.checkpoints.get(name).ok_or_else(|| {
            ExecError::from(PlanError::NoSuchCheckpoint {
                domain: domain.to_string(),
                checkpoint: name.to_string(),
            })
        })?;
        let mut changes = vec![StateChange::CheckpointRemoved {
            domain: domain.to_string(),
            checkpoint: name.to_string(),
        }];
        for child in dom
            .checkpoints
            .values()
            .filter(|c| c.parent.as_deref() == Some(name))
        {
            let mut moved = child.clone();
            moved.parent = cp.parent.clone();
            let domain_xml = crate::metadata::checkpoint_historic(self.journal(), domain, &child.name)?;
            changes.push(StateChange::CheckpointRecorded {
                domain: domain.to_string(),
                checkpoint: moved,
                domain_xml,
            });
        }
        if let Some(uri) = &libvirt {
            return self.checkpoint_delete_libvirt(dom, cp, uri, changes);
        }
        let mut ops = Vec::new();
        let graph = if metadata_only { None } else { self.graph_of(dom)? };
        if !metadata_only {
            let present = self.chain_bitmaps(dom, graph.as_ref(), false)?;
            for (disk, bitmap) in cp.bitmaps() {
                let Some(state_disk) = dom.core.disks.get(disk) else {
                    continue;
                };
                let ancestor = dom
                    .checkpoint_ancestor_on(name, disk)
                    .and_then(|a| a.bitmap_on(disk))
                    .map(str::to_string);
                for (i, image) in state_disk.chain.iter().enumerate() {
                    let list = present.get(&image.path).map(Vec::as_slice).unwrap_or_default();
                    let Some((_, recording)) = list.iter().find(|(n, _)| n == bitmap) else {
                        continue;
                    };
                    if graph.is_some() && i > 0 {
                        return Err(ExecError::refused(format!(
                            "domain {domain}, disk {disk}: the bitmap {bitmap} of checkpoint {name} lies in {}, a read-only backing image of the running QEMU; stop the domain (`domain stop`) and delete the checkpoint then",
                            image.path
                        )));
                    }
                    let op = |action| BitmapOp {
                        disk: disk.to_string(),
                        image: image.path.clone(),
                        action,
                    };
                    if let Some(p) = &ancestor {
                        match list.iter().find(|(n, _)| n == p) {
                            None => ops.push(op(BitmapAction::Add {
                                name: p.clone(),
                                enabled: *recording,
                            })),
                            Some((_, false)) if *recording => {
                                ops.push(op(BitmapAction::Enable { name: p.clone() }))
                            }
                            Some(_) => {}
                        }
                        ops.push(op(BitmapAction::Merge {
                            source: bitmap.to_string(),
                            target: p.clone(),
                        }));
                    }
                    ops.push(op(BitmapAction::Remove {
                        name: bitmap.to_string(),
                    }));
                }
            }
        }
        let mut steps = Vec::new();
        if !ops.is_empty() {
            if graph.is_some() {
                steps.push(Step::LiveBitmaps {
                    domain: domain.to_string(),
                    ops: ops.clone(),
                });
            } else {
                steps.extend(ops.iter().map(|op| Step::Bitmap {
                    domain: domain.to_string(),
                    op: op.clone(),
                }));
            }
        }
        steps.push(Step::SyncXml {
            domain: domain.to_string(),
        });
        let plan = Plan {
            steps,
            commit_index: 0,
            changes,
        };
        let txn = self.run(
            Intent::CheckpointDelete {
                domain: domain.to_string(),
                checkpoint: name.to_string(),
                metadata_only,
            },
            plan,
            Some(dom),
        )?;
        Ok(CheckpointReport {
            txn,
            bitmap_changes: ops.iter().map(BitmapOp::describe).collect(),
        })
    }

    /// A checkpoint of a running domain libvirt runs, taken through
    /// libvirt's checkpoint API (the commit point). libvirt names each
    /// bitmap after the checkpoint and leaves the older bitmaps recording.
    fn checkpoint_create_libvirt(
        &self,
        req: &CheckpointRequest,
        dom: &DomainState,
        uri: &str,
    ) -> Result<CheckpointReport> {
        let domain = &req.domain;
        super::libvirt_ops::check_live_chains(self, dom, uri)?;
        let (record, domain_xml) = new_checkpoint_record(dom, req, &dom.core.xml)?;
        let mut xml = format!("<domaincheckpoint>\n  <name>{}</name>\n", escape(&record.name));
        if let Some(d) = &record.description {
            xml.push_str(&format!("  <description>{}</description>\n", escape(d)));
        }
        xml.push_str("  <disks>\n");
        let mut covered = Vec::new();
        for (disk, bitmap) in &record.disks {
            covered.push((disk.clone(), String::new()));
            if bitmap.is_empty() {
                xml.push_str(&format!("    <disk name='{}' checkpoint='no'/>\n", escape(disk)));
            } else if *bitmap != record.name {
                return Err(ExecError::refused(format!(
                    "domain {domain}, disk {disk}: libvirt names a checkpoint's bitmap after the checkpoint ({}), not {bitmap}",
                    record.name
                )));
            } else {
                xml.push_str(&format!(
                    "    <disk name='{}' checkpoint='bitmap' bitmap='{}'/>\n",
                    escape(disk),
                    escape(bitmap)
                ));
            }
        }
        for other in super::libvirt_ops::excluded_disks(dom, &covered) {
            xml.push_str(&format!(
                "    <disk name='{}' checkpoint='no'/>\n",
                escape(&other)
            ));
        }
        xml.push_str("  </disks>\n</domaincheckpoint>\n");
        let changes: Vec<String> = record
            .bitmaps()
            .map(|(d, b)| format!("add bitmap {b} (recording) on disk {d} through libvirt"))
            .collect();
        let plan = Plan {
            steps: vec![
                Step::LibvirtCheckpoint {
                    domain: domain.clone(),
                    uri: uri.to_string(),
                    name: record.name.clone(),
                    xml,
                },
                Step::SyncXml {
                    domain: domain.clone(),
                },
            ],
            commit_index: 1,
            changes: vec![StateChange::CheckpointRecorded {
                domain: domain.clone(),
                checkpoint: record,
                domain_xml,
            }],
        };
        let txn = self.run(
            Intent::CheckpointCreate {
                domain: domain.clone(),
                checkpoint: req.name.clone(),
            },
            plan,
            Some(dom),
        )?;
        Ok(CheckpointReport {
            txn,
            bitmap_changes: changes,
        })
    }

    /// Deletes a checkpoint of a running domain libvirt runs through
    /// libvirt, which removes its bitmaps without merging them: allowed
    /// only where the nearest older checkpoint's bitmap on each disk still
    /// records (it then holds every change the deleted one held, as
    /// libvirt's own checkpoints do); otherwise refused.
    fn checkpoint_delete_libvirt(
        &self,
        dom: &DomainState,
        cp: &CheckpointRecord,
        uri: &str,
        changes: Vec<StateChange>,
    ) -> Result<CheckpointReport> {
        let domain = &dom.core.name;
        let name = &cp.name;
        if dom
            .core
            .disks
            .keys()
            .any(|t| !matches!(self.libvirt().job(uri, domain, t), Ok(None)))
        {
            return Err(ExecError::refused(format!(
                "domain {domain}: a block job runs in libvirt; delete checkpoint {name} once it ended"
            )));
        }
        let graph = self
            .libvirt()
            .block_graph(uri, domain)
            .map_err(|e| ExecError::refused(e.to_string()))?;
        for (disk, _) in cp.bitmaps() {
            let Some(ancestor) = dom
                .checkpoint_ancestor_on(name, disk)
                .and_then(|a| a.bitmap_on(disk))
            else {
                continue;
            };
            let chain = dom
                .core
                .disks
                .get(disk)
                .map(|d| d.chain.as_slice())
                .unwrap_or_default();
            let recording = chain.iter().any(|img| {
                graph
                    .format_node_of(&img.path)
                    .and_then(|n| graph.bitmaps.get(n))
                    .is_some_and(|l| l.iter().any(|b| b.name == ancestor && b.recording))
            });
            if !recording {
                return Err(ExecError::refused(format!(
                    "domain {domain}, disk {disk}: deleting checkpoint {name} means merging its bitmap into {ancestor}'s, which no longer records; libvirt cannot merge bitmaps of a running domain: shut it down to delete the checkpoint (or use --metadata-only)"
                )));
            }
        }
        let plan = Plan {
            steps: vec![
                Step::LibvirtCheckpointDelete {
                    domain: domain.clone(),
                    uri: uri.to_string(),
                    name: name.clone(),
                },
                Step::SyncXml {
                    domain: domain.clone(),
                },
            ],
            commit_index: 0,
            changes,
        };
        let txn = self.run(
            Intent::CheckpointDelete {
                domain: domain.clone(),
                checkpoint: name.clone(),
                metadata_only: false,
            },
            plan,
            Some(dom),
        )?;
        Ok(CheckpointReport {
            txn,
            bitmap_changes: cp
                .bitmaps()
                .map(|(d, b)| format!("remove bitmap {b} on disk {d} through libvirt"))
                .collect(),
        })
    }
}
