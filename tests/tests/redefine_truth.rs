//! Redefine stores only what is true (issue 21): a snapshot whose image is
//! still the domain's writable disk, and two checkpoints sharing a bitmap,
//! are refused with the reason and change nothing; fsck judges by the same
//! rules; unbounded, BOM-prefixed and oddly named input gets a clear
//! answer.

use snapjournal_tests::*;

fn journal_len(f: &Fixture) -> usize {
    f.ok(&["--json", "domain", "history", "vm"]).unwrap().len()
}

/// A `<domainsnapshot>` with no `<disks>` whose historic domain is the
/// present definition: its only image is the one the domain writes into.
fn snapshot_of_the_live_disk(f: &Fixture, name: &str) -> std::path::PathBuf {
    let domain = f.ok(&["domain", "dumpxml", "vm"]).unwrap();
    let doc = format!(
        "<domainsnapshot>\n  <name>{name}</name>\n  <state>disk-snapshot</state>\n  <creationTime>1700000000</creationTime>\n  {}\n</domainsnapshot>\n",
        domain.trim()
    );
    let p = f.root.path().join(format!("{name}.xml"));
    std::fs::write(&p, doc).unwrap();
    p
}

#[test]
fn a_snapshot_whose_image_is_the_writable_disk_is_refused() {
    let f = Fixture::new(1).unwrap();
    let p = snapshot_of_the_live_disk(&f, "s-live");
    let before = journal_len(&f);
    let err = f
        .fails(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    assert!(
        err.contains("writes into now") && err.contains("vda") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(f.state().unwrap().domains["vm"].snapshots.is_empty());
    assert_eq!(journal_len(&f), before, "the refusal wrote to the journal");
    f.ok(&["fsck"]).unwrap();
    // The same document is fine once the domain writes into an overlay on
    // that image: that is what a real snapshot looks like.
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["snapshot", "delete", "vm", "s1", "--metadata-only"])
        .unwrap();
    f.ok(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn two_checkpoints_never_share_a_bitmap() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    let c1 = f.ok(&["checkpoint", "dumpxml", "vm", "c1"]).unwrap();
    assert!(c1.contains("bitmap='c1'"), "{c1}");
    let c2 = c1.replacen("<name>c1</name>", "<name>c2</name>", 1);
    let p = f.root.path().join("c2.xml");
    std::fs::write(&p, c2).unwrap();
    let err = f
        .fails(&["checkpoint", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    assert!(
        err.contains("bitmap c1 already belongs to checkpoint c1") && err.contains("nothing was changed"),
        "{err}"
    );
    let cps: Vec<String> = f.state().unwrap().domains["vm"]
        .checkpoints
        .keys()
        .cloned()
        .collect();
    assert_eq!(cps, vec!["c1"]);
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn endless_input_is_cut_off_at_the_limit() {
    let f = Fixture::new(1).unwrap();
    let started = std::time::Instant::now();
    let err = f.fails(&["snapshot", "redefine", "vm", "/dev/zero"]).unwrap();
    assert!(
        err.contains("more than the") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn a_byte_order_mark_and_names_with_spaces_are_accepted() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "my snap name"]).unwrap();
    let xml = f.ok(&["snapshot", "dumpxml", "vm", "my snap name"]).unwrap();
    assert!(xml.contains("<name>my snap name</name>"), "{xml}");
    f.ok(&["snapshot", "delete", "vm", "my snap name", "--metadata-only"])
        .unwrap();
    let p = f.root.path().join("bom.xml");
    std::fs::write(&p, format!("\u{feff}{xml}")).unwrap();
    f.ok(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    assert!(f.state().unwrap().domains["vm"]
        .snapshots
        .contains_key("my snap name"));
    f.ok(&["fsck"]).unwrap();
    let long = "n".repeat(100_000);
    let err = f.fails(&["snapshot", "create", "vm", &long]).unwrap();
    assert!(
        err.len() < 2_000 && err.contains("100000 bytes"),
        "{}",
        &err[..err.len().min(300)]
    );
}
