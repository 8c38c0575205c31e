//! `snapshot redefine`: import many full `<domainsnapshot>` documents (each
//! with its historic `<domain>`) validated as a whole and applied as ONE
//! transaction, all or nothing. Images named by redefined snapshots are the
//! user's: the journal never deletes or modifies them.

use std::collections::{BTreeMap, BTreeSet};

use journal::{
    ChainImage, DiskSnapshotMode, DomainState, Intent, Plan, SnapshotDisk, SnapshotRecord, StateChange, Step,
    TxnId,
};

use super::{now_secs, require_defined};
use crate::engine::Executor;
use crate::error::{ExecError, Result};
use crate::names::{validate_image_path, validate_name};
use crate::qcow2::read_header;
use crate::xml::domain::parse_domain;
use crate::xml::snapshot::{parse_snapshot, DiskExtras, SnapshotExtras};

/// A redefine request: `(origin, xml)` items (origin names the file in
/// messages), and the snapshot to make current.
#[derive(Debug, Clone, Default)]
pub struct RedefineRequest {
    pub domain: String,
    pub items: Vec<(String, String)>,
    pub current: Option<String>,
    /// The overlays the redefined snapshots name (the images their
    /// snapshots created, e.g. by libvirt) become the journal's, so they
    /// may be merged and removed; the images below them stay the user's.
    pub adopt_images: bool,
}

/// What a redefine did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedefineReport {
    /// `None` when nothing needed changing.
    pub txn: Option<TxnId>,
    /// Snapshots (or, for `checkpoint redefine`, checkpoints) defined.
    pub defined: Vec<String>,
    /// Items identical to ones already defined (no-ops).
    pub unchanged: Vec<String>,
    /// Checkpoints defined by a session that also held snapshots.
    pub checkpoints_defined: Vec<String>,
    /// Checkpoints of such a session that were already defined identically.
    pub checkpoints_unchanged: Vec<String>,
}

/// Builds the snapshot record a document describes, with its historic
/// `<domain>`.
fn record_from_xml(
    domain: &str,
    origin: &str,
    xml: &str,
) -> Result<(SnapshotRecord, String, SnapshotExtras)> {
    let p = parse_snapshot(origin, xml)?;
    let name = p
        .request
        .name
        .clone()
        .ok_or_else(|| ExecError::refused(format!("{origin}: the snapshot has no <name>")))?;
    validate_name(&format!("snapshot (in {origin})"), &name)?;
    let historic = p.domain_xml.clone().ok_or_else(|| {
        ExecError::refused(format!(
            "{origin}: snapshot {name} has no <domain>; redefining needs the historic definition"
        ))
    })?;
    let hd = parse_domain(&format!("{origin}: historic domain"), &historic)?;
    if hd.name != domain {
        return Err(ExecError::refused(format!(
            "{origin}: snapshot {name} belongs to domain {}, not {domain}",
            hd.name
        )));
    }
    let mut disks = Vec::new();
    for d in &hd.disks {
        let req = p.request.disks.iter().find(|r| r.disk == d.target);
        let mode = req.map(|r| r.mode).unwrap_or(DiskSnapshotMode::External);
        if mode == DiskSnapshotMode::No {
            disks.push(SnapshotDisk {
                disk: d.target.clone(),
                mode,
                overlay: None,
                frozen: None,
            });
            continue;
        }
        let src = d.source.clone().ok_or_else(|| {
            ExecError::refused(format!(
                "{origin}: snapshot {name}, disk {}: the historic domain gives the disk no source file",
                d.target
            ))
        })?;
        validate_image_path(&format!("{origin}: disk {}", d.target), &src)?;
        let overlay = req.and_then(|r| r.file.clone());
        if let Some(o) = &overlay {
            validate_image_path(&format!("{origin}: overlay of disk {}", d.target), o)?;
        }
        disks.push(SnapshotDisk {
            disk: d.target.clone(),
            mode,
            overlay,
            frozen: Some(ChainImage {
                path: src,
                format: d.format.clone().unwrap_or_else(|| "qcow2".into()),
            }),
        });
    }
    for r in &p.request.disks {
        if !hd.disks.iter().any(|d| d.target == r.disk) {
            if let Some(o) = hd.others.iter().find(|o| o.target == r.disk) {
                if r.mode == DiskSnapshotMode::No {
                    continue;
                }
                return Err(ExecError::refused(format!(
                    "{origin}: snapshot {name}, disk {}: the disk is {}, which snapjournal does not snapshot; only snapshot='no' can be carried for it",
                    r.disk, o.kind
                )));
            }
            return Err(ExecError::refused(format!(
                "{origin}: snapshot {name} lists disk {}, which its historic domain does not have",
                r.disk
            )));
        }
    }
    if !disks.iter().any(|d| d.mode == DiskSnapshotMode::External) {
        return Err(ExecError::refused(format!(
            "{origin}: snapshot {name} includes no disk"
        )));
    }
    let record = SnapshotRecord {
        name,
        description: p.request.description.clone(),
        creation_time: p.creation_time.unwrap_or_else(now_secs),
        state: p.state.clone().unwrap_or_else(|| "disk-snapshot".into()),
        parent: p.parent.clone(),
        disks,
    };
    // The whole entry is kept only for disks the record leaves out (a
    // cdrom's snapshot='no'); the record renders the others.
    let mut extras = p.extras;
    for (name, x) in extras.disks.iter_mut() {
        if record.disks.iter().any(|d| &d.disk == name) {
            x.whole = None;
        }
    }
    extras.disks.retain(|_, x| *x != DiskExtras::default());
    Ok((record, historic, extras))
}

/// What differs between two records of one snapshot (and their historic
/// `<domain>` documents), for messages; empty when they are identical.
fn differences(
    a: &SnapshotRecord,
    a_xml: Option<&str>,
    b: &SnapshotRecord,
    b_xml: &str,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.parent != b.parent {
        out.push("parent");
    }
    if a.disks != b.disks {
        out.push("disks");
    }
    let same_domain = a_xml.is_some_and(|a| {
        a == b_xml
            || matches!(
                (crate::xml::tree::parse("a", a), crate::xml::tree::parse("b", b_xml)),
                (Ok(x), Ok(y)) if x.same_content(&y)
            )
    });
    if !same_domain {
        out.push("historic domain");
    }
    if a.state != b.state {
        out.push("state");
    }
    if a.description != b.description {
        out.push("description");
    }
    if a.creation_time != b.creation_time {
        out.push("creation time");
    }
    out
}

impl Executor {
    /// Validates every item against the others, the defined snapshots and
    /// the images, then defines them all in one transaction.
    pub fn snapshot_redefine(&self, req: &RedefineRequest) -> Result<RedefineReport> {
        let state = self.journal().state()?;
        let dom = require_defined(&state, &req.domain)?;
        let domain = &req.domain;
        if req.items.is_empty() && req.current.is_none() {
            return Err(ExecError::refused("no snapshot documents given"));
        }
        let (changes, report) = self.plan_snapshot_redefine(dom, req)?;
        if changes.is_empty() {
            return Ok(report);
        }
        let plan = Plan {
            steps: vec![Step::SyncXml {
                domain: domain.clone(),
            }],
            commit_index: 0,
            changes,
        };
        let txn = self.run(
            Intent::SnapshotRedefine {
                domain: domain.clone(),
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

    /// The state changes of a snapshot redefine, after validating every
    /// item against the others, the defined snapshots and the images.
    pub(crate) fn plan_snapshot_redefine(
        &self,
        dom: &DomainState,
        req: &RedefineRequest,
    ) -> Result<(Vec<StateChange>, RedefineReport)> {
        let domain = &req.domain;
        // Parse all; duplicates within the set.
        let mut incoming: BTreeMap<String, (String, SnapshotRecord)> = BTreeMap::new();
        let mut historic: BTreeMap<String, String> = BTreeMap::new();
        let mut extras: BTreeMap<String, SnapshotExtras> = BTreeMap::new();
        for (origin, xml) in &req.items {
            let (rec, domain_xml, x) = record_from_xml(domain, origin, xml)?;
            extras.insert(rec.name.clone(), x);
            if let Some((other, _)) = incoming.get(&rec.name) {
                return Err(ExecError::refused(format!(
                    "snapshot {} is defined twice: in {other} and in {origin}",
                    rec.name
                )));
            }
            historic.insert(rec.name.clone(), domain_xml);
            incoming.insert(rec.name.clone(), (origin.clone(), rec));
        }
        // Identical to a defined one: no-op; different: conflict.
        let mut unchanged = Vec::new();
        for (name, (origin, rec)) in &incoming {
            if let Some(existing) = dom.snapshots.get(name) {
                let existing_xml = self.journal().snapshot_domain_xml(domain, name)?;
                let mut differ = differences(existing, existing_xml.as_deref(), rec, &historic[name]);
                let existing_extras =
                    crate::metadata::snapshot_extras(self.journal(), domain, name)?.unwrap_or_default();
                if existing_extras != extras[name] {
                    differ.push("elements kept as written (seclabel, metadata_cache, inactiveDomain, cookie, excluded disks)");
                }
                if differ.is_empty() {
                    unchanged.push(name.clone());
                } else {
                    return Err(ExecError::refused(format!(
                        "snapshot {name} in {origin} conflicts with the snapshot {name} already defined for domain {domain} (they differ in: {})",
                        differ.join(", ")
                    )));
                }
            }
        }
        let new: Vec<&SnapshotRecord> = incoming
            .values()
            .map(|(_, r)| r)
            .filter(|r| !unchanged.contains(&r.name))
            .collect();
        // Parents: in the set or already defined, and no cycle.
        for (name, (origin, rec)) in &incoming {
            if let Some(p) = &rec.parent {
                if !incoming.contains_key(p) && !dom.snapshots.contains_key(p) {
                    return Err(ExecError::refused(format!(
                        "{origin}: the parent {p} of snapshot {name} is neither in the set nor defined for domain {domain}"
                    )));
                }
            }
            let mut seen = BTreeSet::from([name.as_str()]);
            let mut at = rec.parent.as_deref();
            while let Some(p) = at {
                if !seen.insert(p) {
                    return Err(ExecError::refused(format!(
                        "{origin}: snapshot {name} is its own ancestor (through {p})"
                    )));
                }
                at = incoming
                    .get(p)
                    .map(|(_, r)| r.parent.as_deref())
                    .or_else(|| dom.snapshots.get(p).map(|s| s.parent.as_deref()))
                    .flatten();
            }
        }
        if let Some(c) = &req.current {
            if !incoming.contains_key(c) && !dom.snapshots.contains_key(c) {
                return Err(ExecError::refused(format!(
                    "--current {c}: no such snapshot in the set or defined for domain {domain}"
                )));
            }
        }
        self.check_redefined_images(dom, &incoming, &new)?;

        let mut changes: Vec<StateChange> = Vec::new();
        for r in &new {
            changes.push(StateChange::SnapshotRecorded {
                domain: domain.clone(),
                snapshot: (*r).clone(),
                domain_xml: historic.remove(&r.name).unwrap_or_default(),
            });
            if let Some(x) = extras.get(&r.name).filter(|x| !x.is_empty()) {
                changes.push(StateChange::SnapshotExtrasRecorded {
                    domain: domain.clone(),
                    snapshot: r.name.clone(),
                    xml: x.to_xml(),
                });
            }
        }
        if req.adopt_images {
            let mut adopted = BTreeSet::new();
            // Snapshots already defined identically adopt their overlays too.
            for (_, r) in incoming.values() {
                for d in &r.disks {
                    let Some(o) = &d.overlay else { continue };
                    if adopted.contains(o) || !std::path::Path::new(o).exists() {
                        continue;
                    }
                    if let Some(owner) = self
                        .journal()
                        .with_state(|s| s.images.get(o).map(|i| i.domain.clone()))?
                    {
                        if owner != *domain {
                            return Err(ExecError::refused(format!(
                                "snapshot {}, disk {}: overlay {o} is an image of domain {owner}; it cannot be adopted for domain {domain}",
                                r.name, d.disk
                            )));
                        }
                        continue;
                    }
                    adopted.insert(o.clone());
                    changes.push(StateChange::ImageCreated {
                        image: journal::ImageRecord {
                            path: o.clone(),
                            domain: domain.clone(),
                        },
                    });
                }
            }
        }
        if let Some(c) = &req.current {
            if dom.core.current_snapshot.as_ref() != Some(c) {
                changes.push(StateChange::CurrentSnapshotSet {
                    domain: domain.clone(),
                    snapshot: Some(c.clone()),
                });
            }
        }
        let defined: Vec<String> = new.iter().map(|r| r.name.clone()).collect();
        Ok((
            changes,
            RedefineReport {
                defined,
                unchanged,
                ..Default::default()
            },
        ))
    }

    /// Every image a new snapshot names exists, with the format its
    /// historic domain says; its backing chain (read from the image
    /// headers, each image once) is whole, acyclic and free of internal
    /// snapshots; an overlay that still exists stands on the snapshot's
    /// image.
    fn check_redefined_images(
        &self,
        dom: &DomainState,
        incoming: &BTreeMap<String, (String, SnapshotRecord)>,
        new: &[&SnapshotRecord],
    ) -> Result<()> {
        let domain = &dom.core.name;
        let mut good: BTreeSet<String> = BTreeSet::new();
        for rec in new {
            let origin = incoming.get(&rec.name).map(|(o, _)| o.as_str()).unwrap_or("?");
            let fail = |disk: &str, msg: String| {
                ExecError::refused(format!("{origin}: snapshot {}, disk {disk}: {msg}", rec.name))
            };
            for d in &rec.disks {
                let Some(frozen) = &d.frozen else { continue };
                if let Some(w) = dom.disk_writing_into(&frozen.path).map(|x| x.target.as_str()) {
                    return Err(fail(
                        &d.disk,
                        format!(
                            "its image {} is the image domain {domain} writes into now (the active layer of disk {w}): a snapshot of it would protect nothing; give the overlay the snapshot created (<disk name='{}' snapshot='external'><source file='…'/>) as the domain's disk, or exclude the disk with snapshot='no'",
                            frozen.path, d.disk
                        ),
                    ));
                }
                let head = read_header(&frozen.path)
                    .map_err(|e| fail(&d.disk, format!("image {} is not usable: {e}", frozen.path)))?;
                if head.format != frozen.format {
                    return Err(fail(
                        &d.disk,
                        format!(
                            "{} is {}, not {} as the historic domain says",
                            frozen.path, head.format, frozen.format
                        ),
                    ));
                }
                // Walk down until an image already known good.
                let mut at = Some((frozen.path.clone(), head));
                let mut walked = Vec::new();
                while let Some((path, h)) = at.take() {
                    if good.contains(&path) {
                        break;
                    }
                    if walked.contains(&path) {
                        return Err(fail(
                            &d.disk,
                            format!("the backing chain of {} loops at {path}", frozen.path),
                        ));
                    }
                    if h.internal_snapshots > 0 {
                        return Err(ExecError::refused(format!(
                            "domain {domain}, disk {}: image {path} holds internal snapshots; mixed internal/external snapshot trees are refused",
                            d.disk
                        )));
                    }
                    walked.push(path.clone());
                    if let Some(b) = h.backing {
                        let next = read_header(&b).map_err(|e| {
                            fail(&d.disk, format!("backing file {b} of {path} is not usable: {e}"))
                        })?;
                        at = Some((b, next));
                    }
                }
                good.extend(walked);
                if let Some(o) = &d.overlay {
                    if std::path::Path::new(o).exists() {
                        let oh = read_header(o)
                            .map_err(|e| fail(&d.disk, format!("overlay {o} is not usable: {e}")))?;
                        if oh.format != "qcow2" {
                            return Err(fail(
                                &d.disk,
                                format!(
                                    "overlay {o} is a {} image; snapjournal manages qcow2 overlays only",
                                    oh.format
                                ),
                            ));
                        }
                        if oh.backing.as_deref() != Some(frozen.path.as_str()) {
                            return Err(fail(
                                &d.disk,
                                format!(
                                    "overlay {o} stands on {}, not on the snapshot's image {}",
                                    oh.backing.unwrap_or_else(|| "nothing".into()),
                                    frozen.path
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
