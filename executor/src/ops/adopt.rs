//! `domain adopt --libvirt`: take over a domain libvirt runs. Its
//! persistent definition, every snapshot (with its historic `<domain>`)
//! and checkpoint are recorded in ONE transaction; the overlays libvirt's
//! snapshots created become the journal's (so they may be merged), the
//! base images stay the user's. From then on the domain is operated
//! through libvirt's API and libvirt's metadata is written from the
//! journal.

use journal::{DomainState, Intent, Plan, StateChange, Step, TxnId};

use super::domain::SharedDisks;
use super::redefine::RedefineRequest;
use crate::engine::Executor;
use crate::error::{ExecError, Result};
use crate::libvirt::view::disks;
use crate::libvirt::LibvirtError;
use crate::xml::domain::strip_backing_stores;

/// What an adoption recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdoptReport {
    pub txn: TxnId,
    pub domain: String,
    pub uri: String,
    /// Whether libvirt runs the domain now.
    pub running: bool,
    pub snapshots: Vec<String>,
    pub checkpoints: Vec<String>,
    pub current: Option<String>,
    /// (disk, image): images that became the journal's (libvirt's overlays).
    pub adopted_images: Vec<(String, String)>,
}

fn refused(e: LibvirtError) -> ExecError {
    ExecError::refused(e.to_string())
}

/// A refused adoption of snapshots libvirt marked
/// `<snapshotDeleteInProgress/>` says so: libvirt's own delete of a child
/// stopped part way, which is why its metadata and the images disagree.
/// (An adoption that succeeds clears the markers: libvirt's metadata is
/// redefined from the journal.)
fn with_delete_markers(e: ExecError, uri: &str, name: &str, snapshots: &[(String, String)]) -> ExecError {
    let marked: Vec<String> = snapshots
        .iter()
        .filter_map(|(n, x)| {
            let disks = crate::libvirt::view::delete_markers(n, x).ok()?;
            (!disks.is_empty()).then(|| format!("{n} ({})", disks.join(", ")))
        })
        .collect();
    match e {
        ExecError::Invalid(m) if !marked.is_empty() => ExecError::refused(format!(
            "{m}; libvirt at {uri} marks snapshot(s) {} of domain {name} as the target of a snapshot delete that did not complete (<snapshotDeleteInProgress/>): libvirt's delete stopped part way, so its metadata and the images may disagree",
            marked.join(", ")
        )),
        other => other,
    }
}

impl Executor {
    /// Adopts domain `name` from libvirt at `uri`.
    pub fn domain_adopt_libvirt(&self, uri: &str, name: &str) -> Result<AdoptReport> {
        crate::names::validate_name("domain", name)?;
        if self.journal().domain(name)?.is_some() {
            return Err(ExecError::refused(format!(
                "domain {name} is already defined in the journal; `domain undefine` it first to adopt libvirt's"
            )));
        }
        let lv = self.libvirt().read_domain(uri, name).map_err(refused)?;
        let inactive = disks(&format!("libvirt's definition of {name}"), &lv.inactive_xml)?;
        for d in inactive.values() {
            let writable_disk = d.device == "disk" && !d.readonly;
            if writable_disk && d.kind != "file" {
                return Err(ExecError::refused(format!(
                    "libvirt at {uri}, domain {name}: disk {} is a {} disk (type='{}'); snapjournal adopts domains whose writable disks are files",
                    d.target, d.kind, d.kind
                )));
            }
        }
        if let Some(live) = &lv.live_xml {
            let live = disks(&format!("libvirt's live definition of {name}"), live)?;
            for (t, d) in &inactive {
                let now = live.get(t).and_then(|l| l.active());
                if d.device == "disk" && d.kind == "file" && now != d.active() {
                    return Err(ExecError::refused(format!(
                        "libvirt at {uri}, domain {name}: disk {t} writes to {} but the persistent definition names {}; make them agree (shut the domain down, or `virsh define` the live XML) and adopt again",
                        now.unwrap_or("nothing"),
                        d.active().unwrap_or("nothing")
                    )));
                }
            }
        }
        let xml = strip_backing_stores(&format!("libvirt's definition of {name}"), &lv.inactive_xml)?;
        let state = self.journal().state()?;
        // The base images stay the user's; the overlays libvirt's
        // snapshots created are adopted below.
        let planned = self.plan_define(&state, &xml, &SharedDisks::All)?;
        let dom = DomainState {
            core: planned.core.clone(),
            snapshots: journal::Map::new(),
            checkpoints: journal::Map::new(),
        };
        let mut changes = vec![StateChange::DomainDefined {
            core: planned.core.clone(),
        }];
        changes.extend(planned.changes);
        let mut snapshots = Vec::new();
        let mut adopted_images = Vec::new();
        if !lv.snapshots.is_empty() {
            let req = RedefineRequest {
                domain: name.to_string(),
                items: lv
                    .snapshots
                    .iter()
                    .map(|(n, x)| (format!("libvirt snapshot {n}"), x.clone()))
                    .collect(),
                current: lv.current.clone(),
                adopt_images: true,
            };
            let (c, report) = self
                .plan_snapshot_redefine(&dom, &req)
                .map_err(|e| with_delete_markers(e, uri, name, &lv.snapshots))?;
            for ch in &c {
                if let StateChange::ImageCreated { image } = ch {
                    let disk = dom
                        .core
                        .disks
                        .values()
                        .find(|d| d.chain.iter().any(|i| i.path == image.path))
                        .map(|d| d.target.clone())
                        .unwrap_or_default();
                    adopted_images.push((disk, image.path.clone()));
                }
            }
            changes.extend(c);
            snapshots = report.defined;
        }
        let mut checkpoints = Vec::new();
        if !lv.checkpoints.is_empty() {
            let items: Vec<(String, String)> = lv
                .checkpoints
                .iter()
                .map(|(n, x)| (format!("libvirt checkpoint {n}"), x.clone()))
                .collect();
            // A running domain's bitmaps are in QEMU, not yet in the files.
            let live = match lv.live_xml {
                Some(_) => Some(self.libvirt().block_graph(uri, name).map_err(refused)?),
                None => None,
            };
            let (c, report) = self.plan_checkpoint_redefine_with(&dom, &items, live.as_ref(), true)?;
            changes.extend(c);
            checkpoints = report.defined;
        }
        changes.push(StateChange::LibvirtBound {
            domain: name.to_string(),
            uri: Some(uri.to_string()),
        });
        let plan = Plan {
            steps: vec![Step::SyncXml {
                domain: name.to_string(),
            }],
            commit_index: 0,
            changes,
        };
        let txn = self.run(
            Intent::DomainAdopt {
                domain: name.to_string(),
                uri: uri.to_string(),
                snapshots: snapshots.len() as u32,
                checkpoints: checkpoints.len() as u32,
            },
            plan,
            None,
        )?;
        Ok(AdoptReport {
            txn,
            domain: name.to_string(),
            uri: uri.to_string(),
            running: lv.live_xml.is_some(),
            snapshots,
            checkpoints,
            current: lv.current,
            adopted_images,
        })
    }

    /// The libvirt URI of a domain libvirt runs (`None`: not adopted).
    pub fn libvirt_uri(&self, domain: &str) -> Result<Option<String>> {
        Ok(self.journal().libvirt_uri(domain)?)
    }

    /// Refuses to start or stop a QEMU of snapjournal's own for a domain
    /// libvirt runs (`verb`: virsh's command).
    pub(crate) fn refuse_libvirt_runtime(&self, domain: &str, verb: &str) -> Result<()> {
        if let Some(uri) = self.libvirt_uri(domain)? {
            return Err(ExecError::refused(format!(
                "domain {domain} runs under libvirt at {uri}, which starts and stops its QEMU: `virsh -c {uri} {verb} {domain}`"
            )));
        }
        Ok(())
    }

    /// For a domain libvirt runs: (uri, whether libvirt runs it now). An
    /// unreachable libvirt refuses the request with nothing changed.
    pub(crate) fn libvirt_state(&self, domain: &str) -> Result<Option<(String, bool)>> {
        let Some(uri) = self.libvirt_uri(domain)? else {
            return Ok(None);
        };
        let active = self.libvirt().is_active(&uri, domain).map_err(refused)?;
        Ok(Some((uri, active)))
    }
}
