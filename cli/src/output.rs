//! Human and JSON output.

use journal::{DomainState, HistoryEntry, Outcome, State};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Where a command's output goes: this process's stdout and stderr, or
/// the client of a server (as [`crate::api::Frame`]s).
pub enum Sink {
    /// Printed here.
    Stdio,
    /// Sent to a client, frame by frame (see [`RemoteSend`]).
    Remote(RemoteSend),
}

/// Sends a frame to a remote client; with `delivered`, returns only once
/// the frame is in the client's socket (or the client is gone).
pub type RemoteSend = Box<dyn Fn(crate::api::Frame, bool) + Send + Sync>;

/// Where results go.
pub struct Out {
    pub json: bool,
    sink: Sink,
    /// The last JSON value emitted (a served request returns it as the
    /// reply's `result`).
    result: std::sync::Mutex<Option<Value>>,
}

impl Out {
    /// Output to this process's stdout and stderr.
    pub fn stdio(json: bool) -> Out {
        Out {
            json,
            sink: Sink::Stdio,
            result: std::sync::Mutex::new(None),
        }
    }

    /// Output sent to a remote client.
    pub fn remote(json: bool, send: RemoteSend) -> Out {
        Out {
            json,
            sink: Sink::Remote(send),
            result: std::sync::Mutex::new(None),
        }
    }

    /// The last JSON value emitted.
    pub fn take_result(&self) -> Option<Value> {
        self.result.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Writes to this process's stdout or stderr, or sends the frame. A
    /// reader that stopped early (a closed pipe, as with `| head`) is not
    /// an error.
    fn emit(&self, s: &str, stderr: bool) {
        use std::io::Write as _;
        match &self.sink {
            Sink::Stdio if stderr => {
                let mut o = std::io::stderr().lock();
                let _ = o.write_all(s.as_bytes()).and_then(|()| o.flush());
            }
            Sink::Stdio => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(s.as_bytes()).and_then(|()| o.flush());
            }
            Sink::Remote(send) if stderr => send(crate::api::Frame::Stderr { text: s.to_string() }, false),
            Sink::Remote(send) => send(crate::api::Frame::Stdout { text: s.to_string() }, false),
        }
    }

    /// Text for stdout, as is.
    pub fn text(&self, s: &str) {
        self.emit(s, false);
    }

    /// A line for stdout.
    pub fn line(&self, s: &str) {
        self.text(&format!("{s}\n"));
    }

    /// Text for stderr, as is.
    pub fn err_text(&self, s: &str) {
        self.emit(s, true);
    }

    /// Keeps `v` as the command's result.
    fn keep(&self, v: Value) {
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }

    /// A JSON value on stdout (one line), kept as the result.
    pub fn value(&self, v: Value) {
        self.line(&v.to_string());
        self.keep(v);
    }

    /// A block job's progress: a JSON line on stderr with `--json` here,
    /// a frame for a remote client.
    pub fn progress(&self, p: &executor::live::JobProgress) {
        match &self.sink {
            Sink::Stdio => {}
            Sink::Remote(send) => send(
                crate::api::Frame::Progress {
                    progress: serde_json::to_value(p).unwrap_or(Value::Null),
                },
                false,
            ),
        }
    }

    /// A transaction began (told to a remote client only: the CLI prints
    /// the id when the operation ends). Returns once the frame is in the
    /// client's socket: a server that dies after this still has told its
    /// client which transaction recovery will finish.
    pub fn began(&self, txn: &str, what: &str) {
        if let Sink::Remote(send) = &self.sink {
            send(
                crate::api::Frame::Began {
                    txn: txn.to_string(),
                    what: what.to_string(),
                },
                true,
            );
        }
    }

    /// Whether output goes to a remote client.
    pub fn is_remote(&self) -> bool {
        matches!(self.sink, Sink::Remote(_))
    }

    /// A finished command: JSON object or a line for a person.
    pub fn done(&self, v: Value, human: &str) {
        if self.json {
            self.value(v);
        } else {
            self.keep(v);
            self.line(human);
        }
    }

    /// A report: JSON value or preformatted text.
    pub fn report(&self, v: Value, human: &str) {
        if self.json {
            self.value(v);
        } else {
            self.keep(v);
            self.text(human);
        }
    }

    /// Raw text (XML), the same in both modes.
    pub fn raw(&self, s: &str) {
        self.keep(Value::String(s.to_string()));
        if s.ends_with('\n') {
            self.text(s);
        } else {
            self.text(&format!("{s}\n"));
        }
    }

    /// A note on stderr.
    pub fn note(&self, s: &str) {
        if !self.json {
            self.err_text(&format!("{s}\n"));
        }
    }

    /// A failed command's error: with `--json`, its kind, domain,
    /// transaction and whether anything changed beside the message.
    pub fn failed(&self, e: &crate::api::ApiError) {
        if self.json {
            self.line(
                &json!({"error": e.message, "kind": e.kind, "domain": e.domain, "txn": e.txn, "changed": e.changed, "reason": e.reason})
                    .to_string(),
            );
        } else {
            self.err_text(&format!("error: {}\n", e.message));
        }
    }

    /// An error.
    pub fn error(&self, s: &str) {
        if self.json {
            self.line(&json!({"error": s}).to_string());
        } else {
            self.err_text(&format!("error: {s}\n"));
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
        out.value(Value::Array(v));
        return;
    }
    out.line(&format!(
        "{:<24} {:<8} {:>9}  current",
        "Name", "State", "Snapshots"
    ));
    for d in state.domains.values() {
        out.line(&format!(
            "{:<24} {:<8} {:>9}  {}",
            d.core.name,
            if d.core.runtime.is_some() {
                "running"
            } else {
                "shut off"
            },
            d.snapshots.len(),
            d.core.current_snapshot.as_deref().unwrap_or("-")
        ));
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
        out.value(Value::Array(v));
        return;
    }
    let mut text = String::new();
    if tree {
        render_tree(d, &mut text);
        out.text(&text);
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
    out.text(&text);
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
        out.value(Value::Array(v));
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
        out.text(&text);
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
    out.text(&text);
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
        out.value(Value::Array(v));
        return;
    }
    for e in h {
        let outcome = match &e.outcome {
            Outcome::Open => "open".to_string(),
            Outcome::Finished => "finished".into(),
            Outcome::Aborted { reason } => format!("aborted: {reason}"),
        };
        out.line(&format!(
            "{} {} {} by {}: {outcome}",
            e.txn,
            utc((e.began_ms / 1000) as i64),
            e.what,
            e.actor
        ));
    }
}

/// `journal show` / `journal wait`: one transaction.
pub fn transaction(e: &HistoryEntry) -> (Value, String) {
    let outcome = match &e.outcome {
        Outcome::Open => "open".to_string(),
        Outcome::Finished => "finished".into(),
        Outcome::Aborted { reason } => format!("aborted: {reason}"),
    };
    (
        json!({"txn": e.txn.to_string(), "domain": e.domain, "what": e.what, "actor": e.actor,
               "began_ms": e.began_ms, "ended_ms": e.ended_ms, "outcome": outcome}),
        format!(
            "{} domain {}: {} by {}, began {}: {outcome}\n",
            e.txn,
            e.domain,
            e.what,
            e.actor,
            utc((e.began_ms / 1000) as i64)
        ),
    )
}

/// `fsck`.
pub fn fsck(out: &Out, r: &recovery::FsckReport) {
    if out.json {
        out.value(
            json!({"findings": r.findings, "could_not_check": r.could_not_check, "exit_code": r.exit_code()}),
        );
        return;
    }
    if r.findings.is_empty() && r.could_not_check.is_empty() {
        out.line("clean: every invariant holds");
    }
    for f in &r.findings {
        out.line(&format!(
            "{} {} {}: {}\n    repair: {}{}",
            f.invariant,
            f.kind,
            f.subject,
            f.message,
            f.repair,
            if f.repaired { " (done)" } else { "" }
        ));
    }
    for c in &r.could_not_check {
        out.line(&format!("could not check: {c}"));
    }
}

/// Who owns each image of a domain's disk chains, one line per image: the
/// domain's own (merges may write into it; removed once unused) or shared
/// (never modified: a template, a disk defined as shared, another domain's).
pub fn ownership_lines(state: &State, domain: &str) -> Vec<String> {
    let Some(d) = state.domains.get(domain) else {
        return Vec::new();
    };
    let whose = |path: &str| match state.images.get(path) {
        Some(r) if r.domain == domain => None,
        Some(r) => Some(format!("domain {}'s", r.domain)),
        None => Some("never modified".to_string()),
    };
    let mut out = Vec::new();
    for disk in d.core.disks.values() {
        let Some(active) = disk.chain.first() else {
            continue;
        };
        let mut line = format!(
            "{domain} {}: {} ({})",
            disk.target,
            active.path,
            whose(&active.path).map_or("the domain's own".to_string(), |w| format!("shared, {w}"))
        );
        // A long chain is summed up: the shared images below are named.
        let below = &disk.chain[1..];
        if !below.is_empty() {
            let shared: Vec<String> = below
                .iter()
                .filter_map(|i| whose(&i.path).map(|w| format!("{} ({w})", i.path)))
                .collect();
            line.push_str(&format!(
                "; below it {} of the domain's own",
                below.len() - shared.len()
            ));
            if !shared.is_empty() {
                line.push_str(&format!(" and shared {}", shared.join(", ")));
            }
        }
        out.push(line);
    }
    out
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
