//! Checkpoints on real images and a real QEMU: the bitmaps record exactly
//! the writes after their checkpoint (read back as QEMU's dirty counts),
//! survive snapshots (carried into the overlays) and deletes (merged into
//! the parent), validate against libvirt's schema, and are redefined all or
//! nothing.

use std::collections::BTreeMap;
use std::process::Command;

use snapjournal_tests::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn img(f: &Fixture, name: &str) -> String {
    f.img.join(name).display().to_string()
}

/// QEMU's view of every bitmap of every image of disk `disk`: image file
/// name → bitmap → (recording, dirty bytes).
fn live_bitmaps(f: &Fixture, disk: &str) -> BTreeMap<String, BTreeMap<String, (bool, u64)>> {
    let g = f.graph().unwrap();
    let dev = g.devices.iter().find(|d| d.id == disk).unwrap();
    let mut out = BTreeMap::new();
    for layer in &dev.chain {
        let name = std::path::Path::new(&layer.path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let list = g
            .bitmaps
            .get(&layer.node)
            .map(|l| {
                l.iter()
                    .map(|b| (b.name.clone(), (b.recording, b.count)))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name, list);
    }
    out
}

fn bm(entries: &[(&str, bool, u64)]) -> BTreeMap<String, (bool, u64)> {
    entries
        .iter()
        .map(|(n, r, c)| (n.to_string(), (*r, *c * REGION)))
        .collect()
}

fn xmllint(schema: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("doc.xml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new("xmllint")
        .args([
            "--noout",
            "--relaxng",
            &format!("/usr/share/libvirt/schemas/{schema}.rng"),
        ])
        .arg(&p)
        .output()
        .expect("xmllint is installed by scripts/setup");
    assert!(
        out.status.success(),
        "{schema}.rng rejects:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn offline_checkpoints_track_writes_across_snapshots_and_deletes() {
    let f = Fixture::new(2).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1", "--description", "first"])
        .unwrap();
    f.write_present(A, 0).unwrap();
    f.ok(&[
        "checkpoint",
        "create",
        "vm",
        "c2",
        "--diskspec",
        "vdb,checkpoint=no",
    ])
    .unwrap();
    f.write_present(B, 1).unwrap();
    // The snapshot carries the recording bitmap (vda: c2, vdb: c1) into
    // the overlays.
    let r = json(&f.ok(&["--json", "snapshot", "create", "vm", "s1"]).unwrap());
    assert_eq!(r["bitmaps"].as_array().unwrap().len(), 4, "{r}");
    f.write_present(C, 2).unwrap();
    f.ok(&["fsck"]).unwrap();
    let list = json(&f.ok(&["--json", "checkpoint", "list", "vm"]).unwrap());
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["name"], "c2");
    assert_eq!(list[1]["parent"], "c1");
    assert_eq!(list[1]["newest"], true);
    assert_eq!(list[1]["disks"][1]["checkpoint"], "no");
    let tree = f.ok(&["checkpoint", "list", "vm", "--tree"]).unwrap();
    assert_eq!(tree, "c1\n└── c2 (newest)\n");
    for c in ["c1", "c2"] {
        let xml = f.ok(&["checkpoint", "dumpxml", "vm", c]).unwrap();
        xmllint("domaincheckpoint", &xml);
        let file = f.state.join("checkpoints").join("vm").join(format!("{c}.xml"));
        assert_eq!(std::fs::read_to_string(file).unwrap(), xml);
    }

    f.start().unwrap();
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s1".to_string(), bm(&[("c2", true, 1)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 1), ("c2", false, 1)])),
        ])
    );
    assert_eq!(
        live_bitmaps(&f, "vdb"),
        BTreeMap::from([
            ("vdb.s1".to_string(), bm(&[("c1", true, 1)])),
            ("vdb.qcow2".to_string(), bm(&[("c1", false, 2)])),
        ])
    );
    f.ok(&["domain", "stop", "vm"]).unwrap();

    // Deleting c2 merges it into c1 everywhere; in the overlay, where only
    // c2 was, c1 takes its place and records.
    let r = json(&f.ok(&["--json", "checkpoint", "delete", "vm", "c2"]).unwrap());
    assert!(!r["bitmaps"].as_array().unwrap().is_empty());
    f.ok(&["fsck"]).unwrap();
    assert!(!f.state.join("checkpoints/vm/c2.xml").exists());
    f.start().unwrap();
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s1".to_string(), bm(&[("c1", true, 1)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 2)])),
        ])
    );
    // New writes land in c1 now.
    f.guest_write(D, 3).unwrap();
    assert_eq!(live_bitmaps(&f, "vda")["vda.s1"], bm(&[("c1", true, 2)]));
    f.ok(&["domain", "stop", "vm"]).unwrap();
    f.ok(&["fsck"]).unwrap();

    // The last checkpoint goes with its bitmaps.
    f.ok(&["checkpoint", "delete", "vm", "c1"]).unwrap();
    for i in ["vda.qcow2", "vda.s1", "vdb.qcow2", "vdb.s1"] {
        let info = tool("qemu-img", &["info", "--output=json", &img(&f, i)]).unwrap();
        assert!(!info.contains("\"bitmaps\""), "{i} still holds bitmaps: {info}");
    }
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn live_checkpoint_alone_and_with_a_snapshot_in_one_transaction() {
    let f = Fixture::new(2).unwrap();
    f.start().unwrap();
    f.guest_write(A, 0).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.guest_write(B, 1).unwrap();
    assert_eq!(
        live_bitmaps(&f, "vda")["vda.qcow2"],
        bm(&[("c1", true, 1)]),
        "c1 records only the write after it"
    );
    let r = json(
        &f.ok(&["--json", "snapshot", "create", "vm", "s1", "--checkpoint", "c2"])
            .unwrap(),
    );
    assert_eq!(r["checkpoint"], "c2");
    f.guest_write(C, 2).unwrap();
    for d in ["vda", "vdb"] {
        assert_eq!(
            live_bitmaps(&f, d),
            BTreeMap::from([
                (format!("{d}.s1"), bm(&[("c2", true, 1)])),
                (format!("{d}.qcow2"), bm(&[("c1", false, 1)])),
            ])
        );
    }
    let c2 = f.ok(&["checkpoint", "dumpxml", "vm", "c2"]).unwrap();
    xmllint("domaincheckpoint", &c2);
    assert!(
        c2.contains(&img(&f, "vda.s1")),
        "the checkpoint's domain is the one after the snapshot: {c2}"
    );
    f.ok(&["fsck"]).unwrap();

    // c1's bitmap lies in a read-only backing image of the running QEMU.
    let e = f.fails(&["checkpoint", "delete", "vm", "c1"]).unwrap();
    assert!(
        e.contains("read-only backing image") && e.contains("nothing was changed"),
        "{e}"
    );
    // c2 (all in the active layer) is deleted live: merged into c1, which
    // takes its place in the overlay.
    f.ok(&["checkpoint", "delete", "vm", "c2"]).unwrap();
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s1".to_string(), bm(&[("c1", true, 1)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 1)])),
        ])
    );
    // Stored on stop, consistent and recording as the journal says.
    f.ok(&["domain", "stop", "vm"]).unwrap();
    f.ok(&["fsck"]).unwrap();
    f.ok(&["checkpoint", "delete", "vm", "c1"]).unwrap();
    f.ok(&["fsck"]).unwrap();
    for d in &f.disks {
        assert_view(&img(&f, &format!("{d}.s1")), &[(0, A), (1, B), (2, C)]);
    }
}

#[test]
fn crash_around_the_live_checkpoint_transaction() {
    for (point, forward) in [("live.switch.before", false), ("live.switch.after", true)] {
        let f = Fixture::new(1).unwrap();
        f.start().unwrap();
        f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
        let out = f
            .command(&["checkpoint", "create", "vm", "c2"])
            .env("SNAPJOURNAL_CRASH_NAME", point)
            .env("SNAPJOURNAL_CRASH_AT", "1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: should have been killed");
        f.ok(&["recover"]).unwrap();
        let names: Vec<String> = f.state().unwrap().domains["vm"]
            .checkpoints
            .keys()
            .cloned()
            .collect();
        let live = live_bitmaps(&f, "vda");
        if forward {
            assert_eq!(names, ["c1", "c2"], "{point}");
            assert_eq!(
                live["vda.qcow2"],
                bm(&[("c1", false, 0), ("c2", true, 0)]),
                "{point}"
            );
        } else {
            assert_eq!(names, ["c1"], "{point}");
            assert_eq!(live["vda.qcow2"], bm(&[("c1", true, 0)]), "{point}");
        }
        f.ok(&["domain", "stop", "vm"]).unwrap();
        f.ok(&["fsck"]).unwrap();
    }
}

#[test]
fn checkpoints_refuse_what_would_lose_tracking_and_bad_requests() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    let before = f.state().unwrap();
    for (args, needle) in [
        (
            vec!["checkpoint", "create", "vm", "c1"],
            "already has a checkpoint called c1",
        ),
        (vec!["checkpoint", "create", "vm", "../x"], "checkpoint"),
        (
            vec!["checkpoint", "create", "vm", "c2", "--diskspec", "vdz"],
            "has no disk vdz",
        ),
        (
            vec![
                "checkpoint",
                "create",
                "vm",
                "c2",
                "--diskspec",
                "vda,checkpoint=no",
            ],
            "would cover no disk",
        ),
        (
            vec![
                "checkpoint",
                "create",
                "vm",
                "c2",
                "--diskspec",
                "vda,checkpoint=maybe",
            ],
            "expected DISK",
        ),
        (
            vec!["checkpoint", "delete", "vm", "nope"],
            "no checkpoint called nope",
        ),
        (
            vec!["snapshot", "create", "vm", "s3", "--checkpoint", "c1"],
            "already has a checkpoint called c1",
        ),
    ] {
        let e = f.fails(&args).unwrap();
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert_eq!(f.state().unwrap(), before, "a refused request changed the state");
    // A bitmap of the same name put there by someone else is not taken over.
    tool("qemu-img", &["bitmap", "--add", &img(&f, "vda.s2"), "c9"]).unwrap();
    let e = f.fails(&["checkpoint", "create", "vm", "c9"]).unwrap();
    assert!(e.contains("already holds a bitmap called c9"), "{e}");
    // The metadata can go alone; the bitmaps stay.
    f.ok(&["checkpoint", "delete", "vm", "c1", "--metadata-only"])
        .unwrap();
    let info = tool("qemu-img", &["info", "--output=json", &img(&f, "vda.s2")]).unwrap();
    assert!(info.contains("\"c1\""), "{info}");
    f.ok(&["snapshot", "revert", "vm", "s1"]).unwrap();
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn fsck_sees_bitmaps_that_differ_from_the_journal() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c2"]).unwrap();
    f.ok(&["fsck"]).unwrap();
    let overlay = img(&f, "vda.s1");
    tool("qemu-img", &["bitmap", "--disable", &overlay, "c2"]).unwrap();
    let out = f.run(&["--json", "fsck"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("bitmap-state") && text.contains("does not record writes"),
        "{text}"
    );
    tool("qemu-img", &["bitmap", "--remove", &overlay, "c1"]).unwrap();
    let out = f.run(&["--json", "fsck"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("missing-bitmap"), "{text}");
}

#[test]
fn checkpoint_redefine_is_validated_against_the_images_and_all_or_nothing() {
    let f = Fixture::new(2).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.ok(&[
        "checkpoint",
        "create",
        "vm",
        "c2",
        "--diskspec",
        "vdb,checkpoint=no",
    ])
    .unwrap();
    let export = f.root.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let mut files = Vec::new();
    for c in ["c1", "c2"] {
        let p = export.join(format!("{c}.xml"));
        std::fs::write(&p, f.ok(&["checkpoint", "dumpxml", "vm", c]).unwrap()).unwrap();
        files.push(p.display().to_string());
    }
    let dom = f.root.path().join("vm-now.xml");
    std::fs::write(&dom, f.ok(&["domain", "dumpxml", "vm"]).unwrap()).unwrap();
    let before = f.state().unwrap().domains["vm"].checkpoints.clone();
    f.ok(&["domain", "undefine", "vm", "--snapshots-metadata"])
        .unwrap();
    f.ok(&["domain", "define", dom.to_str().unwrap(), "--all-shared"])
        .unwrap();

    // A child without its parent, a bitmap no image holds: refused whole.
    let e = f.fails(&["checkpoint", "redefine", "vm", &files[1]]).unwrap();
    assert!(
        e.contains("ancestor c1") && e.contains("nothing was changed"),
        "{e}"
    );
    let bad = export.join("bad.xml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&files[0])
            .unwrap()
            .replace("<name>c1</name>", "<name>c7</name>")
            .replace("bitmap='c1'", "bitmap='c7'"),
    )
    .unwrap();
    let e = f
        .fails(&[
            "checkpoint",
            "redefine",
            "vm",
            &files[0],
            &files[1],
            bad.to_str().unwrap(),
        ])
        .unwrap();
    assert!(e.contains("holds a bitmap called c7"), "{e}");
    assert!(f.state().unwrap().domains["vm"].checkpoints.is_empty());

    // The whole set: back as it was, then a no-op.
    std::fs::remove_file(&bad).unwrap();
    let r = json(
        &f.ok(&[
            "--json",
            "checkpoint",
            "redefine",
            "vm",
            "--dir",
            export.to_str().unwrap(),
        ])
        .unwrap(),
    );
    assert_eq!(r["defined"], serde_json::json!(["c1", "c2"]));
    assert_eq!(f.state().unwrap().domains["vm"].checkpoints, before);
    for (c, file) in ["c1", "c2"].iter().zip(&files) {
        assert_eq!(
            f.ok(&["checkpoint", "dumpxml", "vm", c]).unwrap(),
            std::fs::read_to_string(file).unwrap()
        );
    }
    f.ok(&["fsck"]).unwrap();
    let r = json(
        &f.ok(&["--json", "checkpoint", "redefine", "vm", &files[0], &files[1]])
            .unwrap(),
    );
    assert_eq!(r["unchanged"], serde_json::json!(["c1", "c2"]));
    assert!(r["txn"].is_null());
    // A conflicting document names the checkpoint.
    std::fs::write(
        &bad,
        std::fs::read_to_string(&files[0]).unwrap().replace(
            "<creationTime>",
            "<description>other</description>\n  <creationTime>",
        ),
    )
    .unwrap();
    let e = f
        .fails(&["checkpoint", "redefine", "vm", bad.to_str().unwrap()])
        .unwrap();
    assert!(e.contains("conflicts with the checkpoint c1"), "{e}");
    // Checkpoint work goes on from the redefined chain.
    f.ok(&["checkpoint", "create", "vm", "c3"]).unwrap();
    f.ok(&["checkpoint", "delete", "vm", "c2"]).unwrap();
    f.ok(&["fsck"]).unwrap();
}

/// A domain with snapshot s1 and checkpoints c1 ← c2, exported and then
/// defined again bare; returns the exported documents.
fn exported_with_checkpoints(f: &Fixture) -> Vec<String> {
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c2"]).unwrap();
    let export = f.root.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let mut files = Vec::new();
    for (kind, name) in [("snapshot", "s1"), ("checkpoint", "c1"), ("checkpoint", "c2")] {
        let p = export.join(format!("{name}.xml"));
        std::fs::write(&p, f.ok(&[kind, "dumpxml", "vm", name]).unwrap()).unwrap();
        files.push(p.display().to_string());
    }
    let dom = f.root.path().join("vm-now.xml");
    std::fs::write(&dom, f.ok(&["domain", "dumpxml", "vm"]).unwrap()).unwrap();
    f.ok(&["domain", "undefine", "vm", "--snapshots-metadata"])
        .unwrap();
    f.ok(&["domain", "define", dom.to_str().unwrap(), "--all-shared"])
        .unwrap();
    files
}

fn defined_items(f: &Fixture) -> (Vec<String>, Vec<String>) {
    let st = f.state().unwrap();
    let d = &st.domains["vm"];
    (
        d.snapshots.keys().cloned().collect(),
        d.checkpoints.keys().cloned().collect(),
    )
}

#[test]
fn a_session_defines_snapshots_and_checkpoints_in_one_transaction() {
    let f = Fixture::new(1).unwrap();
    let files = exported_with_checkpoints(&f);
    let id = f.ok(&["redefine", "begin", "vm"]).unwrap().trim().to_string();
    for p in &files {
        let r = json(&f.ok(&["--json", "redefine", "add", &id, p]).unwrap());
        assert!(r["item"].as_str().unwrap().contains(' '), "{r}");
    }
    assert_eq!(defined_items(&f), (vec![], vec![]));
    let r = json(
        &f.ok(&["--json", "redefine", "commit", &id, "--current", "s1"])
            .unwrap(),
    );
    assert_eq!(r["defined"], serde_json::json!(["s1"]));
    assert_eq!(r["checkpoints_defined"], serde_json::json!(["c1", "c2"]));
    assert_eq!(
        defined_items(&f),
        (vec!["s1".into()], vec!["c1".into(), "c2".into()])
    );
    let h = json(&f.ok(&["--json", "domain", "history", "vm"]).unwrap());
    let last = h.as_array().unwrap().last().unwrap();
    assert!(
        last["what"]
            .as_str()
            .unwrap()
            .contains("1 snapshot(s) and 2 checkpoint(s)"),
        "{last}"
    );
    f.ok(&["fsck"]).unwrap();

    // Killed anywhere in the commit: all of it or none of it.
    for crash_at in 1..=10u64 {
        let f = Fixture::new(1).unwrap();
        let files = exported_with_checkpoints(&f);
        let id = f.ok(&["redefine", "begin", "vm"]).unwrap().trim().to_string();
        for p in &files {
            f.ok(&["redefine", "add", &id, p]).unwrap();
        }
        let st = f
            .command(&["redefine", "commit", &id])
            .env("SNAPJOURNAL_CRASH_AT", crash_at.to_string())
            .status()
            .unwrap();
        f.ok(&["recover"]).unwrap();
        let items = defined_items(&f);
        assert!(
            items == (vec![], vec![]) || items == (vec!["s1".into()], vec!["c1".into(), "c2".into()]),
            "crash at {crash_at} ({st}): partial redefine {items:?}"
        );
        f.ok(&["fsck"]).unwrap();
    }
}

#[test]
fn offline_snapshot_deletes_carry_the_bitmaps_through_commit_and_pull() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.write_present(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    f.write_present(B, 1).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c2"]).unwrap();
    f.write_present(C, 2).unwrap();
    f.ok(&["snapshot", "create", "vm", "s3"]).unwrap();
    f.write_present(D, 3).unwrap();
    // s3's overlay (one region) is committed into s2's (two): c2, which
    // recorded in s3's overlay, records in s2's now and holds both writes.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s3"]).unwrap());
    assert!(r["merges"][0].as_str().unwrap().contains("commit"), "{r}");
    f.ok(&["fsck"]).unwrap();
    // s2's overlay (three regions) is bigger than s1's (one): s1's is
    // pulled into it, and c1's bitmap there with it.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s2"]).unwrap());
    assert!(r["merges"][0].as_str().unwrap().contains("pull"), "{r}");
    f.ok(&["fsck"]).unwrap();
    f.start().unwrap();
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s2".to_string(), bm(&[("c1", false, 2), ("c2", true, 2)])),
            ("vda.qcow2".to_string(), bm(&[])),
        ])
    );
    f.ok(&["domain", "stop", "vm"]).unwrap();
    assert_view(&img(&f, "vda.s2"), &[(0, A), (1, B), (2, C), (3, D)]);
}

/// The merged bitmaps of a disk's chain: bitmap → (recording anywhere,
/// dirty bytes summed over the images, an upper bound of its union).
fn chain_union(f: &Fixture, disk: &str) -> BTreeMap<String, (bool, u64)> {
    let mut out: BTreeMap<String, (bool, u64)> = BTreeMap::new();
    for list in live_bitmaps(f, disk).into_values() {
        for (name, (rec, count)) in list {
            let e = out.entry(name).or_default();
            e.0 |= rec;
            e.1 += count;
        }
    }
    out
}

#[test]
fn live_snapshot_deletes_carry_the_bitmaps_through_block_jobs() {
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.guest_write(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.guest_write(B, 1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2", "--checkpoint", "c2"])
        .unwrap();
    f.guest_write(C, 2).unwrap();
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s2".to_string(), bm(&[("c2", true, 1)])),
            ("vda.s1".to_string(), bm(&[("c1", false, 1)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 1)])),
        ])
    );
    // s2's overlay (one region) is committed into s1's (one region) by an
    // active commit: c2, which recorded in s2's overlay, records in s1's
    // from the pivot on, with the write it held.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s2"]).unwrap());
    assert!(r["merges"][0].as_str().unwrap().contains("commit"), "{r}");
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s1".to_string(), bm(&[("c1", false, 1), ("c2", true, 1)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 1)])),
        ])
    );
    f.guest_write(D, 3).unwrap();
    assert_eq!(live_bitmaps(&f, "vda")["vda.s1"]["c2"], (true, 2 * REGION));
    f.ok(&["fsck"]).unwrap();

    const E: u8 = 0xe5;
    const F: u8 = 0xf6;
    f.ok(&["snapshot", "create", "vm", "s3"]).unwrap();
    f.guest_write(E, 4).unwrap();
    f.ok(&["snapshot", "create", "vm", "s4"]).unwrap();
    f.guest_write(F, 5).unwrap();
    // s3's overlay (a middle image, one region) is committed into s1's
    // (three) by a block-commit below the active image: its part of c2 goes
    // to the active image, which QEMU keeps writable.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s3"]).unwrap());
    assert!(r["merges"][0].as_str().unwrap().contains("commit"), "{r}");
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s4".to_string(), bm(&[("c2", true, 2)])),
            ("vda.s1".to_string(), bm(&[("c1", false, 1), ("c2", false, 2)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 1)])),
        ])
    );
    // s1 froze the base image, which snapjournal did not create: it is
    // streamed into s1's overlay (a middle image), and its part of c1 goes
    // to the active image.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s1"]).unwrap());
    assert!(r["merges"][0].as_str().unwrap().contains("pull"), "{r}");
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            ("vda.s4".to_string(), bm(&[("c1", false, 1), ("c2", true, 2)])),
            ("vda.s1".to_string(), bm(&[("c1", false, 1), ("c2", false, 2)])),
        ])
    );
    // A stream into the active image: five regions written after s5 pull
    // s4's one region up; s4's bitmaps join the active image's.
    f.ok(&["snapshot", "create", "vm", "s5"]).unwrap();
    for r in 0..5 {
        f.guest_write(F, r).unwrap();
    }
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s4"]).unwrap());
    assert!(r["merges"][0].as_str().unwrap().contains("pull"), "{r}");
    let after = live_bitmaps(&f, "vda");
    assert_eq!(after["vda.s1"], bm(&[("c1", false, 1), ("c2", false, 2)]));
    assert_eq!(after["vda.s5"]["c1"], (false, REGION), "{after:?}");
    assert_eq!(after["vda.s5"]["c2"], (true, 6 * REGION), "{after:?}");
    // Every region written since c1 and since c2 is marked in their union.
    let union = chain_union(&f, "vda");
    assert!(
        union["c1"].1 >= 2 * REGION && union["c2"].1 >= 6 * REGION,
        "{union:?}"
    );
    f.ok(&["fsck"]).unwrap();
    f.ok(&["domain", "stop", "vm"]).unwrap();
    f.ok(&["fsck"]).unwrap();
    assert_view(
        &img(&f, "vda.s5"),
        &[(0, F), (1, F), (2, F), (3, F), (4, F), (5, F)],
    );
    // s1's overlay now stands alone with the base's data pulled in.
    for (r, p) in [(0, A), (1, B), (2, C), (3, D), (4, E)] {
        assert!(region_holds(&img(&f, "vda.s1"), p, r).unwrap(), "region {r}");
    }
}

#[test]
fn reverts_keep_the_checkpoints_that_describe_the_reverted_disks() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.write_present(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.write_present(B, 1).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c2"]).unwrap();
    f.write_present(C, 2).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    f.write_present(D, 3).unwrap();
    // Both checkpoints are older than s2: they stay, and c2 records in the
    // new overlay.
    let r = json(&f.ok(&["--json", "snapshot", "revert", "vm", "s2"]).unwrap());
    assert_eq!(r["dropped_checkpoints"], serde_json::json!([]), "{r}");
    assert_eq!(r["recording"][0]["bitmap"], "c2", "{r}");
    let overlay = r["overlays"][0]["file"].as_str().unwrap().to_string();
    f.ok(&["fsck"]).unwrap();
    f.start().unwrap();
    let name = |p: &str| {
        std::path::Path::new(p)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            (name(&overlay), bm(&[("c2", true, 0)])),
            ("vda.s1".to_string(), bm(&[("c1", false, 1), ("c2", false, 1)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 1)])),
        ])
    );
    f.guest_write(D, 4).unwrap();
    assert_eq!(live_bitmaps(&f, "vda")[&name(&overlay)]["c2"], (true, REGION));
    f.ok(&["fsck"]).unwrap();

    // c2 was taken after s1: reverting the running domain to s1 removes it
    // (never silently wrong); c1 records in the new overlay.
    let r = json(&f.ok(&["--json", "snapshot", "revert", "vm", "s1"]).unwrap());
    assert_eq!(r["dropped_checkpoints"], serde_json::json!(["c2"]), "{r}");
    assert_eq!(r["recording"][0]["bitmap"], "c1", "{r}");
    assert!(
        r["restarted_running"].is_boolean(),
        "the running domain was started again: {r}"
    );
    let overlay = r["overlays"][0]["file"].as_str().unwrap().to_string();
    let list = json(&f.ok(&["--json", "checkpoint", "list", "vm"]).unwrap());
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        live_bitmaps(&f, "vda"),
        BTreeMap::from([
            (name(&overlay), bm(&[("c1", true, 0)])),
            ("vda.qcow2".to_string(), bm(&[("c1", false, 1)])),
        ])
    );
    f.guest_write(C, 5).unwrap();
    f.ok(&["fsck"]).unwrap();
    // Back to s2 (taken after c1, on the branch c2 left): c1 stays.
    let r = json(&f.ok(&["--json", "snapshot", "revert", "vm", "s2"]).unwrap());
    assert_eq!(r["dropped_checkpoints"], serde_json::json!([]), "{r}");
    assert_eq!(r["recording"][0]["bitmap"], "c1", "{r}");
    f.ok(&["fsck"]).unwrap();
    // A subtree removal keeps the chain's bitmaps.
    f.ok(&["snapshot", "delete", "vm", "s1", "--children"]).unwrap();
    assert!(f.state().unwrap().domains["vm"].snapshots.is_empty());
    assert_eq!(chain_union(&f, "vda")["c1"], (true, 2 * REGION));
    f.ok(&["domain", "stop", "vm"]).unwrap();
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn a_revert_refuses_to_drop_a_checkpoint_that_records_on_a_disk_it_keeps() {
    let f = Fixture::new(2).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1", "--diskspec", "vdb,snapshot=no"])
        .unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    let before = f.state().unwrap();
    let e = f.fails(&["snapshot", "revert", "vm", "s1"]).unwrap();
    assert!(
        e.contains("leaves disk vdb as it is")
            && e.contains("checkpoint c1")
            && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(f.state().unwrap(), before);
    f.ok(&["checkpoint", "delete", "vm", "c1"]).unwrap();
    f.ok(&["snapshot", "revert", "vm", "s1"]).unwrap();
    f.ok(&["fsck"]).unwrap();
}
