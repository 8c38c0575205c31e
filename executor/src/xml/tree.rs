//! A small read-only element tree over a document, with the byte span of
//! every element, so that edits can splice new text into the original
//! document and leave every other byte untouched.

use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};

use crate::error::XmlError;

/// Largest document accepted, in bytes.
pub const MAX_XML_LEN: usize = 16 * 1024 * 1024;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 64;

/// One element of a parsed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// The element's own text (entities resolved, whitespace kept).
    pub text: String,
    /// Byte offset of the `<` that opens the element.
    pub start: usize,
    /// Byte offset just after the start tag (`>` or `/>`).
    pub tag_end: usize,
    /// Byte offset just after the element (its end tag, or the empty tag).
    pub end: usize,
    /// Whether the element was written `<x/>`.
    pub empty: bool,
}

impl Element {
    /// Whether two elements say the same thing: the same names, the same
    /// attributes in any order and quoting, the same text up to line
    /// endings and surrounding whitespace, the same children in order.
    pub fn same_content(&self, other: &Element) -> bool {
        let norm = |t: &str| t.replace("\r\n", "\n").trim().to_string();
        let mut a = self.attrs.clone();
        let mut b = other.attrs.clone();
        a.sort();
        b.sort();
        self.name == other.name
            && a == b
            && norm(&self.text) == norm(&other.text)
            && self.children.len() == other.children.len()
            && self
                .children
                .iter()
                .zip(&other.children)
                .all(|(x, y)| x.same_content(y))
    }

    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child called `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of the first child called `name`.
    pub fn child_text(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text.trim().to_string())
    }
}

/// An XML error naming the document.
pub(crate) fn err(what: &str, message: impl Into<String>) -> XmlError {
    XmlError {
        what: what.to_string(),
        message: message.into(),
    }
}

fn resolve_entity(what: &str, name: &str) -> Result<char, XmlError> {
    match name {
        "amp" => Ok('&'),
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        other => Err(err(what, format!("unknown entity &{other};"))),
    }
}

/// Parses `xml` (named `what` in errors) into its root element.
pub fn parse(what: &str, xml: &str) -> Result<Element, XmlError> {
    if xml.len() > MAX_XML_LEN {
        return Err(err(
            what,
            format!(
                "document is {} bytes, more than the {MAX_XML_LEN} accepted",
                xml.len()
            ),
        ));
    }
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let pos = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| {
            err(
                what,
                format!("malformed XML at byte {}: {e}", reader.error_position()),
            )
        })?;
        let here = reader.buffer_position() as usize;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let name = e.name().as_ref().to_string();
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| err(what, format!("bad attribute in <{name}>: {e}")))?;
                    let v = a
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map_err(|e| err(what, format!("bad attribute value in <{name}>: {e}")))?;
                    attrs.push((a.key.as_ref().to_string(), v.into_owned()));
                }
                if root.is_some() {
                    return Err(err(what, "content after the root element"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(err(what, format!("elements nested deeper than {MAX_DEPTH}")));
                }
                let el = Element {
                    name,
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                    start: pos,
                    tag_end: here,
                    end: here,
                    empty,
                };
                if empty {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => root = Some(el),
                    }
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let mut el = stack.pop().ok_or_else(|| err(what, "unbalanced end tag"))?;
                el.end = here;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                } else if !t.xml10_content().trim().is_empty() {
                    return Err(err(what, "text outside the root element"));
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => resolve_entity(what, &r)?,
                    Err(e) => return Err(err(what, format!("bad character reference: {e}"))),
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(c);
                }
            }
            Event::DocType(_) => return Err(err(what, "DOCTYPE declarations are not accepted")),
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(err(
            what,
            format!("unclosed element <{}>", stack[stack.len() - 1].name),
        ));
    }
    root.ok_or_else(|| err(what, "no root element"))
}

/// Escapes text for element content or a quoted attribute value.
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Renders a start (or empty) tag with the given attributes, quoting with
/// `'` as libvirt does.
pub fn render_tag(name: &str, attrs: &[(String, String)], empty: bool) -> String {
    let mut out = format!("<{name}");
    for (k, v) in attrs {
        out.push_str(&format!(" {k}='{}'", escape(v)));
    }
    out.push_str(if empty { "/>" } else { ">" });
    out
}

/// Replaces byte ranges of `doc`; ranges must not overlap.
pub fn splice(doc: &str, mut edits: Vec<(usize, usize, String)>) -> String {
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(doc.len() + 64);
    let mut at = 0;
    for (from, to, text) in edits {
        out.push_str(&doc[at..from]);
        out.push_str(&text);
        at = to;
    }
    out.push_str(&doc[at..]);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn same_content_ignores_quoting_order_and_line_endings() {
        let a = parse("a", "<d x='1' y=\"2\">\n  <n>vm</n>\n</d>").unwrap();
        let b = parse("b", "<d y='2' x=\"1\">\r\n  <n>vm</n>\r\n</d>").unwrap();
        assert!(a.same_content(&b));
        let c = parse("c", "<d x='1' y='3'><n>vm</n></d>").unwrap();
        assert!(!a.same_content(&c));
        let d = parse("d", "<d x='1' y='2'><n>vm2</n></d>").unwrap();
        assert!(!a.same_content(&d));
    }

    use super::*;

    #[test]
    fn spans_and_text() {
        let doc = "<?xml version='1.0'?>\n<a x='1 &amp; 2'><b>t&lt;x</b><c/></a>\n";
        let root = parse("test", doc).unwrap();
        assert_eq!(root.name, "a");
        assert_eq!(root.attr("x"), Some("1 & 2"));
        let b = root.child("b").unwrap();
        assert_eq!(b.text, "t<x");
        assert_eq!(&doc[b.start..b.end], "<b>t&lt;x</b>");
        let c = root.child("c").unwrap();
        assert_eq!(&doc[c.start..c.end], "<c/>");
        assert!(c.empty);
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<!DOCTYPE x><a/>",
            "<a>&foo;</a>",
        ] {
            assert!(parse("test", bad).is_err(), "{bad:?}");
        }
        let big = format!("<a>{}</a>", "x".repeat(MAX_XML_LEN));
        assert!(parse("test", &big).unwrap_err().message.contains("more than"));
    }
}
