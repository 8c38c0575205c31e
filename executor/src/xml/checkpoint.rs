//! libvirt `<domaincheckpoint>`.

use journal::CheckpointRecord;

use super::domain::domain_element_text;
use super::tree::{err, escape, parse};
use crate::error::XmlError;

/// Renders a checkpoint as libvirt's `<domaincheckpoint>`, with the
/// historic `<domain>` embedded.
pub fn render_checkpoint(c: &CheckpointRecord, domain_xml: &str) -> Result<String, XmlError> {
    let mut out = String::from("<domaincheckpoint>\n");
    out.push_str(&format!("  <name>{}</name>\n", escape(&c.name)));
    if let Some(d) = &c.description {
        out.push_str(&format!("  <description>{}</description>\n", escape(d)));
    }
    if let Some(p) = &c.parent {
        out.push_str(&format!(
            "  <parent>\n    <name>{}</name>\n  </parent>\n",
            escape(p)
        ));
    }
    out.push_str(&format!("  <creationTime>{}</creationTime>\n", c.creation_time));
    out.push_str("  <disks>\n");
    for (disk, bitmap) in &c.disks {
        if bitmap.is_empty() {
            out.push_str(&format!("    <disk name='{}' checkpoint='no'/>\n", escape(disk)));
        } else {
            out.push_str(&format!(
                "    <disk name='{}' checkpoint='bitmap' bitmap='{}'/>\n",
                escape(disk),
                escape(bitmap)
            ));
        }
    }
    out.push_str("  </disks>\n  ");
    out.push_str(domain_element_text(
        &format!("historic domain of checkpoint {}", c.name),
        domain_xml,
    )?);
    out.push_str("\n</domaincheckpoint>\n");
    Ok(out)
}

/// A `<domaincheckpoint>` read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCheckpoint {
    pub name: Option<String>,
    pub description: Option<String>,
    pub parent: Option<String>,
    pub creation_time: Option<i64>,
    /// (disk, bitmap name; empty for `checkpoint='no'`). A disk with
    /// `checkpoint='bitmap'` and no bitmap attribute gets the checkpoint's
    /// name, as in libvirt.
    pub disks: Vec<(String, String)>,
    /// The embedded `<domain>`, byte for byte.
    pub domain_xml: Option<String>,
}

/// Parses a `<domaincheckpoint>`.
pub fn parse_checkpoint(what: &str, xml: &str) -> Result<ParsedCheckpoint, XmlError> {
    let root = parse(what, xml)?;
    if root.name != "domaincheckpoint" {
        return Err(err(
            what,
            format!("root element is <{}>, expected <domaincheckpoint>", root.name),
        ));
    }
    let name = root.child_text("name");
    let mut disks: Vec<(String, String)> = Vec::new();
    if let Some(ds) = root.child("disks") {
        for d in ds.children_named("disk") {
            let disk = d
                .attr("name")
                .ok_or_else(|| err(what, "a <disk> has no name attribute"))?
                .to_string();
            if disks.iter().any(|(x, _)| *x == disk) {
                return Err(err(what, format!("disk {disk} is listed twice")));
            }
            let bitmap = match d.attr("checkpoint").unwrap_or("bitmap") {
                "no" => String::new(),
                "bitmap" => match d.attr("bitmap") {
                    Some(b) if !b.is_empty() => b.to_string(),
                    Some(_) => return Err(err(what, format!("disk {disk}: empty bitmap name"))),
                    None => name.clone().unwrap_or_default(),
                },
                other => {
                    return Err(err(
                        what,
                        format!("disk {disk}: unknown checkpoint mode {other:?}"),
                    ))
                }
            };
            disks.push((disk, bitmap));
        }
    }
    let creation_time = match root.child_text("creationTime") {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| err(what, format!("creationTime {t:?} is not a number")))?,
        ),
        None => None,
    };
    Ok(ParsedCheckpoint {
        name,
        description: root.child("description").map(|d| d.text.clone()),
        parent: root.child("parent").and_then(|p| p.child_text("name")),
        creation_time,
        disks,
        domain_xml: root.child("domain").map(|d| xml[d.start..d.end].to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CheckpointRecord {
        CheckpointRecord {
            name: "c2".into(),
            description: Some("after <updates> & more".into()),
            creation_time: 1_525_889_631,
            parent: Some("c1".into()),
            disks: vec![("vda".into(), "c2".into()), ("vdb".into(), String::new())],
        }
    }

    const DOMAIN: &str = "<domain type='kvm'><name>d</name></domain>";

    #[test]
    fn render_then_parse() {
        let c = record();
        let xml = render_checkpoint(&c, DOMAIN).unwrap();
        let p = parse_checkpoint("test", &xml).unwrap();
        assert_eq!(p.name.as_deref(), Some("c2"));
        assert_eq!(p.description, c.description);
        assert_eq!(p.parent.as_deref(), Some("c1"));
        assert_eq!(p.creation_time, Some(c.creation_time));
        assert_eq!(p.disks, c.disks);
        assert_eq!(p.domain_xml.as_deref(), Some(DOMAIN));
    }

    #[test]
    fn default_bitmap_name_and_bad_input() {
        let p = parse_checkpoint(
            "t",
            "<domaincheckpoint><name>x</name><disks><disk name='vda'/></disks></domaincheckpoint>",
        )
        .unwrap();
        assert_eq!(p.disks, vec![("vda".to_string(), "x".to_string())]);
        for bad in [
            "<domainsnapshot/>",
            "<domaincheckpoint><disks><disk checkpoint='no'/></disks></domaincheckpoint>",
            "<domaincheckpoint><disks><disk name='a' checkpoint='x'/></disks></domaincheckpoint>",
            "<domaincheckpoint><disks><disk name='a'/><disk name='a'/></disks></domaincheckpoint>",
            "<domaincheckpoint><creationTime>soon</creationTime></domaincheckpoint>",
        ] {
            assert!(parse_checkpoint("t", bad).is_err(), "{bad}");
        }
    }
}
