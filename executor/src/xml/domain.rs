//! libvirt `<domain>`: the disks we manage, and rewriting their sources
//! while every other byte of the definition stays as it was.

use std::collections::BTreeMap;

use journal::ChainImage;

use super::tree::{parse, render_tag, splice, Element};
use crate::error::XmlError;

/// A file-backed disk of a domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// Target device (`vda`).
    pub target: String,
    /// `disk`, `cdrom`, …
    pub device: String,
    /// The source file, if any.
    pub source: Option<String>,
    /// The driver type (`qcow2`, `raw`), if given.
    pub format: Option<String>,
    /// Whether the disk is read-only (`<readonly/>`).
    pub readonly: bool,
    /// Whether other domains may use the image too (`<shareable/>`).
    pub shareable: bool,
}

/// A disk of a definition that snapjournal does not manage (a block
/// device, a network disk, a cdrom, …): kept in the XML as it is, left out
/// of every operation, and named when a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherDisk {
    /// Target device (`hda`).
    pub target: String,
    /// What it is, for messages (`a cdrom`, `a block device (type='block')`).
    pub kind: String,
}

/// What we read from a `<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDomain {
    pub name: String,
    /// File-backed disks with `device='disk'`, in document order.
    pub disks: Vec<DomainDisk>,
    /// Every other disk, in document order.
    pub others: Vec<OtherDisk>,
}

fn other_kind(d: &Element) -> String {
    let ty = d.attr("type").unwrap_or("file");
    let device = d.attr("device").unwrap_or("disk");
    match (device, ty) {
        ("disk", "block") => "a block device (type='block')".into(),
        ("disk", "network") => format!(
            "a network disk ({})",
            d.child("source")
                .and_then(|s| s.attr("protocol"))
                .unwrap_or("network")
        ),
        ("disk", other) => format!("a disk of type '{other}'"),
        (dev, _) => format!("a {dev}"),
    }
}

/// The disk `target` of the definition `xml` if snapjournal does not
/// manage it, with what it is.
pub fn other_disk(xml: &str, target: &str) -> Option<OtherDisk> {
    parse_domain("domain", xml)
        .ok()?
        .others
        .into_iter()
        .find(|d| d.target == target)
}

fn err(what: &str, message: impl Into<String>) -> XmlError {
    XmlError {
        what: what.to_string(),
        message: message.into(),
    }
}

/// Whether snapjournal manages the `<disk>` element `d`: a file-backed
/// `device='disk'`.
pub fn is_managed(d: &Element) -> bool {
    d.attr("type").unwrap_or("file") == "file" && d.attr("device").unwrap_or("disk") == "disk"
}

fn all_disks(root: &Element) -> impl Iterator<Item = &Element> {
    root.child("devices")
        .into_iter()
        .flat_map(|d| d.children_named("disk"))
}

fn file_disks(root: &Element) -> impl Iterator<Item = &Element> {
    all_disks(root).filter(|d| is_managed(d))
}

/// Parses a `<domain>` definition.
pub fn parse_domain(what: &str, xml: &str) -> Result<ParsedDomain, XmlError> {
    let root = parse(what, xml)?;
    domain_from_element(what, &root)
}

/// Reads a parsed `<domain>` element.
pub fn domain_from_element(what: &str, root: &Element) -> Result<ParsedDomain, XmlError> {
    if root.name != "domain" {
        return Err(err(
            what,
            format!("root element is <{}>, expected <domain>", root.name),
        ));
    }
    let name = root
        .child_text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(what, "<domain> has no <name>"))?;
    let mut disks = Vec::new();
    for d in file_disks(root) {
        let target = d
            .child("target")
            .and_then(|t| t.attr("dev"))
            .ok_or_else(|| err(what, "a <disk> has no <target dev='…'/>"))?
            .to_string();
        if disks.iter().any(|x: &DomainDisk| x.target == target) {
            return Err(err(what, format!("disk target {target} appears twice")));
        }
        disks.push(DomainDisk {
            target,
            device: d.attr("device").unwrap_or("disk").to_string(),
            source: d.child("source").and_then(|s| s.attr("file")).map(String::from),
            format: d.child("driver").and_then(|s| s.attr("type")).map(String::from),
            readonly: d.child("readonly").is_some(),
            shareable: d.child("shareable").is_some(),
        });
    }
    let others = all_disks(root)
        .filter(|d| !is_managed(d))
        .filter_map(|d| {
            Some(OtherDisk {
                target: d.child("target")?.attr("dev")?.to_string(),
                kind: other_kind(d),
            })
        })
        .collect();
    Ok(ParsedDomain { name, disks, others })
}

/// Returns `xml` with the source file and driver type of each disk named
/// in `sources` (by target) replaced; every other byte is kept.
pub fn set_disk_sources(
    what: &str,
    xml: &str,
    sources: &BTreeMap<String, ChainImage>,
) -> Result<String, XmlError> {
    let root = parse(what, xml)?;
    let mut edits = Vec::new();
    for d in file_disks(&root) {
        let Some(target) = d.child("target").and_then(|t| t.attr("dev")) else {
            continue;
        };
        let Some(img) = sources.get(target) else {
            continue;
        };
        // A `<backingStore>` (libvirt writes one) describes the old chain:
        // the chain is in the image headers.
        for b in d.children_named("backingStore") {
            edits.push((b.start, b.end, String::new()));
        }
        match d.child("source") {
            Some(s) => {
                let mut attrs = s.attrs.clone();
                match attrs.iter_mut().find(|(k, _)| k == "file") {
                    Some(a) => a.1 = img.path.clone(),
                    None => attrs.push(("file".into(), img.path.clone())),
                }
                edits.push((s.start, s.tag_end, render_tag("source", &attrs, s.empty)));
            }
            None => {
                let tag = render_tag("source", &[("file".into(), img.path.clone())], true);
                edits.push((d.tag_end, d.tag_end, tag));
            }
        }
        if let Some(drv) = d.child("driver") {
            let mut attrs = drv.attrs.clone();
            match attrs.iter_mut().find(|(k, _)| k == "type") {
                Some(a) => a.1 = img.format.clone(),
                None => attrs.push(("type".into(), img.format.clone())),
            }
            edits.push((drv.start, drv.tag_end, render_tag("driver", &attrs, drv.empty)));
        } else {
            let tag = render_tag(
                "driver",
                &[
                    ("name".into(), "qemu".into()),
                    ("type".into(), img.format.clone()),
                ],
                true,
            );
            edits.push((d.tag_end, d.tag_end, tag));
        }
    }
    Ok(splice(xml, edits))
}

/// Returns `xml` without the `<backingStore>` elements of its managed
/// disks: libvirt lists a disk's chain there, the journal reads it from
/// the image headers (and keeps no copy that could go stale).
pub fn strip_backing_stores(what: &str, xml: &str) -> Result<String, XmlError> {
    let root = parse(what, xml)?;
    let edits = file_disks(&root)
        .flat_map(|d| d.children_named("backingStore"))
        .map(|b| (b.start, b.end, String::new()))
        .collect();
    Ok(splice(xml, edits))
}

/// The `<domain>` element of `xml` without any XML declaration, for
/// embedding in snapshot and checkpoint documents.
pub fn domain_element_text<'a>(what: &str, xml: &'a str) -> Result<&'a str, XmlError> {
    let root = parse(what, xml)?;
    Ok(&xml[root.start..root.end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"<domain type='kvm'>
  <name>vm1</name>
  <!-- a comment that must survive -->
  <memory unit='KiB'>1048576</memory>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/img/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'><source network='default'/></interface>
    <disk type="file" device="disk">
      <driver name="qemu" type="raw"/>
      <source file="/img/vdb.raw"></source>
      <target dev="vdb" bus="virtio"/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sda'/></disk>
  </devices>
</domain>
"#;

    #[test]
    fn reads_disks() {
        let d = parse_domain("t", DOC).unwrap();
        assert_eq!(d.name, "vm1");
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[0].source.as_deref(), Some("/img/vda.qcow2"));
        assert_eq!(d.disks[1].format.as_deref(), Some("raw"));
        assert_eq!(
            d.others,
            vec![OtherDisk {
                target: "sda".into(),
                kind: "a cdrom".into()
            }]
        );
        assert_eq!(other_disk(DOC, "sda").map(|o| o.kind), Some("a cdrom".into()));
        assert!(other_disk(DOC, "vda").is_none());
    }

    #[test]
    fn rewrites_only_the_sources() {
        let mut m = BTreeMap::new();
        m.insert("vdb".to_string(), ChainImage::qcow2("/img/vdb.s1"));
        let out = set_disk_sources("t", DOC, &m).unwrap();
        let expected = DOC
            .replace(
                r#"<driver name="qemu" type="raw"/>"#,
                "<driver name='qemu' type='qcow2'/>",
            )
            .replace(r#"<source file="/img/vdb.raw">"#, "<source file='/img/vdb.s1'>");
        assert_eq!(out, expected);
        assert!(out.contains("<!-- a comment that must survive -->"));
        let d = parse_domain("t", &out).unwrap();
        assert_eq!(d.disks[1].source.as_deref(), Some("/img/vdb.s1"));
        assert_eq!(d.disks[0].source.as_deref(), Some("/img/vda.qcow2"));
    }

    #[test]
    fn refuses_bad_domains() {
        assert!(parse_domain("t", "<domain/>").is_err());
        assert!(parse_domain("t", "<domainsnapshot><name>x</name></domainsnapshot>").is_err());
        let dup = "<domain><name>a</name><devices><disk><target dev='vda'/></disk><disk><target dev='vda'/></disk></devices></domain>";
        assert!(parse_domain("t", dup).unwrap_err().message.contains("twice"));
    }
}
