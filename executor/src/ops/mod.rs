//! The operations: each validates a request against the state and the
//! world, builds a complete [`journal::Plan`] and runs it through the
//! [`crate::Executor`].

pub mod adopt;
pub mod checkpoint;
pub mod checkpoint_redefine;
pub mod create;
pub mod delete;
pub mod domain;
pub(crate) mod libvirt_ops;
pub mod redefine;
pub mod revert;
pub mod runtime;
pub mod sessions;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use journal::{ChainImage, DomainState, ImageRecord, State, StateChange, Step};

use crate::error::{ChainSource, ExecError, PlanError, Result};
use crate::names::validate_image_path;
use crate::xml::domain::{parse_domain, set_disk_sources};

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The domain called `name`, running or not, or a clear error.
pub(crate) fn require_defined<'a>(state: &'a State, name: &str) -> Result<&'a DomainState> {
    state.domains.get(name).ok_or_else(|| {
        ExecError::from(PlanError::DomainNotDefined {
            domain: name.to_string(),
        })
    })
}

/// QEMU's chain of every disk of a running domain, checked against the
/// journal's (I2 for running domains): disk → device.
pub(crate) fn live_chains(
    exec: &crate::Executor,
    dom: &DomainState,
    rt: &journal::Runtime,
) -> Result<BTreeMap<String, crate::live::graph::Device>> {
    let graph = live_graph(exec, dom, rt)?;
    device_chains(dom, &graph, "the running QEMU")
}

/// The block graph of a running domain's QEMU (refused when it is gone).
pub(crate) fn live_graph(
    exec: &crate::Executor,
    dom: &DomainState,
    rt: &journal::Runtime,
) -> Result<crate::live::graph::BlockGraph> {
    let name = &dom.core.name;
    exec.live()
        .with_qemu(rt, crate::live::graph::BlockGraph::read)
        .map_err(|e| ExecError::refused(format!("domain {name}: {e}")))?
        .ok_or_else(|| {
            ExecError::refused(format!(
                "domain {name} is recorded running on {} but its QEMU is gone; run `snapjournal recover`",
                rt.qmp_socket
            ))
        })
}

/// Each disk's device in a QEMU's graph, its chain checked against the
/// journal's (I2): disk → device. `qemu` names the QEMU in errors.
pub(crate) fn device_chains(
    dom: &DomainState,
    graph: &crate::live::graph::BlockGraph,
    qemu: &str,
) -> Result<BTreeMap<String, crate::live::graph::Device>> {
    let name = &dom.core.name;
    let mut out = BTreeMap::new();
    for disk in dom.core.disks.values() {
        let active = disk.active().map(|a| a.path.as_str()).unwrap_or_default();
        let dev = graph.device(&disk.target, active).ok_or_else(|| {
            ExecError::refused(format!(
                "domain {name}, disk {}: {qemu} shows no device on {active}",
                disk.target
            ))
        })?;
        let real: Vec<&str> = dev.chain.iter().map(|l| l.path.as_str()).collect();
        let ours: Vec<&str> = disk.chain.iter().map(|c| c.path.as_str()).collect();
        if real != ours || dev.chain.iter().any(|l| l.node.is_empty()) {
            return Err(PlanError::ChainDiffers {
                domain: name.to_string(),
                disk: disk.target.clone(),
                seen_by: ChainSource::Qemu,
                found: real.iter().map(|p| p.to_string()).collect(),
                journal: ours.iter().map(|p| p.to_string()).collect(),
            }
            .into());
        }
        out.insert(disk.target.clone(), dev.clone());
    }
    Ok(out)
}

/// The domain called `name`, stopped, or a clear error.
pub(crate) fn require_domain<'a>(state: &'a State, name: &str) -> Result<&'a DomainState> {
    let d = state.domains.get(name).ok_or_else(|| {
        ExecError::from(PlanError::DomainNotDefined {
            domain: name.to_string(),
        })
    })?;
    if d.core.runtime.is_some() {
        return Err(ExecError::refused(format!(
            "domain {name} is running; this operation needs it stopped"
        )));
    }
    Ok(d)
}

/// Checks every disk's real backing chain against the state (I2) and that
/// no image holds internal snapshots. The chains are read from the image
/// headers in-process (no qemu-img process per disk).
pub(crate) fn check_world_chains(dom: &DomainState) -> Result<()> {
    for disk in dom.core.disks.values() {
        let Some(active) = disk.active() else { continue };
        let chain = crate::qcow2::header_chain(&active.path).map_err(|e| {
            ExecError::refused(format!(
                "domain {}, disk {}: cannot read the image chain: {e}",
                dom.core.name, disk.target
            ))
        })?;
        if let Some((img, _)) = chain.iter().find(|(_, h)| h.internal_snapshots > 0) {
            return Err(ExecError::refused(format!(
                "domain {}, disk {}: image {} holds internal snapshots; mixed internal/external snapshot trees are refused",
                dom.core.name, disk.target, img.path
            )));
        }
        let real: Vec<ChainImage> = chain.into_iter().map(|(c, _)| c).collect();
        if real != disk.chain {
            return Err(PlanError::ChainDiffers {
                domain: dom.core.name.clone(),
                disk: disk.target.clone(),
                seen_by: ChainSource::Disk,
                found: real.iter().map(|c| c.path.clone()).collect(),
                journal: disk.chain.iter().map(|c| c.path.clone()).collect(),
            }
            .into());
        }
    }
    Ok(())
}

/// Refuses images that hold internal snapshots (mixed trees).
pub(crate) fn refuse_internal(domain: &str, disk: &str, infos: &[crate::images::ImageInfo]) -> Result<()> {
    if let Some(i) = infos.iter().find(|i| !i.snapshots.is_empty()) {
        return Err(ExecError::refused(format!(
            "domain {domain}, disk {disk}: image {} holds internal snapshots; mixed internal/external snapshot trees are refused",
            i.filename
        )));
    }
    Ok(())
}

/// Checks that a new image may be created at `path`: absolute, its
/// directory exists, nothing is there yet, and no other planned file has it.
pub(crate) fn check_new_image_path(
    domain: &str,
    disk: &str,
    path: &str,
    planned: &BTreeSet<String>,
) -> Result<()> {
    validate_image_path(&format!("overlay for disk {disk} of domain {domain}"), path)?;
    let p = Path::new(path);
    if p.symlink_metadata().is_ok() {
        return Err(ExecError::refused(format!(
            "domain {domain}, disk {disk}: target file {path} already exists"
        )));
    }
    let dir = p.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(ExecError::refused(format!(
            "domain {domain}, disk {disk}: directory {} of {path} does not exist",
            dir.display()
        )));
    }
    if planned.contains(path) {
        return Err(ExecError::refused(format!(
            "domain {domain}, disk {disk}: file {path} is planned for two disks"
        )));
    }
    Ok(())
}

/// `/p/vda.qcow2` + `s1` → `/p/vda.s1` (libvirt's naming).
pub(crate) fn derived_path(base: &str, suffix: &str) -> String {
    let p = Path::new(base);
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = p.parent().unwrap_or(Path::new("/"));
    dir.join(format!("{stem}.{suffix}"))
        .to_string_lossy()
        .into_owned()
}

/// The state after `changes`, for planning what they leave unreferenced.
pub(crate) fn simulate(state: &State, changes: &[StateChange]) -> State {
    let mut s = state.clone();
    let mut touched = BTreeSet::new();
    for c in changes {
        s.apply(c, &mut touched);
    }
    s
}

/// Images the journal created for `domain` that nothing in `after`
/// references: each becomes a removal step (unless `keep_files`) and an
/// `ImageRemoved` change.
pub(crate) fn unreferenced_images(after: &State, domain: &str) -> Vec<ImageRecord> {
    let referenced = after
        .domains
        .get(domain)
        .map(|d| d.referenced_images())
        .unwrap_or_default();
    after
        .images_of(domain)
        .filter(|i| !referenced.contains(&i.path))
        .cloned()
        .collect()
}

/// What a transaction's changes leave unused in a domain.
pub(crate) struct Garbage {
    /// Images the journal owns that nothing references any more: removed
    /// by the plan's steps (or handed to the user with `keep_files`).
    pub removed: Vec<String>,
    /// Shared images (not the journal's) the domain referenced and no
    /// longer does: never touched, named to the user.
    pub shared: Vec<String>,
}

/// Removal steps and changes for unreferenced images, from one simulation
/// of the plan's changes.
pub(crate) fn collect_garbage(
    state: &State,
    domain: &str,
    changes: &mut Vec<StateChange>,
    steps: &mut Vec<Step>,
    keep_files: bool,
) -> Garbage {
    let after = simulate(state, changes);
    let still = after
        .domains
        .get(domain)
        .map(|d| d.referenced_images())
        .unwrap_or_default();
    let shared = state
        .domains
        .get(domain)
        .map(|d| d.referenced_images())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !still.contains(p) && !state.images.contains_key(p))
        .collect();
    let mut removed = Vec::new();
    for img in unreferenced_images(&after, domain) {
        if !keep_files {
            steps.push(Step::RemoveImage {
                path: img.path.clone(),
            });
        }
        changes.push(StateChange::ImageRemoved {
            path: img.path.clone(),
        });
        removed.push(img.path);
    }
    Garbage { removed, shared }
}

/// Replaces image `from` by `to` everywhere in a domain: disk chains
/// (dropping the duplicate this makes), snapshots' frozen images and
/// overlays, and disk sources of the present and historic definitions.
/// `historic` holds the snapshots' historic `<domain>` documents as the
/// changes planned so far leave them, and is updated (a delete merging on
/// two disks rewrites one document twice).
pub(crate) fn replace_image(
    dom: &DomainState,
    historic: &mut BTreeMap<String, String>,
    from: &str,
    to: &ChainImage,
) -> Result<Vec<StateChange>> {
    let name = dom.core.name.clone();
    let mut out = Vec::new();
    for disk in dom.core.disks.values() {
        if disk.chain.iter().any(|c| c.path == from) {
            let mut chain: Vec<ChainImage> = Vec::new();
            for c in &disk.chain {
                let c = if c.path == from { to.clone() } else { c.clone() };
                if chain.last() != Some(&c) {
                    chain.push(c);
                }
            }
            out.push(StateChange::DiskChainChanged {
                domain: name.clone(),
                disk: disk.target.clone(),
                chain,
            });
        }
    }
    let xml = replace_source(&format!("definition of domain {name}"), &dom.core.xml, from, to)?;
    if xml != dom.core.xml {
        out.push(StateChange::DomainXmlSet {
            domain: name.clone(),
            xml,
        });
    }
    let escaped = crate::xml::tree::escape(from);
    for s in dom.snapshots.values() {
        let doc = historic
            .get(&s.name)
            .ok_or_else(|| crate::metadata::missing_historic("snapshot", &name, &s.name))?;
        let record_names = s.disks.iter().any(|d| {
            d.frozen.as_ref().map(|f| f.path.as_str()) == Some(from) || d.overlay.as_deref() == Some(from)
        });
        // Most snapshots do not name the image: neither copied nor parsed.
        let doc_names = doc.contains(from) || doc.contains(escaped.as_str());
        if !record_names && !doc_names {
            continue;
        }
        let mut s2 = s.clone();
        for d in &mut s2.disks {
            if d.frozen.as_ref().map(|f| f.path.as_str()) == Some(from) {
                d.frozen = Some(to.clone());
            }
            if d.overlay.as_deref() == Some(from) {
                d.overlay = Some(to.path.clone());
            }
        }
        let doc2 = if doc_names {
            replace_source(&format!("historic domain of snapshot {}", s.name), doc, from, to)?
        } else {
            doc.clone()
        };
        if &s2 != s || &doc2 != doc {
            historic.insert(s.name.clone(), doc2.clone());
            out.push(StateChange::SnapshotRecorded {
                domain: name.clone(),
                snapshot: s2,
                domain_xml: doc2,
            });
        }
    }
    Ok(out)
}

fn replace_source(what: &str, xml: &str, from: &str, to: &ChainImage) -> Result<String> {
    let parsed = parse_domain(what, xml)?;
    let map: BTreeMap<String, ChainImage> = parsed
        .disks
        .iter()
        .filter(|d| d.source.as_deref() == Some(from))
        .map(|d| (d.target.clone(), to.clone()))
        .collect();
    if map.is_empty() {
        return Ok(xml.to_string());
    }
    Ok(set_disk_sources(what, xml, &map)?)
}

/// The real chain of an image (itself first, read from the headers), with
/// a clear error.
pub(crate) fn world_chain(domain: &str, disk: &str, path: &str) -> Result<Vec<ChainImage>> {
    crate::qcow2::header_chain(path)
        .map(|c| c.into_iter().map(|(i, _)| i).collect())
        .map_err(|e| {
            ExecError::refused(format!(
                "domain {domain}, disk {disk}: image {path} is not usable: {e}"
            ))
        })
}
