//! Bulk snapshot redefine and redefine sessions: validated as a whole,
//! applied as one transaction, all or nothing; an interrupted import or an
//! abandoned session leaves nothing behind. Plus libvirt schema validation
//! of every XML file snapjournal writes.

use std::path::{Path, PathBuf};

use snapjournal_tests::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A domain with history s1 → s2, exported as XML files, then forgotten
/// and defined again bare: the starting point of an import.
fn exported(f: &Fixture) -> Vec<PathBuf> {
    write_pattern(&f.base("vda"), A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1", "--description", "first"])
        .unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    let mut files = Vec::new();
    for s in ["s1", "s2"] {
        let xml = f.ok(&["snapshot", "dumpxml", "vm", s]).unwrap();
        let p = f.root.path().join(format!("export-{s}.xml"));
        std::fs::write(&p, xml).unwrap();
        files.push(p);
    }
    let domain = f.ok(&["domain", "dumpxml", "vm"]).unwrap();
    let dp = f.root.path().join("export-domain.xml");
    std::fs::write(&dp, domain).unwrap();
    f.ok(&["domain", "undefine", "vm", "--snapshots-metadata"])
        .unwrap();
    f.ok(&["domain", "define", dp.to_str().unwrap()]).unwrap();
    assert!(f.state().unwrap().domains["vm"].snapshots.is_empty());
    files
}

fn args<'a>(head: &[&'a str], files: &'a [PathBuf]) -> Vec<&'a str> {
    let mut v: Vec<&str> = head.to_vec();
    v.extend(files.iter().map(|p| p.to_str().unwrap()));
    v
}

fn snapshot_names(f: &Fixture) -> Vec<String> {
    f.state().unwrap().domains["vm"]
        .snapshots
        .keys()
        .cloned()
        .collect()
}

#[test]
fn bulk_redefine_round_trips_and_is_idempotent() {
    let f = Fixture::new(1).unwrap();
    let files = exported(&f);
    let before: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let r = json(
        &f.ok(&args(
            &["--json", "snapshot", "redefine", "vm", "--current", "s2"],
            &files,
        ))
        .unwrap(),
    );
    assert_eq!(r["defined"], serde_json::json!(["s1", "s2"]));
    assert_eq!(snapshot_names(&f), vec!["s1", "s2"]);
    assert_eq!(f.ok(&["snapshot", "current", "vm"]).unwrap().trim(), "s2");
    for (s, want) in ["s1", "s2"].iter().zip(&before) {
        assert_eq!(&f.ok(&["snapshot", "dumpxml", "vm", s]).unwrap(), want);
    }
    f.ok(&["fsck"]).unwrap();
    // Again: identical items are no-ops, no transaction.
    let r = json(
        &f.ok(&args(&["--json", "snapshot", "redefine", "vm"], &files))
            .unwrap(),
    );
    assert_eq!(r["unchanged"], serde_json::json!(["s1", "s2"]));
    assert!(r["txn"].is_null());
    // The redefined history works: delete s2 merges as usual, and the
    // images the journal did not create are never removed.
    f.ok(&["snapshot", "revert", "vm", "s1"]).unwrap();
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn a_dumped_snapshot_redefines_as_identical_on_its_own_domain() {
    // No undefine in between: the record made by `snapshot create` and the
    // one read back from its XML are the same.
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    let p = f.root.path().join("s1.xml");
    std::fs::write(&p, f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap()).unwrap();
    let r = json(
        &f.ok(&["--json", "snapshot", "redefine", "vm", p.to_str().unwrap()])
            .unwrap(),
    );
    assert_eq!(r["unchanged"], serde_json::json!(["s1"]), "{r}");
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    let p = f.root.path().join("c1.xml");
    std::fs::write(&p, f.ok(&["checkpoint", "dumpxml", "vm", "c1"]).unwrap()).unwrap();
    let r = json(
        &f.ok(&["--json", "checkpoint", "redefine", "vm", p.to_str().unwrap()])
            .unwrap(),
    );
    assert_eq!(r["unchanged"], serde_json::json!(["c1"]), "{r}");
}

#[test]
fn redefine_from_a_directory() {
    let f = Fixture::new(2).unwrap();
    let files = exported(&f);
    let dir = f.root.path().join("import");
    std::fs::create_dir(&dir).unwrap();
    for p in &files {
        std::fs::copy(p, dir.join(p.file_name().unwrap())).unwrap();
    }
    f.ok(&["snapshot", "redefine", "vm", "--dir", dir.to_str().unwrap()])
        .unwrap();
    assert_eq!(snapshot_names(&f), vec!["s1", "s2"]);
}

fn refused(f: &Fixture, files: &[PathBuf], needle: &str) {
    let err = f.fails(&args(&["snapshot", "redefine", "vm"], files)).unwrap();
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(snapshot_names(f).is_empty() || snapshot_names(f) == vec!["s1"]);
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn invalid_sets_are_refused_as_a_whole() {
    let f = Fixture::new(1).unwrap();
    let files = exported(&f);
    // s2 without its parent s1.
    refused(&f, &files[1..], "the parent s1 of snapshot s2");
    assert!(
        snapshot_names(&f).is_empty(),
        "nothing of a refused set is defined"
    );
    // The same name twice.
    let dup = f.root.path().join("dup.xml");
    std::fs::copy(&files[0], &dup).unwrap();
    refused(&f, &[files[0].clone(), dup.clone()], "defined twice");
    // An image that does not exist.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    let gone = f.root.path().join("gone.xml");
    let s1_image = f.img.join("vda.s1").display().to_string();
    assert!(text.contains(&s1_image), "s2's historic domain names s1's image");
    std::fs::write(
        &gone,
        text.replace(&format!("'{s1_image}'"), "'/nonexistent/vda.s1'"),
    )
    .unwrap();
    refused(&f, &[files[0].clone(), gone], "not usable");
    // A bad name, a malformed document.
    let bad = f.root.path().join("bad.xml");
    std::fs::write(&bad, text.replace("<name>s2</name>", "<name>../x</name>")).unwrap();
    refused(&f, &[files[0].clone(), bad.clone()], "invalid snapshot");
    std::fs::write(&bad, "<domainsnapshot><name>x</name>").unwrap();
    refused(&f, &[bad], "");
    // Defined, then a conflicting version of it.
    f.ok(&["snapshot", "redefine", "vm", files[0].to_str().unwrap()])
        .unwrap();
    let changed = f.root.path().join("changed.xml");
    let s1 = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(&changed, s1.replace("first", "rewritten")).unwrap();
    let err = f
        .fails(&["snapshot", "redefine", "vm", changed.to_str().unwrap()])
        .unwrap();
    assert!(
        err.contains("conflicts with the snapshot s1 already defined"),
        "{err}"
    );
    assert!(err.contains("description"), "{err}");
}

#[test]
fn an_interrupted_redefine_is_all_or_nothing() {
    for crash_at in 1..=12u64 {
        let f = Fixture::new(1).unwrap();
        let files = exported(&f);
        let st = f
            .command(&args(&["snapshot", "redefine", "vm"], &files))
            .env("SNAPJOURNAL_CRASH_AT", crash_at.to_string())
            .status()
            .unwrap();
        f.ok(&["recover"]).unwrap();
        let names = snapshot_names(&f);
        assert!(
            names.is_empty() || names == vec!["s1", "s2"],
            "crash at {crash_at} ({st}): partial redefine {names:?}"
        );
        f.ok(&["fsck"]).unwrap();
    }
}

#[test]
fn sessions_commit_abort_and_abandoned() {
    let f = Fixture::new(1).unwrap();
    let files = exported(&f);
    // Committed: everything at once.
    let id = f.ok(&["redefine", "begin", "vm"]).unwrap().trim().to_string();
    for p in &files {
        f.ok(&["redefine", "add", &id, p.to_str().unwrap()]).unwrap();
        assert!(
            snapshot_names(&f).is_empty(),
            "nothing is defined before the commit"
        );
    }
    f.ok(&["redefine", "commit", &id, "--current", "s2"]).unwrap();
    assert_eq!(snapshot_names(&f), vec!["s1", "s2"]);
    assert!(f
        .fails(&["redefine", "commit", &id])
        .unwrap()
        .contains("does not exist"));

    // Aborted and abandoned sessions leave nothing.
    let f = Fixture::new(1).unwrap();
    let files = exported(&f);
    let id = f.ok(&["redefine", "begin", "vm"]).unwrap().trim().to_string();
    f.ok(&["redefine", "add", &id, files[0].to_str().unwrap()])
        .unwrap();
    f.ok(&["redefine", "abort", &id]).unwrap();
    let id = f.ok(&["redefine", "begin", "vm"]).unwrap().trim().to_string();
    f.ok(&["redefine", "add", &id, files[0].to_str().unwrap()])
        .unwrap();
    // The agent dies here; the operator recovers.
    let out = f.ok(&["recover"]).unwrap();
    assert!(out.contains(&id), "{out}");
    assert!(snapshot_names(&f).is_empty());
    assert!(f.ok(&["redefine", "list"]).unwrap().trim().is_empty());
    assert!(files_in(&f.state.join("redefine")).is_empty());
    // A session that cannot validate commits nothing and stays for a fix.
    let id = f.ok(&["redefine", "begin", "vm"]).unwrap().trim().to_string();
    f.ok(&["redefine", "add", &id, files[1].to_str().unwrap()])
        .unwrap();
    let err = f.fails(&["redefine", "commit", &id]).unwrap();
    assert!(err.contains("parent s1"), "{err}");
    assert!(snapshot_names(&f).is_empty());
    f.ok(&["redefine", "add", &id, files[0].to_str().unwrap()])
        .unwrap();
    f.ok(&["redefine", "commit", &id]).unwrap();
    assert_eq!(snapshot_names(&f), vec!["s1", "s2"]);
}

fn files_in(dir: &Path) -> Vec<String> {
    files(dir)
}

/// Every XML file snapjournal writes validates against libvirt's own
/// RelaxNG schemas (xmllint and libvirt's schemas come from Debian's
/// libxml2-utils and libvirt0).
#[test]
fn written_xml_validates_against_libvirt_schemas() {
    let schemas = Path::new("/usr/share/libvirt/schemas");
    assert!(
        schemas.join("domainsnapshot.rng").exists(),
        "libvirt's schemas are missing: apt-get install libvirt0 libxml2-utils (scripts/setup does)"
    );
    let f = Fixture::new(2).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1", "--description", "a <b> & 'c'"])
        .unwrap();
    f.ok(&["snapshot", "create", "vm", "s2", "--diskspec", "vdb,snapshot=no"])
        .unwrap();
    f.ok(&["snapshot", "revert", "vm", "s1"]).unwrap();
    let mut checked = 0;
    for (dir, rng) in [
        (f.state.join("domains"), "domain.rng"),
        (f.state.join("snapshots/vm"), "domainsnapshot.rng"),
    ] {
        for name in files(&dir) {
            let p = dir.join(&name);
            let out = std::process::Command::new("xmllint")
                .args(["--noout", "--relaxng"])
                .arg(schemas.join(rng))
                .arg(&p)
                .output()
                .expect("xmllint (libxml2-utils)");
            assert!(
                out.status.success(),
                "{} does not validate against {rng}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "one domain and two snapshots");
}
