//! Human and JSON output.

use journal::{DomainState, HistoryEntry, Outcome, State};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Where results go.
pub struct Out {
    pub json: bool,
}

impl Out {
    /// A finished command: JSON object or a line for a person.
    pub fn done(&self, v: Value, human: &str) {
        if self.json {
            println!("{v}");
        } else {
            println!("{human}");
        }
    }

    /// A report: JSON value or preformatted text.
    pub fn report(&self, v: Value, human: &str) {
        if self.json {
            println!("{v}");
        } else {
            print!("{human}");
        }
    }

    /// Raw text (XML), the same in both modes.
    pub fn raw(&self, s: &str) {
        print!("{s}");
        if !s.ends_with('\n') {
            println!();
        }
    }

    /// A note on stderr.
    pub fn note(&self, s: &str) {
        if !self.json {
            eprintln!("{s}");
        }
    }

    /// An error.
    pub fn error(&self, s: &str) {
        if self.json {
            println!("{}", json!({"error": s}));
        } else {
            eprintln!("error: {s}");
        }
    }
}

/// `domain list`.
pub fn domain_list(out: &Out, state: &State) {
    if out.json {
        let v: Vec<Value> = state
            .domains
            .values()
            .map(|d| {
                json!({"name": d.core.name, "disks": d.core.disks.keys().collect::<Vec<_>>(),
                       "snapshots": d.snapshots.len(), "current": d.core.current_snapshot,
                       "running": d.core.runtime.is_some()})
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    println!("{:<24} {:<8} {:>9}  current", "Name", "State", "Snapshots");
    for d in state.domains.values() {
        println!(
            "{:<24} {:<8} {:>9}  {}",
            d.core.name,
            if d.core.runtime.is_some() {
                "running"
            } else {
                "shut off"
            },
            d.snapshots.len(),
            d.core.current_snapshot.as_deref().unwrap_or("-")
        );
    }
}

/// `snapshot list [--tree]`.
pub fn snapshot_list(out: &Out, d: &DomainState, tree: bool) {
    if out.json {
        let v: Vec<Value> = d
            .snapshots
            .values()
            .map(|s| {
                json!({"name": s.name, "parent": s.parent, "creation_time": s.creation_time, "state": s.state,
                       "current": d.core.current_snapshot.as_deref() == Some(s.name.as_str()),
                       "description": s.description})
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    let mut text = String::new();
    if tree {
        render_tree(d, &mut text);
        print_text(&text);
        return;
    }
    let _ = writeln!(
        text,
        "{:<24} {:<20} {:<14} Parent",
        "Name", "Creation Time (UTC)", "State"
    );
    let mut snaps: Vec<_> = d.snapshots.values().collect();
    snaps.sort_by(|a, b| (a.creation_time, &a.name).cmp(&(b.creation_time, &b.name)));
    for s in snaps {
        let mark = if d.core.current_snapshot.as_deref() == Some(s.name.as_str()) {
            " *"
        } else {
            ""
        };
        let _ = writeln!(
            text,
            "{:<24} {:<20} {:<14} {}",
            format!("{}{mark}", s.name),
            utc(s.creation_time),
            s.state,
            s.parent.as_deref().unwrap_or("-")
        );
    }
    print_text(&text);
}

/// Writes a listing to stdout in one go; a reader that stopped early (a
/// closed pipe, as with `| head`) is not an error.
fn print_text(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Renders the snapshot tree.
pub fn render_tree(d: &DomainState, out: &mut String) {
    let current = d.core.current_snapshot.as_deref();
    let items: Vec<TreeItem> = d
        .snapshots
        .values()
        .map(|s| TreeItem {
            name: &s.name,
            parent: s.parent.as_deref(),
            mark: if current == Some(s.name.as_str()) {
                " (current)"
            } else {
                ""
            },
        })
        .collect();
    render_forest(&items, out);
}

/// One node of a rendered tree.
pub struct TreeItem<'a> {
    pub name: &'a str,
    pub parent: Option<&'a str>,
    pub mark: &'a str,
}

/// Renders a forest in the items' order among siblings. An item whose
/// parent is not among the items (cannot happen through snapjournal) is
/// shown as a root rather than hidden. Children are indexed once and the
/// walk is iterative with one shared indent buffer, so long histories cost
/// linear time, no deep recursion and no string per line.
pub fn render_forest(items: &[TreeItem], out: &mut String) {
    let index: std::collections::HashMap<&str, usize> =
        items.iter().enumerate().map(|(i, s)| (s.name, i)).collect();
    let mut roots = Vec::new();
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); items.len()];
    for (i, s) in items.iter().enumerate() {
        match s.parent.and_then(|p| index.get(p)) {
            Some(&p) if p != i => kids[p].push(i),
            _ => roots.push(i),
        }
    }
    // (item, length of its indent in `indent`, whether it is a root, last sibling)
    let mut stack: Vec<(usize, usize, bool, bool)> = Vec::new();
    for (n, &r) in roots.iter().enumerate().rev() {
        stack.push((r, 0, true, n + 1 == roots.len()));
    }
    let mut indent = String::new();
    while let Some((i, indent_len, root, last)) = stack.pop() {
        // The buffer holds the indent of the item printed last, which
        // begins with this item's indent (depth-first order).
        indent.truncate(indent_len);
        let s = &items[i];
        out.push_str(&indent);
        if !root {
            out.push_str(if last { "└── " } else { "├── " });
            indent.push_str(if last { "    " } else { "│   " });
        }
        out.push_str(s.name);
        out.push_str(s.mark);
        out.push('\n');
        let children = &kids[i];
        for (n, &c) in children.iter().enumerate().rev() {
            stack.push((c, indent.len(), false, n + 1 == children.len()));
        }
    }
}

/// `checkpoint list`: the newest checkpoint (whose bitmaps record writes)
/// is marked.
pub fn checkpoint_list(out: &Out, d: &DomainState, tree: bool) {
    let newest = d.newest_checkpoint(None).map(|c| c.name.as_str());
    if out.json {
        let v: Vec<Value> = d
            .checkpoints
            .values()
            .map(|c| {
                json!({"name": c.name, "parent": c.parent, "creation_time": c.creation_time,
                       "description": c.description, "newest": newest == Some(c.name.as_str()),
                       "disks": c.disks.iter().map(|(disk, b)| json!({"disk": disk,
                           "checkpoint": if b.is_empty() { "no" } else { "bitmap" },
                           "bitmap": if b.is_empty() { None } else { Some(b) }})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    if tree {
        let items: Vec<TreeItem> = d
            .checkpoints
            .values()
            .map(|c| TreeItem {
                name: &c.name,
                parent: c.parent.as_deref().filter(|p| d.checkpoints.contains_key(*p)),
                mark: if newest == Some(c.name.as_str()) {
                    " (newest)"
                } else {
                    ""
                },
            })
            .collect();
        let mut text = String::new();
        render_forest(&items, &mut text);
        print_text(&text);
        return;
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<24} {:<20} {:<16} Disks",
        "Name", "Creation Time (UTC)", "Parent"
    );
    let mut cps: Vec<_> = d.checkpoints.values().collect();
    cps.sort_by(|a, b| (a.creation_time, &a.name).cmp(&(b.creation_time, &b.name)));
    for c in cps {
        let mark = if newest == Some(c.name.as_str()) { " *" } else { "" };
        let disks: Vec<String> = c.bitmaps().map(|(disk, b)| format!("{disk}:{b}")).collect();
        let _ = writeln!(
            text,
            "{:<24} {:<20} {:<16} {}",
            format!("{}{mark}", c.name),
            utc(c.creation_time),
            c.parent.as_deref().unwrap_or("-"),
            disks.join(" ")
        );
    }
    print_text(&text);
}

/// `domain history`.
pub fn history(out: &Out, h: &[HistoryEntry]) {
    if out.json {
        let v: Vec<Value> = h
            .iter()
            .map(|e| {
                json!({"txn": e.txn.to_string(), "what": e.what, "actor": e.actor, "began_ms": e.began_ms,
                       "ended_ms": e.ended_ms, "outcome": match &e.outcome {
                           Outcome::Open => "open".to_string(), Outcome::Finished => "finished".into(),
                           Outcome::Aborted { reason } => format!("aborted: {reason}") }})
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    for e in h {
        let outcome = match &e.outcome {
            Outcome::Open => "open".to_string(),
            Outcome::Finished => "finished".into(),
            Outcome::Aborted { reason } => format!("aborted: {reason}"),
        };
        println!(
            "{} {} {} by {}: {outcome}",
            e.txn,
            utc((e.began_ms / 1000) as i64),
            e.what,
            e.actor
        );
    }
}

/// `fsck`.
pub fn fsck(out: &Out, r: &recovery::FsckReport) {
    if out.json {
        println!(
            "{}",
            json!({"findings": r.findings, "could_not_check": r.could_not_check, "exit_code": r.exit_code()})
        );
        return;
    }
    if r.findings.is_empty() && r.could_not_check.is_empty() {
        println!("clean: every invariant holds");
    }
    for f in &r.findings {
        println!(
            "{} {} {}: {}\n    repair: {}{}",
            f.invariant,
            f.kind,
            f.subject,
            f.message,
            f.repair,
            if f.repaired { " (done)" } else { "" }
        );
    }
    for c in &r.could_not_check {
        println!("could not check: {c}");
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the Unix epoch.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{render_forest, utc, TreeItem};

    fn item<'a>(name: &'a str, parent: Option<&'a str>) -> TreeItem<'a> {
        TreeItem {
            name,
            parent,
            mark: "",
        }
    }

    #[test]
    fn forest_shape() {
        // a ── b ── d, a ── c; e is a second root; f's parent is unknown
        // (shown as a root); g's is itself.
        let items = [
            item("a", None),
            item("b", Some("a")),
            item("c", Some("a")),
            item("d", Some("b")),
            item("e", None),
            item("f", Some("gone")),
            TreeItem {
                name: "g",
                parent: Some("g"),
                mark: " (current)",
            },
            item("h", Some("d")),
            item("i", Some("c")),
        ];
        let mut out = String::new();
        render_forest(&items, &mut out);
        assert_eq!(
            out,
            "a\n├── b\n│   └── d\n│       └── h\n└── c\n    └── i\ne\nf\ng (current)\n"
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
    }
}
