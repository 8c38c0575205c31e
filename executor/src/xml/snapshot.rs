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
    render_snapshot_with(s, domain_xml, None)
}

/// The parts of a redefined `<domainsnapshot>` the record does not model,
/// kept as written so the document round-trips: per disk, what was inside
/// its `<source>` (a `<seclabel>`) and `<driver>` (a `<metadata_cache>`),
/// the whole entry of a disk the record leaves out (a cdrom's
/// `snapshot='no'`), and the `<inactiveDomain>` and `<cookie>` elements.
/// Stored by the journal beside the historic `<domain>` as one small
/// document, `<extras>…</extras>` (see [`parse_extras`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotExtras {
    /// disk → (inside `<source>`, inside `<driver>`, the whole `<disk>`
    /// element when the record does not carry the disk).
    pub disks: BTreeMap<String, DiskExtras>,
    /// `<inactiveDomain>…</inactiveDomain>`, as written.
    pub inactive_domain: Option<String>,
    /// `<cookie>…</cookie>`, as written.
    pub cookie: Option<String>,
}

/// What a snapshot document said about one disk beyond the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskExtras {
    pub source_inner: Option<String>,
    pub driver_inner: Option<String>,
    pub whole: Option<String>,
}

impl SnapshotExtras {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.disks.is_empty() && self.inactive_domain.is_none() && self.cookie.is_none()
    }

    /// The document the journal stores.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<extras>\n");
        for (name, d) in &self.disks {
            out.push_str(&format!("<disk name='{}'>", escape(name)));
            if let Some(x) = &d.source_inner {
                out.push_str(&format!("<source>{x}</source>"));
            }
            if let Some(x) = &d.driver_inner {
                out.push_str(&format!("<driver>{x}</driver>"));
            }
            if let Some(x) = &d.whole {
                out.push_str(&format!("<whole>{x}</whole>"));
            }
            out.push_str("</disk>\n");
        }
        for x in [&self.inactive_domain, &self.cookie].into_iter().flatten() {
            out.push_str(x);
            out.push('\n');
        }
        out.push_str("</extras>\n");
        out
    }
}

/// The text inside element `e` of `xml` (`None` for `<x/>`).
fn inner<'a>(xml: &'a str, e: &super::tree::Element) -> Option<&'a str> {
    if e.empty {
        return None;
    }
    let close = format!("</{}", e.name);
    let body = &xml[e.tag_end..e.end];
    let at = body.rfind(&close)?;
    Some(&body[..at]).filter(|t| !t.trim().is_empty())
}

/// Reads a stored `<extras>` document back.
pub fn parse_extras(what: &str, xml: &str) -> Result<SnapshotExtras, XmlError> {
    let root = parse(what, xml)?;
    let mut out = SnapshotExtras::default();
    for c in &root.children {
        match c.name.as_str() {
            "disk" => {
                let name = c.attr("name").unwrap_or_default().to_string();
                let d = DiskExtras {
                    source_inner: c.child("source").and_then(|x| inner(xml, x)).map(String::from),
                    driver_inner: c.child("driver").and_then(|x| inner(xml, x)).map(String::from),
                    whole: c.child("whole").and_then(|x| inner(xml, x)).map(String::from),
                };
                out.disks.insert(name, d);
            }
            "inactiveDomain" => out.inactive_domain = Some(xml[c.start..c.end].to_string()),
            "cookie" => out.cookie = Some(xml[c.start..c.end].to_string()),
            _ => {}
        }
    }
    Ok(out)
}

/// Renders a snapshot with the parts a redefined document carried beyond
/// the record ([`SnapshotExtras`]).
pub fn render_snapshot_with(
    s: &SnapshotRecord,
    domain_xml: &str,
    extras: Option<&SnapshotExtras>,
) -> Result<String, XmlError> {
    let none = SnapshotExtras::default();
    let extras = extras.unwrap_or(&none);
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
                let x = extras.disks.get(&d.disk);
                out.push_str(&format!(
                    "    <disk name='{}' snapshot='external' type='file'>\n",
                    escape(&d.disk)
                ));
                match x.and_then(|x| x.driver_inner.as_deref()) {
                    Some(inner) => out.push_str(&format!("      <driver type='qcow2'>{inner}</driver>\n")),
                    None => out.push_str("      <driver type='qcow2'/>\n"),
                }
                if let Some(o) = &d.overlay {
                    match x.and_then(|x| x.source_inner.as_deref()) {
                        Some(inner) => {
                            out.push_str(&format!("      <source file='{}'>{inner}</source>\n", escape(o)))
                        }
                        None => out.push_str(&format!("      <source file='{}'/>\n", escape(o))),
                    }
                }
                out.push_str("    </disk>\n");
            }
        }
    }
    // Entries of disks the record does not carry (a cdrom's
    // snapshot='no'), as they were written.
    for (name, x) in &extras.disks {
        if let Some(whole) = &x.whole {
            if !s.disks.iter().any(|d| &d.disk == name) {
                out.push_str(&format!("    {whole}\n"));
            }
        }
    }
    out.push_str("  </disks>\n  ");
    out.push_str(domain_element_text(
        &format!("historic domain of snapshot {}", s.name),
        domain_xml,
    )?);
    for x in [&extras.inactive_domain, &extras.cookie].into_iter().flatten() {
        out.push_str("\n  ");
        out.push_str(x);
    }
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
    /// What the record does not model, kept for the round trip.
    pub extras: SnapshotExtras,
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
    let mut extras = SnapshotExtras {
        inactive_domain: root
            .child("inactiveDomain")
            .map(|e| xml[e.start..e.end].to_string()),
        cookie: root.child("cookie").map(|e| xml[e.start..e.end].to_string()),
        ..Default::default()
    };
    if let Some(ds) = root.child("disks") {
        for d in ds.children_named("disk") {
            if let Some(name) = d.attr("name") {
                let x = DiskExtras {
                    source_inner: d.child("source").and_then(|e| inner(xml, e)).map(String::from),
                    driver_inner: d.child("driver").and_then(|e| inner(xml, e)).map(String::from),
                    whole: (d.attr("snapshot") == Some("no")).then(|| xml[d.start..d.end].to_string()),
                };
                if x != DiskExtras::default() {
                    extras.disks.insert(name.to_string(), x);
                }
            }
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
        extras,
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
