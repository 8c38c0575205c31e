//! libvirt's view of a domain's disks, read from its XML: each file disk's
//! source and the `<backingStore>` chain below it (in a running domain's
//! live XML libvirt lists the whole chain QEMU has open).

use std::collections::BTreeMap;

use crate::error::XmlError;
use crate::xml::tree::{parse, Element};

/// One disk as libvirt shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskView {
    pub target: String,
    /// `disk`, `cdrom`, …
    pub device: String,
    /// `file`, `block`, `network`, …
    pub kind: String,
    /// The image the disk writes to, then every backing image libvirt lists.
    pub chain: Vec<String>,
    /// Whether the disk is `<readonly/>`.
    pub readonly: bool,
}

impl DiskView {
    /// The active image (the disk's source file).
    pub fn active(&self) -> Option<&str> {
        self.chain.first().map(String::as_str)
    }
}

fn source_file(e: &Element) -> Option<String> {
    let s = e.child("source")?;
    s.attr("file").or_else(|| s.attr("dev")).map(String::from)
}

/// The disks of a `<domain>` document, by target.
pub fn disks(what: &str, xml: &str) -> Result<BTreeMap<String, DiskView>, XmlError> {
    let root = parse(what, xml)?;
    let mut out = BTreeMap::new();
    let Some(devices) = root.child("devices") else {
        return Ok(out);
    };
    for d in devices.children_named("disk") {
        let Some(target) = d.child("target").and_then(|t| t.attr("dev")) else {
            continue;
        };
        let mut chain = Vec::new();
        if let Some(src) = source_file(d) {
            chain.push(src);
            let mut at = d.child("backingStore");
            while let Some(b) = at {
                match source_file(b) {
                    Some(p) => chain.push(p),
                    None => break,
                }
                at = b.child("backingStore");
            }
        }
        out.insert(
            target.to_string(),
            DiskView {
                target: target.to_string(),
                device: d.attr("device").unwrap_or("disk").to_string(),
                kind: d.attr("type").unwrap_or("file").to_string(),
                chain,
                readonly: d.child("readonly").is_some(),
            },
        );
    }
    Ok(out)
}

/// The disks of a `<domainsnapshot>` libvirt marked
/// `<snapshotDeleteInProgress/>`: the target of a libvirt snapshot delete
/// that did not complete, which libvirt refuses to delete until the marker
/// is gone (only a redefinition clears it).
pub fn delete_markers(what: &str, xml: &str) -> Result<Vec<String>, XmlError> {
    let root = parse(what, xml)?;
    let Some(disks) = root.child("disks") else {
        return Ok(Vec::new());
    };
    Ok(disks
        .children_named("disk")
        .filter(|d| d.child("snapshotDeleteInProgress").is_some())
        .map(|d| d.attr("name").unwrap_or("?").to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_chain_is_read_through_backing_stores() {
        let xml = r#"<domain type='qemu'><name>d</name><devices>
          <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
            <source file='/i/top' index='3'/>
            <backingStore type='file' index='2'><format type='qcow2'/><source file='/i/mid'/>
              <backingStore type='file' index='1'><format type='raw'/><source file='/i/base'/><backingStore/></backingStore>
            </backingStore>
            <target dev='vda' bus='virtio'/></disk>
          <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>
        </devices></domain>"#;
        let d = disks("x", xml).unwrap();
        assert_eq!(d["vda"].chain, vec!["/i/top", "/i/mid", "/i/base"]);
        assert_eq!(d["vda"].active(), Some("/i/top"));
        assert!(d["hdc"].chain.is_empty() && d["hdc"].readonly && d["hdc"].device == "cdrom");
    }

    #[test]
    fn a_delete_in_progress_marker_is_found_on_the_snapshots_disks_only() {
        let xml = r#"<domainsnapshot><name>s1</name><disks>
          <disk name='vda' snapshot='external' type='file'><snapshotDeleteInProgress/><source file='/i/a'/></disk>
          <disk name='vdb' snapshot='external' type='file'><source file='/i/b'/></disk>
        </disks><domain><devices><disk><snapshotDeleteInProgress/></disk></devices></domain></domainsnapshot>"#;
        assert_eq!(delete_markers("x", xml).unwrap(), vec!["vda"]);
        assert!(
            delete_markers("x", "<domainsnapshot><name>s</name></domainsnapshot>")
                .unwrap()
                .is_empty()
        );
    }
}
