//! libvirt `<domainsnapshot>` and `<domainsnapshotrevert>`.

use std::collections::BTreeMap;

use journal::{DiskSnapshotMode, SnapshotRecord};

use super::domain::domain_element_text;
use super::tree::{err, escape, parse};
use crate::error::XmlError;

/// Renders a snapshot as libvirt's `<domainsnapshot>`, with its historic
/// `<domain>` (`domain_xml`, kept by the journal apart from the record)
/// embedded.
pub fn render_snapshot(s: &SnapshotRecord, domain_xml: &str) -> Result<String, XmlError> {
    let mut out = String::from("<domainsnapshot>\n");
    out.push_str(&format!("  <name>{}</name>\n", escape(&s.name)));
    if let Some(d) = &s.description {
        out.push_str(&format!("  <description>{}</description>\n", escape(d)));
    }
    out.push_str(&format!("  <state>{}</state>\n", escape(&s.state)));
    if let Some(p) = &s.parent {
        out.push_str(&format!(
            "  <parent>\n    <name>{}</name>\n  </parent>\n",
            escape(p)
        ));
    }
    out.push_str(&format!("  <creationTime>{}</creationTime>\n", s.creation_time));
    out.push_str("  <memory snapshot='no'/>\n  <disks>\n");
    for d in &s.disks {
        match d.mode {
            DiskSnapshotMode::No => {
                out.push_str(&format!("    <disk name='{}' snapshot='no'/>\n", escape(&d.disk)))
            }
            DiskSnapshotMode::External => {
                out.push_str(&format!(
                    "    <disk name='{}' snapshot='external' type='file'>\n      <driver type='qcow2'/>\n",
                    escape(&d.disk)
                ));
                if let Some(o) = &d.overlay {
                    out.push_str(&format!("      <source file='{}'/>\n", escape(o)));
                }
                out.push_str("    </disk>\n");
            }
        }
    }
    out.push_str("  </disks>\n  ");
    out.push_str(domain_element_text(
        &format!("historic domain of snapshot {}", s.name),
        domain_xml,
    )?);
    out.push_str("\n</domainsnapshot>\n");
    Ok(out)
}

/// One disk of a snapshot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRequest {
    pub disk: String,
    pub mode: DiskSnapshotMode,
    /// The overlay file to create (external; `None`: the default name).
    pub file: Option<String>,
}

/// What a `<domainsnapshot>` given to `snapshot create --xml` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequestXml {
    pub name: Option<String>,
    pub description: Option<String>,
    pub disks: Vec<DiskRequest>,
}

/// A `<domainsnapshot>` read in full, as redefine and round-trip tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSnapshot {
    pub request: SnapshotRequestXml,
    pub state: Option<String>,
    pub parent: Option<String>,
    pub creation_time: Option<i64>,
    /// The embedded `<domain>`, byte for byte.
    pub domain_xml: Option<String>,
}

/// Parses a `<domainsnapshot>`.
pub fn parse_snapshot(what: &str, xml: &str) -> Result<ParsedSnapshot, XmlError> {
    let root = parse(what, xml)?;
    if root.name != "domainsnapshot" {
        return Err(err(
            what,
            format!("root element is <{}>, expected <domainsnapshot>", root.name),
        ));
    }
    if let Some(m) = root.child("memory") {
        if m.attr("snapshot").unwrap_or("no") != "no" {
            return Err(err(
                what,
                "memory snapshots are not supported (only disk-only external snapshots)",
            ));
        }
    }
    let mut disks = Vec::new();
    if let Some(ds) = root.child("disks") {
        for d in ds.children_named("disk") {
            let disk = d
                .attr("name")
                .ok_or_else(|| err(what, "a <disk> has no name attribute"))?
                .to_string();
            if disks.iter().any(|x: &DiskRequest| x.disk == disk) {
                return Err(err(what, format!("disk {disk} is listed twice")));
            }
            let mode = match d.attr("snapshot").unwrap_or("external") {
                "external" => DiskSnapshotMode::External,
                "no" => DiskSnapshotMode::No,
                "internal" => {
                    return Err(err(
                        what,
                        format!("disk {disk}: internal snapshots are not supported (mixed internal/external trees are refused)"),
                    ))
                }
                other => return Err(err(what, format!("disk {disk}: unknown snapshot mode {other:?}"))),
            };
            if mode == DiskSnapshotMode::External {
                // Overlays snapjournal cannot manage are refused by name,
                // never stored as a qcow2 file without a source.
                if let Some(kind) = d.attr("type").filter(|t| *t != "file") {
                    return Err(err(
                        what,
                        format!("disk {disk}: its overlay is of type '{kind}'; snapjournal manages qcow2 overlay files only (exclude the disk with snapshot='no')"),
                    ));
                }
                if let Some(fmt) = d
                    .child("driver")
                    .and_then(|x| x.attr("type"))
                    .filter(|t| *t != "qcow2")
                {
                    return Err(err(
                        what,
                        format!("disk {disk}: its overlay is a {fmt} image; snapjournal manages qcow2 overlays only"),
                    ));
                }
                if d.child("source")
                    .is_some_and(|x| x.attr("file").is_none_or(str::is_empty))
                {
                    return Err(err(what, format!("disk {disk}: <source> names no overlay file")));
                }
            }
            let file = d.child("source").and_then(|s| s.attr("file")).map(String::from);
            disks.push(DiskRequest { disk, mode, file });
        }
    }
    let domain_xml = root.child("domain").map(|d| xml[d.start..d.end].to_string());
    let creation_time = match root.child_text("creationTime") {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| err(what, format!("creationTime {t:?} is not a number")))?,
        ),
        None => None,
    };
    Ok(ParsedSnapshot {
        request: SnapshotRequestXml {
            name: root.child_text("name"),
            description: root.child("description").map(|d| d.text.clone()),
            disks,
        },
        state: root.child_text("state"),
        parent: root.child("parent").and_then(|p| p.child_text("name")),
        creation_time,
        domain_xml,
    })
}

/// Parses `<domainsnapshotrevert><disks><disk name='vda'><source
/// file='…'/></disk></disks></domainsnapshotrevert>`: the overlay file to
/// create for each named disk.
pub fn parse_revert(what: &str, xml: &str) -> Result<BTreeMap<String, String>, XmlError> {
    let root = parse(what, xml)?;
    if root.name != "domainsnapshotrevert" {
        return Err(err(
            what,
            format!("root element is <{}>, expected <domainsnapshotrevert>", root.name),
        ));
    }
    let mut out = BTreeMap::new();
    if let Some(ds) = root.child("disks") {
        for d in ds.children_named("disk") {
            let disk = d
                .attr("name")
                .ok_or_else(|| err(what, "a <disk> has no name attribute"))?;
            let file = d
                .child("source")
                .and_then(|s| s.attr("file"))
                .ok_or_else(|| err(what, format!("disk {disk} has no <source file='…'/>")))?;
            if out.insert(disk.to_string(), file.to_string()).is_some() {
                return Err(err(what, format!("disk {disk} is listed twice")));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal::{ChainImage, SnapshotDisk};

    fn record() -> SnapshotRecord {
        SnapshotRecord {
            name: "s1".into(),
            description: Some("before <upgrade> & more".into()),
            creation_time: 1700000000,
            state: "shutoff".into(),
            parent: Some("s0".into()),
            disks: vec![
                SnapshotDisk {
                    disk: "vda".into(),
                    mode: DiskSnapshotMode::External,
                    overlay: Some("/img/vda.s1".into()),
                    frozen: Some(ChainImage::qcow2("/img/vda.qcow2")),
                },
                SnapshotDisk {
                    disk: "vdb".into(),
                    mode: DiskSnapshotMode::No,
                    overlay: None,
                    frozen: None,
                },
            ],
        }
    }

    const DOMAIN: &str = "<?xml version='1.0'?>\n<domain type='kvm'><name>vm</name></domain>";

    #[test]
    fn render_then_parse() {
        let xml = render_snapshot(&record(), DOMAIN).unwrap();
        let p = parse_snapshot("t", &xml).unwrap();
        assert_eq!(p.request.name.as_deref(), Some("s1"));
        assert_eq!(p.request.description.as_deref(), Some("before <upgrade> & more"));
        assert_eq!(p.parent.as_deref(), Some("s0"));
        assert_eq!(p.creation_time, Some(1700000000));
        assert_eq!(p.request.disks[0].file.as_deref(), Some("/img/vda.s1"));
        assert_eq!(p.request.disks[1].mode, DiskSnapshotMode::No);
        assert_eq!(
            p.domain_xml.as_deref(),
            Some("<domain type='kvm'><name>vm</name></domain>")
        );
    }

    #[test]
    fn revert_xml() {
        let m = parse_revert(
            "t",
            "<domainsnapshotrevert><disks><disk name='vda'><source file='/x/a'/></disk></disks></domainsnapshotrevert>",
        )
        .unwrap();
        assert_eq!(m["vda"], "/x/a");
        assert!(parse_revert(
            "t",
            "<domainsnapshotrevert><disks><disk name='vda'/></disks></domainsnapshotrevert>"
        )
        .is_err());
    }

    #[test]
    fn refuses_internal_and_memory() {
        let x = "<domainsnapshot><disks><disk name='vda' snapshot='internal'/></disks></domainsnapshot>";
        assert!(parse_snapshot("t", x).unwrap_err().message.contains("internal"));
        let x = "<domainsnapshot><memory snapshot='external' file='/m'/></domainsnapshot>";
        assert!(parse_snapshot("t", x).is_err());
    }
}
