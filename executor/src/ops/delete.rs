//! `snapshot delete`: merge the snapshot's image with its single child
//! (block-commit or block-pull, whichever moves less data) after the commit
//! point, then remove what nothing references.

use std::collections::{BTreeMap, BTreeSet};

use journal::{
    BitmapAction, BitmapOp, ChainImage, DiskSnapshotMode, DomainState, Intent, LiveMerge, Plan, State,
    StateChange, Step, TxnId,
};

use super::{
    check_world_chains, collect_garbage, device_chains, live_graph, replace_image, require_defined,
    world_chain,
};
use crate::engine::Executor;
use crate::error::{ExecError, PlanError, Result};
use crate::live::graph::BlockGraph;

/// A delete request.
#[derive(Debug, Clone, Default)]
pub struct DeleteRequest {
    pub domain: String,
    pub snapshot: String,
    /// Delete the snapshot and all its descendants.
    pub children: bool,
    /// Drop metadata only; keep every image.
    pub metadata_only: bool,
}

/// How one disk's images were merged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MergeChoice {
    /// `top` was committed into `base` (`top_bytes` moved).
    Commit {
        disk: String,
        top: String,
        base: String,
        top_bytes: u64,
        base_bytes: u64,
    },
    /// `base`'s data was pulled into `top` (`base_bytes` moved).
    Pull {
        disk: String,
        top: String,
        base: String,
        top_bytes: u64,
        base_bytes: u64,
    },
    /// Nothing merged on `disk`: `base` (an image the user owns) stays
    /// below `top`, for `why`.
    Kept {
        disk: String,
        top: String,
        base: String,
        why: String,
    },
}

impl MergeChoice {
    /// One line a person can read.
    pub fn describe(&self) -> String {
        match self {
            MergeChoice::Commit { disk, top, base, top_bytes, base_bytes } => format!(
                "disk {disk}: commit {top} into {base} ({top_bytes} bytes to move; a pull would move {base_bytes})"
            ),
            MergeChoice::Pull { disk, top, base, top_bytes, base_bytes } => format!(
                "disk {disk}: pull {base} into {top} ({base_bytes} bytes to move; a commit would move {top_bytes})"
            ),
            MergeChoice::Kept { disk, top, base, why } => {
                format!("disk {disk}: nothing merged, {base} stays below {top} ({why})")
            }
        }
    }
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteReport {
    pub txn: TxnId,
    pub deleted: Vec<String>,
    pub merges: Vec<MergeChoice>,
    pub removed: Vec<String>,
    /// Images no longer referenced but kept (`--metadata-only`).
    pub released: Vec<String>,
    /// (image, bytes): shared images (the user's, never modified) that the
    /// domain no longer uses; snapjournal leaves them where they are.
    pub unused_shared: Vec<(String, u64)>,
}

/// Descendants of `name`, deepest first.
fn descendants(dom: &DomainState, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![name.to_string()];
    while let Some(n) = stack.pop() {
        for c in dom.snapshot_children(Some(&n)) {
            out.push(c.name.clone());
            stack.push(c.name.clone());
        }
    }
    out.reverse();
    out
}

impl Executor {
    /// The backing relation of every image a domain references:
    /// image → its backing image.
    fn image_graph(&self, dom: &DomainState) -> Result<BTreeMap<String, Option<ChainImage>>> {
        let mut backing: BTreeMap<String, Option<ChainImage>> = BTreeMap::new();
        fn add_chain(backing: &mut BTreeMap<String, Option<ChainImage>>, chain: &[ChainImage]) {
            for (i, img) in chain.iter().enumerate() {
                backing
                    .entry(img.path.clone())
                    .or_insert_with(|| chain.get(i + 1).cloned());
            }
        }
        for d in dom.core.disks.values() {
            add_chain(&mut backing, &d.chain);
        }
        // Many snapshots share frozen images: each chain is read once.
        let mut seen = BTreeSet::new();
        for s in dom.snapshots.values() {
            for sd in &s.disks {
                if let Some(f) = &sd.frozen {
                    if !seen.insert(f.path.as_str()) || backing.contains_key(&f.path) {
                        continue;
                    }
                    let chain = world_chain(&dom.core.name, &sd.disk, &f.path)?;
                    add_chain(&mut backing, &chain);
                }
            }
        }
        Ok(backing)
    }

    /// Turns the merges of an offline plan into QMP block jobs where they
    /// touch images the running QEMU holds: `block-commit` (active when
    /// the top is the active layer) or `block-stream`, each followed by the
    /// `blockdev-del` of the node that left the chain. Merges of images
    /// outside the running chains stay qemu-img steps.
    fn live_merge_steps(
        &self,
        dom: &DomainState,
        rt: &journal::Runtime,
        steps: Vec<Step>,
    ) -> Result<Vec<Step>> {
        let domain = &dom.core.name;
        let graph = live_graph(self, dom, rt)?;
        let devices = device_chains(dom, &graph, "the running QEMU")?;
        let vcpus_running = self
            .live()
            .with_qemu(rt, |q| q.running())
            .map_err(|e| ExecError::refused(format!("domain {domain}: {e}")))?
            .unwrap_or(false);
        let layer = |disk: &str, i: usize| -> Option<(ChainImage, String)> {
            let dev = devices.get(disk)?;
            let img = dom.core.disks.get(disk)?.chain.get(i)?.clone();
            Some((img, dev.chain.get(i)?.node.clone()))
        };
        let position = |disk: &str, path: &str| {
            devices
                .get(disk)
                .and_then(|d| d.chain.iter().position(|l| l.path == path))
        };
        let mut out = Vec::new();
        for step in steps {
            match &step {
                Step::CommitImage { disk, top, base } => {
                    if let Some(i) = position(disk, top) {
                        let (Some((top_img, top_node)), Some((base_img, base_node)), Some((_, device_node))) =
                            (layer(disk, i), layer(disk, i + 1), layer(disk, 0))
                        else {
                            return Err(ExecError::refused(format!(
                                "domain {domain}, disk {disk}: {top} has no base below it in QEMU"
                            )));
                        };
                        if &base_img.path != base {
                            return Err(ExecError::refused(format!(
                                "domain {domain}, disk {disk}: QEMU has {} below {top}, not {base}",
                                base_img.path
                            )));
                        }
                        let active = i == 0;
                        // After an active commit the base is the active
                        // image; otherwise the device's active image stays.
                        let into = if active {
                            base_img.path.clone()
                        } else {
                            layer(disk, 0).map(|(img, _)| img.path).unwrap_or_default()
                        };
                        out.push(Step::BlockJob {
                            domain: domain.clone(),
                            disk: disk.clone(),
                            merge: LiveMerge::Commit {
                                device_node,
                                top: top_img.clone(),
                                top_node: top_node.clone(),
                                base: base_img,
                                base_node,
                                active,
                            },
                        });
                        // With the vCPUs still stopped after the pivot: no
                        // guest write lands in the base before its bitmaps
                        // record.
                        out.extend(live_carry(&graph, domain, disk, &top_img.path, &into, active));
                        if active && vcpus_running {
                            out.push(Step::ResumeGuest {
                                domain: domain.clone(),
                            });
                        }
                        out.push(Step::BlockdevDel {
                            domain: domain.clone(),
                            node: top_node,
                        });
                        continue;
                    }
                }
                Step::RebaseImage {
                    disk,
                    image,
                    backing,
                    safe: true,
                } => {
                    if let Some(i) = position(disk, image) {
                        let (Some((top_img, top_node)), Some((dropped, dropped_node))) =
                            (layer(disk, i), layer(disk, i + 1))
                        else {
                            return Err(ExecError::refused(format!(
                                "domain {domain}, disk {disk}: {image} has no backing image in QEMU"
                            )));
                        };
                        let below_node = layer(disk, i + 2).map(|(_, n)| n);
                        let active = layer(disk, 0).map(|(img, _)| img.path).unwrap_or_default();
                        let carry = live_carry(&graph, domain, disk, &dropped.path, &active, false);
                        out.push(Step::BlockJob {
                            domain: domain.clone(),
                            disk: disk.clone(),
                            merge: LiveMerge::Stream {
                                top: top_img,
                                top_node,
                                dropped,
                                below: backing.clone(),
                                below_node,
                            },
                        });
                        out.extend(carry);
                        out.push(Step::BlockdevDel {
                            domain: domain.clone(),
                            node: dropped_node,
                        });
                        continue;
                    }
                }
                _ => {}
            }
            out.push(step);
        }
        Ok(out)
    }

    /// The steps that carry every bitmap of `from` into `into` when a merge
    /// folds `from` away (commit: `from` is the top and `into` its base,
    /// which takes over its recording bitmap; pull: `from` is the base), so
    /// the checkpoints' change tracking survives the merge. They run after
    /// the merge and before `from` is removed; an OR repeated is harmless.
    fn carry_bitmaps(
        &self,
        domain: &str,
        disk: &str,
        from: &str,
        into: &str,
        commit: bool,
    ) -> Result<Vec<Step>> {
        let source = self.images().bitmaps(from)?;
        if source.is_empty() {
            return Ok(Vec::new());
        }
        let target = self.images().bitmaps(into)?;
        let mut steps = Vec::new();
        let mut push = |action| {
            steps.push(Step::Bitmap {
                domain: domain.to_string(),
                op: BitmapOp {
                    disk: disk.to_string(),
                    image: into.to_string(),
                    action,
                },
            })
        };
        for b in &source {
            let recording = commit && b.enabled;
            match target.iter().find(|t| t.name == b.name) {
                None => push(BitmapAction::Add {
                    name: b.name.clone(),
                    enabled: recording,
                }),
                Some(t) if recording && !t.enabled => push(BitmapAction::Enable { name: b.name.clone() }),
                Some(_) => {}
            }
            push(BitmapAction::MergeFrom {
                source_image: from.to_string(),
                source: b.name.clone(),
                target: b.name.clone(),
            });
        }
        Ok(steps)
    }

    /// Deletes a snapshot (of a running domain: through QMP block jobs).
    pub fn snapshot_delete(&self, req: &DeleteRequest) -> Result<DeleteReport> {
        let state = self.journal().state()?;
        let dom = require_defined(&state, &req.domain)?;
        let domain = &req.domain;
        let snap = dom.snapshots.get(&req.snapshot).ok_or_else(|| {
            ExecError::from(PlanError::NoSuchSnapshot {
                domain: domain.to_string(),
                snapshot: req.snapshot.to_string(),
            })
        })?;
        let mut doomed = vec![snap.name.clone()];
        if req.children {
            doomed = descendants(dom, &snap.name);
            doomed.push(snap.name.clone());
        }
        let doomed_set: BTreeSet<&str> = doomed.iter().map(String::as_str).collect();
        // A domain libvirt runs merges through libvirt's block jobs.
        let libvirt = match self.libvirt_state(domain)? {
            Some((uri, true)) if !req.metadata_only => Some(uri),
            _ => None,
        };
        if let Some(uri) = &libvirt {
            super::libvirt_ops::check_live_chains(self, dom, uri)?;
        }
        let mut changes = Vec::new();
        let mut steps = Vec::new();
        let mut merges = Vec::new();
        // Merges carry the checkpoints' bitmaps along (below: through
        // qemu-img, or QMP for a running domain). A subtree removal merges
        // nothing and removes only images no chain uses any more: the
        // checkpoints' bitmaps lie in the disks' chains (a revert removes
        // the checkpoints whose bitmaps its new chain lacks), so they stay.
        if !req.metadata_only {
            check_world_chains(dom)?;
        }
        if !req.metadata_only && !req.children {
            let graph = self.image_graph(dom)?;
            // The domain as the merges planned so far change it (only this
            // domain: planning never copies the rest of the state).
            let mut working = State {
                domains: std::iter::once((domain.clone(), dom.clone())).collect(),
                images: Default::default(),
            };
            let mut touched = BTreeSet::new();
            // The snapshots' historic definitions, as the merges planned so
            // far rewrite them.
            let mut historic = self.journal().snapshot_domain_xmls(domain)?;
            // Bitmaps are carried through the merges while checkpoints
            // track changes (reading them costs a qemu-img call per image).
            // A running QEMU's images are carried through QMP instead
            // (`live_merge_steps`): the files do not show what it holds.
            // libvirt carries the bitmaps through its own block commits.
            let running_images: BTreeSet<&str> = if dom.core.runtime.is_some() || libvirt.is_some() {
                dom.core
                    .disks
                    .values()
                    .flat_map(|d| d.chain.iter().map(|c| c.path.as_str()))
                    .collect()
            } else {
                BTreeSet::new()
            };
            let tracked_offline = |a: &str, b: &str| {
                !dom.checkpoints.is_empty() && !running_images.contains(a) && !running_images.contains(b)
            };
            for sd in &snap.disks {
                if sd.mode != DiskSnapshotMode::External {
                    continue;
                }
                let Some(frozen) = &sd.frozen else { continue };
                // Another snapshot that stays freezes the same image (two
                // redefined documents may name one image): it must stay as
                // it is, so nothing is merged on this disk.
                let shared_freeze = dom.snapshots.values().any(|o| {
                    !doomed_set.contains(o.name.as_str())
                        && o.disks.iter().any(|d| {
                            d.disk == sd.disk && d.frozen.as_ref().is_some_and(|f| f.path == frozen.path)
                        })
                });
                if shared_freeze {
                    continue;
                }
                let kids: Vec<&String> = graph
                    .iter()
                    .filter(|(_, b)| b.as_ref().map(|b| b.path.as_str()) == Some(frozen.path.as_str()))
                    .map(|(k, _)| k)
                    .collect();
                if kids.len() > 1 {
                    return Err(ExecError::refused(format!(
                        "snapshot {} of domain {domain}: image {} of disk {} backs {} alternate histories ({}); delete with --children to remove the whole subtree",
                        snap.name,
                        frozen.path,
                        sd.disk,
                        kids.len(),
                        kids.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
                let Some(top) = kids.first().map(|k| k.to_string()) else {
                    continue;
                };
                let owned_base = state.images.contains_key(&frozen.path);
                let owned_top = state.images.contains_key(&top);
                if !owned_top {
                    return Err(ExecError::refused(format!(
                        "snapshot {} of domain {domain}, disk {}: merging would modify {top}, an image snapjournal did not create (redefine the snapshots with --adopt-images to make their overlays the domain's, or use --metadata-only)",
                        snap.name, sd.disk
                    )));
                }
                let top_bytes = self.images().allocated_bytes(&top, "qcow2")?;
                let base_bytes = self.images().allocated_bytes(&frozen.path, &frozen.format)?;
                // libvirt pulls only into a disk's active image: below it a
                // running libvirt domain's merge is a commit whatever the
                // sizes, and with the base the user's, the chain stays as
                // it is on this disk.
                let active = dom
                    .core
                    .disks
                    .get(&sd.disk)
                    .and_then(|d| d.active())
                    .map(|a| a.path.as_str());
                let pull_impossible = libvirt.is_some() && active != Some(top.as_str());
                let commit = owned_base && (top_bytes <= base_bytes || pull_impossible);
                if pull_impossible && !owned_base {
                    merges.push(MergeChoice::Kept {
                        disk: sd.disk.clone(),
                        top: top.clone(),
                        base: frozen.path.clone(),
                        why: "the base is yours, and libvirt cannot pull it into an image below the running domain's active one".into(),
                    });
                    continue;
                }
                if commit {
                    // block-commit: top's data into the base; top's children
                    // are re-pointed at the base, top goes away.
                    steps.push(Step::CommitImage {
                        disk: sd.disk.clone(),
                        top: top.clone(),
                        base: frozen.path.clone(),
                    });
                    for (child, b) in &graph {
                        if b.as_ref().map(|b| b.path.as_str()) == Some(top.as_str()) {
                            steps.push(Step::RebaseImage {
                                disk: sd.disk.clone(),
                                image: child.clone(),
                                backing: Some(frozen.clone()),
                                safe: false,
                            });
                        }
                    }
                    if tracked_offline(&top, &frozen.path) {
                        steps.extend(self.carry_bitmaps(domain, &sd.disk, &top, &frozen.path, true)?);
                    }
                    let c = replace_image(
                        working.domains.get(domain).unwrap_or(dom),
                        &mut historic,
                        &top,
                        frozen,
                    )?;
                    c.iter().for_each(|x| working.apply(x, &mut touched));
                    changes.extend(c);
                    merges.push(MergeChoice::Commit {
                        disk: sd.disk.clone(),
                        top: top.clone(),
                        base: frozen.path.clone(),
                        top_bytes,
                        base_bytes,
                    });
                } else {
                    // block-pull: the base's data into top, which then
                    // stands on the base's backing file.
                    let below = graph.get(&frozen.path).cloned().flatten();
                    // The copy is no guest write: top's recording bitmaps
                    // are paused across it (offline, nothing else writes).
                    let paused: Vec<String> = if tracked_offline(&top, &frozen.path) {
                        self.images()
                            .bitmaps(&top)?
                            .into_iter()
                            .filter(|b| b.enabled)
                            .map(|b| b.name)
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let toggle = |action: fn(String) -> BitmapAction| -> Vec<Step> {
                        paused
                            .iter()
                            .map(|name| Step::Bitmap {
                                domain: domain.clone(),
                                op: BitmapOp {
                                    disk: sd.disk.clone(),
                                    image: top.clone(),
                                    action: action(name.clone()),
                                },
                            })
                            .collect()
                    };
                    steps.extend(toggle(|name| BitmapAction::Disable { name }));
                    steps.push(Step::RebaseImage {
                        disk: sd.disk.clone(),
                        image: top.clone(),
                        backing: below,
                        safe: true,
                    });
                    steps.extend(toggle(|name| BitmapAction::Enable { name }));
                    if tracked_offline(&top, &frozen.path) && frozen.format == "qcow2" {
                        steps.extend(self.carry_bitmaps(domain, &sd.disk, &frozen.path, &top, false)?);
                    }
                    let c = replace_image(
                        working.domains.get(domain).unwrap_or(dom),
                        &mut historic,
                        &frozen.path,
                        &ChainImage::qcow2(top.clone()),
                    )?;
                    c.iter().for_each(|x| working.apply(x, &mut touched));
                    changes.extend(c);
                    merges.push(MergeChoice::Pull {
                        disk: sd.disk.clone(),
                        top: top.clone(),
                        base: frozen.path.clone(),
                        top_bytes,
                        base_bytes,
                    });
                }
            }
        }
        if let Some(rt) = &dom.core.runtime {
            steps = self.live_merge_steps(dom, rt, steps)?;
        }
        if let Some(uri) = &libvirt {
            steps = super::libvirt_ops::merge_steps(self, dom, uri, steps)?;
        }
        // Metadata: remove the doomed snapshots, re-parent the survivors.
        for name in &doomed {
            changes.push(StateChange::SnapshotRemoved {
                domain: domain.clone(),
                snapshot: name.clone(),
            });
        }
        for s in dom.snapshots.values() {
            if !doomed_set.contains(s.name.as_str()) && s.parent.as_deref() == Some(snap.name.as_str()) {
                changes.push(StateChange::SnapshotReparented {
                    domain: domain.clone(),
                    snapshot: s.name.clone(),
                    parent: snap.parent.clone(),
                });
            }
        }
        if let Some(cur) = &dom.core.current_snapshot {
            if doomed_set.contains(cur.as_str()) {
                changes.push(StateChange::CurrentSnapshotSet {
                    domain: domain.clone(),
                    snapshot: snap.parent.clone(),
                });
            }
        }
        if !req.metadata_only {
            self.check_free_space(domain, &snap.name, &merges)?;
        }
        let commit_index = 0;
        let garbage = collect_garbage(&state, domain, &mut changes, &mut steps, req.metadata_only);
        let gone = garbage.removed;
        let unused_shared = garbage
            .shared
            .into_iter()
            .map(|p| {
                let bytes = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, bytes)
            })
            .collect();
        let (removed, released) = if req.metadata_only {
            (vec![], gone)
        } else {
            (gone, vec![])
        };
        steps.push(Step::SyncXml {
            domain: domain.clone(),
        });
        let plan = Plan {
            steps,
            commit_index,
            changes,
        };
        let txn = self.run(
            Intent::SnapshotDelete {
                domain: domain.clone(),
                snapshot: snap.name.clone(),
                children: req.children,
                metadata_only: req.metadata_only,
            },
            plan,
            Some(dom),
        )?;
        Ok(DeleteReport {
            txn,
            deleted: doomed,
            merges,
            removed,
            released,
            unused_shared,
        })
    }

    /// Refuses merges whose worst-case growth does not fit: each merge may
    /// grow the image it writes into by the data it moves (plus qcow2's
    /// tables, counted as 1/64 of it), summed per filesystem and compared
    /// with the space free there (ENOSPC is the most common failed merge).
    fn check_free_space(&self, domain: &str, snapshot: &str, merges: &[MergeChoice]) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut need: BTreeMap<u64, (String, u64)> = BTreeMap::new();
        for m in merges {
            let (into, moved) = match m {
                MergeChoice::Commit { base, top_bytes, .. } => (base, *top_bytes),
                MergeChoice::Pull { top, base_bytes, .. } => (top, *base_bytes),
                MergeChoice::Kept { .. } => continue,
            };
            let dir = std::path::Path::new(into)
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| ".".into());
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let e = need
                .entry(meta.dev())
                .or_insert_with(|| (dir.display().to_string(), 0));
            e.1 += moved + moved / 64;
        }
        for (dir, bytes) in need.values() {
            let free = free_bytes(dir).map_err(|e| {
                ExecError::refused(format!(
                    "domain {domain}: cannot read the free space of {dir} ({e})"
                ))
            })?;
            if *bytes > free {
                return Err(ExecError::refused(format!(
                    "domain {domain}: deleting snapshot {snapshot} merges up to {} into images on the filesystem of {dir}, which has {} free; free some space (or delete with --metadata-only)",
                    human_bytes(*bytes),
                    human_bytes(free)
                )));
            }
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still allocate on the filesystem of
/// `dir` (`statvfs`).
fn free_bytes(dir: &str) -> std::io::Result<u64> {
    let c =
        std::ffi::CString::new(dir).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// `4.2 GiB`, `512.0 KiB`, `17 B`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The step that carries the bitmaps of `from`, which a block job folds out
/// of a running chain, into `into`, the device's active image afterwards
/// (QEMU opens backing images read-only, so the active image is the one
/// that can take them; a checkpoint's changes are the union of its bitmaps
/// along the chain, wherever they lie). `commit_active`: `from` was the
/// active image, and its recording bitmap records in `into` from now on.
/// `None` when `from` holds no persistent bitmap; bitmaps QEMU reports
/// inconsistent cannot be merged and are left to fsck.
fn live_carry(
    graph: &BlockGraph,
    domain: &str,
    disk: &str,
    from: &str,
    into: &str,
    commit_active: bool,
) -> Option<Step> {
    let node = graph.format_node_of(from)?;
    let source = graph.bitmaps.get(node)?;
    let target = graph
        .format_node_of(into)
        .and_then(|n| graph.bitmaps.get(n))
        .cloned()
        .unwrap_or_default();
    let op = |action| BitmapOp {
        disk: disk.to_string(),
        image: into.to_string(),
        action,
    };
    let mut ops = Vec::new();
    for b in source.iter().filter(|b| b.persistent && !b.inconsistent) {
        let recording = commit_active && b.recording;
        match target.iter().find(|t| t.name == b.name) {
            None => ops.push(op(BitmapAction::Add {
                name: b.name.clone(),
                enabled: recording,
            })),
            Some(t) if recording && !t.recording => {
                ops.push(op(BitmapAction::Enable { name: b.name.clone() }))
            }
            Some(_) => {}
        }
        ops.push(op(BitmapAction::MergeFrom {
            source_image: from.to_string(),
            source: b.name.clone(),
            target: b.name.clone(),
        }));
    }
    (!ops.is_empty()).then(|| Step::LiveBitmapCarry {
        domain: domain.to_string(),
        disk: disk.to_string(),
        from: from.to_string(),
        ops,
    })
}
