//! `checkpoint redefine`: import many full `<domaincheckpoint>` documents
//! (each with its historic `<domain>`), validated as a whole against each
//! other, the defined checkpoints and the bitmaps really in the images, and
//! applied as ONE transaction, all or nothing. The bitmaps are the user's:
//! nothing in the images changes.

use std::collections::{BTreeMap, BTreeSet};

use journal::{CheckpointRecord, DomainState, Intent, Plan, StateChange, Step};

use super::redefine::RedefineReport;
use super::{now_secs, require_defined};
use crate::engine::Executor;
use crate::error::{ExecError, Result};
use crate::names::validate_name;
use crate::xml::checkpoint::parse_checkpoint;
use crate::xml::domain::parse_domain;

/// Builds the checkpoint record a document describes.
/// A checkpoint read from a redefine document: where it came from, its
/// record and its historic `<domain>`.
struct Incoming {
    origin: String,
    record: CheckpointRecord,
    domain_xml: String,
}

fn record_from_xml(dom: &DomainState, origin: &str, xml: &str) -> Result<(CheckpointRecord, String)> {
    let domain = &dom.core.name;
    let p = parse_checkpoint(origin, xml)?;
    let name = p
        .name
        .clone()
        .ok_or_else(|| ExecError::refused(format!("{origin}: the checkpoint has no <name>")))?;
    validate_name(&format!("checkpoint (in {origin})"), &name)?;
    let historic = p.domain_xml.clone().ok_or_else(|| {
        ExecError::refused(format!(
            "{origin}: checkpoint {name} has no <domain>; redefining needs the historic definition"
        ))
    })?;
    let hd = parse_domain(&format!("{origin}: historic domain"), &historic)?;
    if hd.name != *domain {
        return Err(ExecError::refused(format!(
            "{origin}: checkpoint {name} belongs to domain {}, not {domain}",
            hd.name
        )));
    }
    let mut disks = p.disks.clone();
    if disks.is_empty() {
        disks = hd
            .disks
            .iter()
            .map(|d| (d.target.clone(), name.clone()))
            .collect();
    }
    for (disk, bitmap) in &disks {
        if hd.disks.iter().any(|d| &d.target == disk) {
            continue;
        }
        // A disk snapjournal does not manage (a block device, a cdrom):
        // carried with checkpoint='no', as libvirt writes it.
        if let Some(o) = hd.others.iter().find(|o| &o.target == disk) {
            if bitmap.is_empty() {
                continue;
            }
            return Err(ExecError::refused(format!(
                "{origin}: checkpoint {name}, disk {disk}: the disk is {}, which snapjournal keeps no bitmap on; only checkpoint='no' can be carried for it",
                o.kind
            )));
        }
        return Err(ExecError::refused(format!(
            "{origin}: checkpoint {name} lists disk {disk}, which its historic domain does not have"
        )));
    }
    let record = CheckpointRecord {
        name,
        description: p.description,
        creation_time: p.creation_time.unwrap_or_else(now_secs),
        parent: p.parent,
        disks,
    };
    Ok((record, historic))
}

impl Executor {
    /// Validates every item, then defines them all in one transaction.
    pub fn checkpoint_redefine(&self, domain: &str, items: &[(String, String)]) -> Result<RedefineReport> {
        let state = self.journal().state()?;
        let dom = require_defined(&state, domain)?;
        let (changes, report) = self.plan_checkpoint_redefine(dom, items)?;
        if changes.is_empty() {
            return Ok(report);
        }
        let plan = Plan {
            steps: vec![Step::SyncXml {
                domain: domain.to_string(),
            }],
            commit_index: 0,
            changes,
        };
        let txn = self.run(
            Intent::CheckpointRedefine {
                domain: domain.to_string(),
                count: report.defined.len() as u32,
            },
            plan,
            Some(dom),
        )?;
        Ok(RedefineReport {
            txn: Some(txn),
            ..report
        })
    }

    /// The state changes a checkpoint redefine makes, after checking names,
    /// parents and the bitmaps in the images of the domain's chains.
    pub(crate) fn plan_checkpoint_redefine(
        &self,
        dom: &DomainState,
        items: &[(String, String)],
    ) -> Result<(Vec<StateChange>, RedefineReport)> {
        // A domain libvirt runs: its checkpoints all record (libvirt's
        // way), and while it runs its bitmaps are read from QEMU.
        let (live, all_may_record) = match self.libvirt_state(&dom.core.name)? {
            Some((uri, active)) => (
                if active {
                    Some(
                        self.libvirt()
                            .block_graph(&uri, &dom.core.name)
                            .map_err(|e| ExecError::refused(e.to_string()))?,
                    )
                } else {
                    None
                },
                true,
            ),
            None => (None, false),
        };
        self.plan_checkpoint_redefine_with(dom, items, live.as_ref(), all_may_record)
    }

    /// [`Executor::plan_checkpoint_redefine`] with the bitmaps of a running
    /// QEMU (`live`: read there, not from the files) and libvirt's rule
    /// that older checkpoints' bitmaps may record too (`all_may_record`).
    pub(crate) fn plan_checkpoint_redefine_with(
        &self,
        dom: &DomainState,
        items: &[(String, String)],
        live: Option<&crate::live::graph::BlockGraph>,
        all_may_record: bool,
    ) -> Result<(Vec<StateChange>, RedefineReport)> {
        let domain = &dom.core.name;
        let mut incoming: BTreeMap<String, Incoming> = BTreeMap::new();
        for (origin, xml) in items {
            let (record, domain_xml) = record_from_xml(dom, origin, xml)?;
            if let Some(other) = incoming.get(&record.name) {
                return Err(ExecError::refused(format!(
                    "checkpoint {} is defined twice: in {} and in {origin}",
                    record.name, other.origin
                )));
            }
            incoming.insert(
                record.name.clone(),
                Incoming {
                    origin: origin.clone(),
                    record,
                    domain_xml,
                },
            );
        }
        let mut unchanged = Vec::new();
        for (
            name,
            Incoming {
                origin,
                record: rec,
                domain_xml,
            },
        ) in &incoming
        {
            if let Some(existing) = dom.checkpoints.get(name) {
                if existing == rec
                    && self.journal().checkpoint_domain_xml(domain, name)?.as_ref() == Some(domain_xml)
                {
                    unchanged.push(name.clone());
                } else {
                    return Err(ExecError::refused(format!(
                        "checkpoint {name} in {origin} conflicts with the checkpoint {name} already defined for domain {domain}"
                    )));
                }
            }
        }
        for (
            name,
            Incoming {
                origin, record: rec, ..
            },
        ) in &incoming
        {
            let mut seen = BTreeSet::from([name.as_str()]);
            let mut at = rec.parent.as_deref();
            while let Some(p) = at {
                if !incoming.contains_key(p) && !dom.checkpoints.contains_key(p) {
                    return Err(ExecError::refused(format!(
                        "{origin}: the ancestor {p} of checkpoint {name} is neither in the set nor defined for domain {domain}"
                    )));
                }
                if !seen.insert(p) {
                    return Err(ExecError::refused(format!(
                        "{origin}: checkpoint {name} is its own ancestor (through {p})"
                    )));
                }
                at = incoming
                    .get(p)
                    .map(|i| i.record.parent.as_deref())
                    .or_else(|| dom.checkpoints.get(p).map(|c| c.parent.as_deref()))
                    .flatten();
            }
        }
        // A bitmap belongs to exactly one checkpoint: deleting one of two
        // sharing it would merge it into itself and remove the other's.
        let mut owner: BTreeMap<(String, String), String> = BTreeMap::new();
        for c in dom.checkpoints.values() {
            if incoming.contains_key(&c.name) {
                continue;
            }
            for (disk, bitmap) in c.bitmaps() {
                owner.insert((disk.to_string(), bitmap.to_string()), c.name.clone());
            }
        }
        for (name, Incoming { origin, record, .. }) in &incoming {
            for (disk, bitmap) in record.bitmaps() {
                let key = (disk.to_string(), bitmap.to_string());
                if let Some(other) = owner.get(&key) {
                    return Err(ExecError::refused(format!(
                        "{origin}: checkpoint {name}, disk {disk}: bitmap {bitmap} already belongs to checkpoint {other}; each checkpoint needs a bitmap of its own"
                    )));
                }
                owner.insert(key, name.clone());
            }
        }
        // Every bitmap a new checkpoint names is in an image of the disk's
        // present chain (each image read once).
        let mut in_image: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        if let Some(g) = live {
            for disk in dom.core.disks.values() {
                for image in &disk.chain {
                    let list = g
                        .format_node_of(&image.path)
                        .and_then(|n| g.bitmaps.get(n))
                        .map(|l| l.iter().map(|b| (b.name.clone(), b.recording)).collect())
                        .unwrap_or_default();
                    in_image.insert(image.path.clone(), list);
                }
            }
        }
        for (
            name,
            Incoming {
                origin, record: rec, ..
            },
        ) in &incoming
        {
            if unchanged.contains(name) {
                continue;
            }
            for (disk, bitmap) in rec.bitmaps() {
                let chain = dom.core.disks.get(disk).map(|d| d.chain.as_slice()).ok_or_else(|| {
                    ExecError::refused(format!(
                        "{origin}: checkpoint {name} keeps a bitmap on disk {disk}, which domain {domain} no longer has"
                    ))
                })?;
                let mut found = false;
                for image in chain.iter().filter(|i| i.format == "qcow2") {
                    if !in_image.contains_key(&image.path) {
                        let names = self
                            .images()
                            .bitmaps(&image.path)
                            .map_err(|e| {
                                ExecError::refused(format!("{origin}: checkpoint {name}, disk {disk}: {e}"))
                            })?
                            .into_iter()
                            .map(|b| (b.name, b.enabled))
                            .collect();
                        in_image.insert(image.path.clone(), names);
                    }
                    found |= in_image[&image.path].iter().any(|(b, _)| b == bitmap);
                }
                if !found {
                    return Err(ExecError::refused(format!(
                        "{origin}: checkpoint {name}, disk {disk}: no image of the disk's chain ({}) holds a bitmap called {bitmap}",
                        chain.iter().map(|i| i.path.as_str()).collect::<Vec<_>>().join(" -> ")
                    )));
                }
            }
        }
        self.check_recording_bitmaps(dom, &incoming, &unchanged, &in_image, all_may_record)?;
        let defined: Vec<String> = incoming
            .keys()
            .filter(|n| !unchanged.contains(n))
            .cloned()
            .collect();
        let changes = incoming
            .into_values()
            .filter(|i| defined.contains(&i.record.name))
            .map(|i| StateChange::CheckpointRecorded {
                domain: domain.clone(),
                checkpoint: i.record,
                domain_xml: i.domain_xml,
            })
            .collect();
        Ok((
            changes,
            RedefineReport {
                defined,
                unchanged,
                ..Default::default()
            },
        ))
    }

    /// With the new checkpoints defined, only the newest checkpoint's
    /// bitmap on each disk may record writes in the active image, and it
    /// must (fsck's rule). libvirt keeps every checkpoint's bitmap enabled:
    /// such images are refused here with the remedy, never accepted and
    /// then reported by fsck.
    fn check_recording_bitmaps(
        &self,
        dom: &DomainState,
        incoming: &BTreeMap<String, Incoming>,
        unchanged: &[String],
        read: &BTreeMap<String, Vec<(String, bool)>>,
        all_may_record: bool,
    ) -> Result<()> {
        let new: Vec<&Incoming> = incoming
            .iter()
            .filter(|(n, _)| !unchanged.contains(n))
            .map(|(_, i)| i)
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut after = dom.clone();
        for i in &new {
            after.checkpoints.insert(i.record.name.clone(), i.record.clone());
        }
        let domain = &dom.core.name;
        for disk in dom.core.disks.values() {
            if !new.iter().any(|i| i.record.bitmap_on(&disk.target).is_some()) {
                continue;
            }
            let Some(active) = disk.chain.first().filter(|a| a.format == "qcow2") else {
                continue;
            };
            let present: Vec<crate::images::BitmapInfo> = match read.get(&active.path) {
                Some(l) => l
                    .iter()
                    .map(|(name, enabled)| crate::images::BitmapInfo {
                        name: name.clone(),
                        enabled: *enabled,
                        in_use: false,
                    })
                    .collect(),
                None => self
                    .images()
                    .bitmaps(&active.path)
                    .map_err(|e| ExecError::refused(format!("domain {domain}, disk {}: {e}", disk.target)))?,
            };
            let newest = after.newest_checkpoint(Some(&disk.target));
            for c in after.checkpoints.values() {
                let Some(b) = c.bitmap_on(&disk.target) else {
                    continue;
                };
                let here = present.iter().find(|x| x.name == b);
                let is_newest = newest.is_some_and(|n| n.name == c.name);
                let origin = incoming
                    .get(&c.name)
                    .map(|i| format!("{}: ", i.origin))
                    .unwrap_or_default();
                match (is_newest, here) {
                    (false, Some(x)) if x.enabled && !all_may_record => {
                        return Err(ExecError::refused(format!(
                            "{origin}checkpoint {}, disk {}: bitmap {b} in {} records writes although the newer checkpoint {} does; snapjournal keeps only the newest checkpoint's bitmap recording (libvirt keeps them all enabled). Disable it first, with the domain stopped: qemu-img bitmap --disable {} {b}",
                            c.name,
                            disk.target,
                            active.path,
                            newest.map(|n| n.name.as_str()).unwrap_or("?"),
                            active.path
                        )));
                    }
                    (true, Some(x)) if !x.enabled => {
                        return Err(ExecError::refused(format!(
                            "{origin}checkpoint {}, disk {}: bitmap {b} in {} does not record writes, although {} is the newest checkpoint: changes since it would go untracked. Enable it first, with the domain stopped: qemu-img bitmap --enable {} {b}",
                            c.name, disk.target, active.path, c.name, active.path
                        )));
                    }
                    (true, None) => {
                        return Err(ExecError::refused(format!(
                            "{origin}checkpoint {}, disk {}: the newest checkpoint's bitmap {b} is not in the active image {}, so writes would go untracked",
                            c.name, disk.target, active.path
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
