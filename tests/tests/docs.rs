//! docs/ARCHITECTURE.md lists exactly the crash points the code has; the
//! product's messages spell its name.

use std::collections::BTreeSet;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crash_point("…")` in the product's crates.
fn in_code(root: &Path) -> BTreeSet<String> {
    let mut files = Vec::new();
    for c in ["journal/src", "executor/src", "recovery/src", "cli/src"] {
        rust_files(&root.join(c), &mut files);
    }
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for part in text.split("crash_point(\"").skip(1) {
            if let Some(name) = part.split('"').next() {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The names of the "Points:" paragraph; `a.b.c/d` stands for `a.b.c`
/// and `a.b.d`.
fn in_docs(root: &Path) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc.find("Points: ").expect("a Points: paragraph");
    let para = &doc[start..doc[start..].find("\n\n").map_or(doc.len(), |e| start + e)];
    let mut names = BTreeSet::new();
    for tick in para.split('`').skip(1).step_by(2) {
        // Crash point names only: dotted, no file names or settings.
        if !tick.contains('.') || tick.contains(' ') || tick.contains('=') || tick.ends_with(".rs") {
            continue;
        }
        match tick.split_once('/') {
            Some((first, other)) => {
                let stem = &first[..first.rfind('.').unwrap() + 1];
                names.insert(first.to_string());
                names.insert(format!("{stem}{other}"));
            }
            None => {
                names.insert(tick.to_string());
            }
        }
    }
    names
}

#[test]
fn architecture_lists_exactly_the_crash_points_of_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let code = in_code(&root);
    let docs = in_docs(&root);
    assert!(code.len() > 20, "{code:?}");
    let missing: Vec<_> = code.difference(&docs).collect();
    let stale: Vec<_> = docs.difference(&code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/ARCHITECTURE.md misses {missing:?} and lists {stale:?}, which the code does not have"
    );
}

#[test]
fn every_message_spells_the_product_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in [
        "journal/src",
        "executor/src",
        "recovery/src",
        "cli/src",
        "chaos/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    let wrong = ["snapshot", "journal"].concat();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains(&wrong),
            "{} misspells the product's name",
            f.display()
        );
    }
}
