//! Planning for a running domain libvirt runs: its view checked against
//! the journal, the disks a snapshot leaves alone, and a delete's merges
//! turned into libvirt block jobs.

use std::collections::BTreeSet;

use journal::{ChainImage, DomainState, LibvirtMerge, Step};

use crate::engine::Executor;
use crate::error::{ExecError, Result};
use crate::libvirt::view::{disks, DiskView};

fn libvirt_disks(
    exec: &Executor,
    dom: &DomainState,
    uri: &str,
) -> Result<std::collections::BTreeMap<String, DiskView>> {
    let name = &dom.core.name;
    let xml = exec
        .libvirt()
        .xml(uri, name, false)
        .map_err(|e| ExecError::refused(e.to_string()))?;
    Ok(disks(&format!("libvirt's live definition of {name}"), &xml)?)
}

/// Every managed disk's chain in libvirt's live view equals the journal's.
pub(crate) fn check_live_chains(exec: &Executor, dom: &DomainState, uri: &str) -> Result<()> {
    let name = &dom.core.name;
    let view = libvirt_disks(exec, dom, uri)?;
    for d in dom.core.disks.values() {
        let journal: Vec<&str> = d.chain.iter().map(|c| c.path.as_str()).collect();
        let seen: Vec<&str> = view
            .get(&d.target)
            .map(|v| v.chain.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if seen != journal {
            return Err(ExecError::refused(format!(
                "domain {name}, disk {}: libvirt at {uri} shows the chain {} but the journal records {}; the domain was changed behind snapjournal's back (run `snapjournal fsck`)",
                d.target,
                if seen.is_empty() { "(none)".to_string() } else { seen.join(" → ") },
                journal.join(" → ")
            )));
        }
    }
    Ok(())
}

/// The disks of the definition a snapshot onto `overlays` leaves alone.
pub(crate) fn excluded_disks(dom: &DomainState, overlays: &[(String, String)]) -> Vec<String> {
    let switched: BTreeSet<&str> = overlays.iter().map(|(d, _)| d.as_str()).collect();
    disks("definition", &dom.core.xml)
        .map(|v| v.into_keys().filter(|t| !switched.contains(t.as_str())).collect())
        .unwrap_or_default()
}

/// Turns the merges of an offline delete plan into libvirt block jobs
/// where they touch images libvirt's QEMU holds: a commit (active when the
/// top is the active image) or a pull into the active image. A pull into
/// an image below the active one is something libvirt cannot do: refused.
pub(crate) fn merge_steps(
    exec: &Executor,
    dom: &DomainState,
    uri: &str,
    steps: Vec<Step>,
) -> Result<Vec<Step>> {
    let name = &dom.core.name;
    let view = libvirt_disks(exec, dom, uri)?;
    let chain_of = |disk: &str| -> Vec<ChainImage> {
        dom.core
            .disks
            .get(disk)
            .map(|d| d.chain.clone())
            .unwrap_or_default()
    };
    let position = |disk: &str, path: &str| {
        view.get(disk)
            .and_then(|v| v.chain.iter().position(|p| p == path))
    };
    let mut out = Vec::new();
    for step in steps {
        match &step {
            Step::CommitImage { disk, top, base } => {
                if let Some(i) = position(disk, top) {
                    let chain = chain_of(disk);
                    let (Some(top_img), Some(base_img)) = (chain.get(i), chain.get(i + 1)) else {
                        return Err(ExecError::refused(format!(
                            "domain {name}, disk {disk}: {top} has no image below it in libvirt's view"
                        )));
                    };
                    if &base_img.path != base {
                        return Err(ExecError::refused(format!(
                            "domain {name}, disk {disk}: libvirt has {} below {top}, not {base}",
                            base_img.path
                        )));
                    }
                    out.push(Step::LibvirtBlockJob {
                        domain: name.clone(),
                        uri: uri.to_string(),
                        disk: disk.clone(),
                        merge: LibvirtMerge::Commit {
                            top: top_img.clone(),
                            base: base_img.clone(),
                            active: i == 0,
                        },
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
                    if i != 0 {
                        return Err(ExecError::refused(format!(
                            "domain {name}, disk {disk}: this delete pulls data into {image}, an image below the active one, which libvirt cannot do on a running domain (it pulls only into the active image); shut the domain down for this delete, or delete with --metadata-only"
                        )));
                    }
                    if !dom.checkpoints.is_empty() {
                        return Err(ExecError::refused(format!(
                            "domain {name}, disk {disk}: this delete pulls data into the active image {image} of a domain with checkpoints; snapjournal does not carry bitmaps through libvirt's block pull: shut the domain down for this delete, or delete with --metadata-only"
                        )));
                    }
                    let chain = chain_of(disk);
                    let (Some(top_img), Some(dropped)) = (chain.first(), chain.get(1)) else {
                        return Err(ExecError::refused(format!(
                            "domain {name}, disk {disk}: {image} has no backing image in libvirt's view"
                        )));
                    };
                    out.push(Step::LibvirtBlockJob {
                        domain: name.clone(),
                        uri: uri.to_string(),
                        disk: disk.clone(),
                        merge: LibvirtMerge::Pull {
                            top: top_img.clone(),
                            dropped: dropped.clone(),
                            below: backing.clone(),
                        },
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
