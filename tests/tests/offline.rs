//! Offline snapshot create, revert and delete on real qcow2 images,
//! checked with byte patterns through every layer.

use snapjournal_tests::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn frozen(f: &Fixture, snap: &str, disk: &str) -> String {
    let st = f.state().unwrap();
    let s = &st.domains["vm"].snapshots[snap];
    s.disks
        .iter()
        .find(|d| d.disk == disk)
        .unwrap()
        .frozen
        .clone()
        .unwrap()
        .path
}

fn active(f: &Fixture, disk: &str) -> String {
    f.state().unwrap().domains["vm"].core.disks[disk].chain[0]
        .path
        .clone()
}

#[test]
fn one_disk_create_revert_alternate_history_delete() {
    let f = Fixture::new(1).unwrap();
    let base = f.base("vda");
    f.write_present(A, 0).unwrap();
    let user = f.user_file_sums().unwrap();
    let out = json(
        &f.ok(&[
            "--json",
            "snapshot",
            "create",
            "vm",
            "s1",
            "--description",
            "first",
        ])
        .unwrap(),
    );
    let vda_s1 = f.img.join("vda.s1").to_string_lossy().into_owned();
    assert_eq!(out["overlays"][0]["file"], vda_s1.as_str(), "libvirt-style name");
    f.write_present(B, 1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    f.write_present(C, 2).unwrap();
    assert_view(&frozen(&f, "s1", "vda"), &[(0, A)]);
    assert_view(&frozen(&f, "s2", "vda"), &[(0, A), (1, B)]);
    assert_view(&active(&f, "vda"), &[(0, A), (1, B), (2, C)]);
    assert_eq!(f.ok(&["snapshot", "current", "vm"]).unwrap().trim(), "s2");
    let xml = f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap();
    assert!(xml.contains("<description>first</description>"), "{xml}");
    assert!(
        xml.contains(&format!("<source file='{base}'/>")),
        "historic domain embedded: {xml}"
    );
    assert!(xml.contains(&format!("<source file='{vda_s1}'/>")));

    // Revert to s1: a new overlay on the base, the abandoned vda.s2 removed.
    let out = json(&f.ok(&["--json", "snapshot", "revert", "vm", "s1"]).unwrap());
    let vda_s1_1 = f.img.join("vda.s1-1").to_string_lossy().into_owned();
    assert_eq!(out["overlays"][0]["file"], vda_s1_1.as_str());
    assert!(!f.img.join("vda.s2").exists(), "abandoned overlay removed");
    assert!(f.img.join("vda.s1").exists(), "s2's image kept");
    assert_view(&active(&f, "vda"), &[(0, A)]);
    let dom_xml = f.ok(&["domain", "dumpxml", "vm"]).unwrap();
    assert!(
        dom_xml.contains(&format!("<source file='{vda_s1_1}'/>")),
        "{dom_xml}"
    );
    assert!(dom_xml.contains("<!-- kept byte for byte -->"));
    assert_eq!(f.ok(&["snapshot", "current", "vm"]).unwrap().trim(), "s1");

    // Alternate history: s3 on top of the revert.
    f.write_present(D, 3).unwrap();
    f.ok(&["snapshot", "create", "vm", "s3"]).unwrap();
    let tree = f.ok(&["snapshot", "list", "vm", "--tree"]).unwrap();
    assert!(tree.starts_with("s1\n"), "{tree}");
    assert!(tree.contains("s2") && tree.contains("s3 (current)"), "{tree}");

    // s1's image backs two histories: refused without --children.
    let err = f.fails(&["snapshot", "delete", "vm", "s1"]).unwrap();
    assert!(
        err.contains("alternate histories") && err.contains("--children"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");

    // Deleting s2 removes vda.s1, which only s2 needed.
    f.ok(&["snapshot", "delete", "vm", "s2"]).unwrap();
    assert!(!f.img.join("vda.s1").exists());
    // Now s1 has one child: pulled (the base is the user's and is not modified).
    let out = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s1"]).unwrap());
    assert!(out["merges"][0].as_str().unwrap().contains("pull"), "{out}");
    assert_eq!(f.user_file_sums().unwrap(), user, "the user's base is untouched");
    assert_view(&active(&f, "vda"), &[(0, A), (3, D)]);
    assert_view(&frozen(&f, "s3", "vda"), &[(0, A), (3, D)]);
    let st = f.state().unwrap();
    assert_eq!(st.domains["vm"].snapshots["s3"].parent, None, "s3 re-parented");
    // Everything consistent.
    let fsck = f.run(&["fsck"]).unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
}

#[test]
fn three_disks_with_one_excluded() {
    let f = Fixture::new(3).unwrap();
    f.write_present(A, 0).unwrap();
    let vdc_before = active(&f, "vdc");
    f.ok(&["snapshot", "create", "vm", "s1", "--diskspec", "vdc,snapshot=no"])
        .unwrap();
    assert_eq!(active(&f, "vdc"), vdc_before, "excluded disk not switched");
    assert!(active(&f, "vda").ends_with("vda.s1"));
    assert!(active(&f, "vdb").ends_with("vdb.s1"));
    let xml = f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap();
    assert!(xml.contains("<disk name='vdc' snapshot='no'/>"), "{xml}");
    f.write_present(B, 1).unwrap();
    f.ok(&["snapshot", "revert", "vm", "s1"]).unwrap();
    assert_view(&active(&f, "vda"), &[(0, A)]);
    assert_view(&active(&f, "vdb"), &[(0, A)]);
    // The excluded disk keeps its present content.
    assert_view(&active(&f, "vdc"), &[(0, A), (1, B)]);
    assert!(f.run(&["fsck"]).unwrap().status.success());
}

#[test]
fn delete_chooses_commit_or_pull_by_data_moved() {
    for (s1_layer_big, expect) in [(true, "commit"), (false, "pull")] {
        let f = Fixture::new(1).unwrap();
        f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
        // vda.s1 is s2's frozen image; vda.s2 is the active layer.
        let regions = if s1_layer_big { 0..8 } else { 0..1 };
        for r in regions {
            f.write_present(A, r).unwrap();
        }
        f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
        let regions = if s1_layer_big { 9..10 } else { 9..20 };
        for r in regions.clone() {
            f.write_present(B, r).unwrap();
        }
        let out = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s2"]).unwrap());
        let m = out["merges"][0].as_str().unwrap();
        assert!(m.contains(expect), "expected {expect}: {m}");
        let a = active(&f, "vda");
        assert!(region_holds(&a, A, 0).unwrap());
        for r in regions {
            assert!(region_holds(&a, B, r).unwrap(), "region {r} after {expect}");
        }
        assert_view(&frozen(&f, "s1", "vda"), &[]);
        assert_eq!(
            chaos::fixture::files(&f.img).len(),
            2,
            "one overlay left: {:?}",
            chaos::fixture::files(&f.img)
        );
        assert!(f.run(&["fsck"]).unwrap().status.success());
    }
}

#[test]
fn read_only_second_disk_leaves_nothing() {
    let c = chaos::faults::storage_fault("readonly").unwrap();
    assert_eq!(c.outcome, "clear-error", "{c:?}");
    let c = chaos::faults::storage_fault("full").unwrap();
    assert_eq!(c.outcome, "clear-error", "{c:?}");
}

#[test]
fn revert_keeps_a_disk_the_user_swapped() {
    let f = Fixture::new(1).unwrap();
    f.write_present(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    // The user points vda at an image of their own and redefines.
    let mine = f.img.join("mine.qcow2").to_string_lossy().into_owned();
    tool("qemu-img", &["create", "-q", "-f", "qcow2", &mine, "4M"]).unwrap();
    write_pattern(&mine, B, 1).unwrap();
    let xml = domain_xml("vm", &[("vda".into(), mine.clone())]);
    let p = f.root.path().join("swapped.xml");
    std::fs::write(&p, xml).unwrap();
    f.ok(&["domain", "define", &p.to_string_lossy()]).unwrap();
    let out = json(&f.ok(&["--json", "snapshot", "revert", "vm", "s1"]).unwrap());
    assert_eq!(out["kept"][0], mine.as_str(), "{out}");
    assert!(std::path::Path::new(&mine).exists());
    assert!(
        region_holds(&mine, B, 1).unwrap(),
        "the user's image is untouched"
    );
    // The overlay s1 created is no longer referenced: removed.
    assert!(!f.img.join("vda.s1").exists());
    assert_view(&active(&f, "vda"), &[(0, A)]);
}

#[test]
fn delete_with_children_and_metadata_only() {
    let f = Fixture::new(2).unwrap();
    f.write_present(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.write_present(B, 1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    f.write_present(C, 2).unwrap();
    f.ok(&["snapshot", "create", "vm", "s3"]).unwrap();
    let before = chaos::fixture::files(&f.img);
    let out = json(
        &f.ok(&["--json", "snapshot", "delete", "vm", "s3", "--metadata-only"])
            .unwrap(),
    );
    assert_eq!(
        chaos::fixture::files(&f.img),
        before,
        "metadata-only keeps every image: {out}"
    );
    assert_eq!(f.ok(&["snapshot", "current", "vm"]).unwrap().trim(), "s2");
    let out = json(
        &f.ok(&["--json", "snapshot", "delete", "vm", "s1", "--children"])
            .unwrap(),
    );
    assert_eq!(out["deleted"].as_array().unwrap().len(), 2, "{out}");
    assert!(f.state().unwrap().domains["vm"].snapshots.is_empty());
    assert!(f
        .fails(&["snapshot", "current", "vm"])
        .unwrap()
        .contains("no current snapshot"));
    for d in ["vda", "vdb"] {
        assert_view(&active(&f, d), &[(0, A), (1, B), (2, C)]);
    }
    let fsck = f.run(&["fsck"]).unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let f = Fixture::new(2).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    let before_state = f.state().unwrap();
    let before_files = chaos::fixture::files(&f.img);
    let xml_dir = f.state.join("snapshots").join("vm");
    let before_xml = chaos::fixture::files(&xml_dir);
    let existing = f.img.join("vda.s1").to_string_lossy().into_owned();
    let big = f.root.path().join("big.xml");
    std::fs::write(&big, vec![b' '; 17 * 1024 * 1024]).unwrap();
    let malformed = f.root.path().join("bad.xml");
    std::fs::write(&malformed, "<domainsnapshot><name>x</name>").unwrap();
    let bad_domain = f.root.path().join("bad-domain.xml");
    std::fs::write(&bad_domain, "<domain><name>../etc</name></domain>").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "snapshot".into(),
                "create".into(),
                "vm".into(),
                "../escape".into(),
            ],
            "invalid snapshot name",
        ),
        (
            vec!["snapshot".into(), "create".into(), "vm".into(), "a/b".into()],
            "would escape",
        ),
        (
            vec!["snapshot".into(), "create".into(), "vm".into(), "s1".into()],
            "already has a snapshot called s1",
        ),
        (
            vec![
                "snapshot".into(),
                "create".into(),
                "vm".into(),
                "s2".into(),
                "--diskspec".into(),
                "vdz,snapshot=no".into(),
            ],
            "has no disk vdz",
        ),
        (
            vec![
                "snapshot".into(),
                "create".into(),
                "vm".into(),
                "s2".into(),
                "--diskspec".into(),
                format!("vda,file={existing}"),
            ],
            "already exists",
        ),
        (
            vec![
                "snapshot".into(),
                "create".into(),
                "vm".into(),
                "s2".into(),
                "--diskspec".into(),
                "vda,file=/nonexistent-dir/x".into(),
            ],
            "does not exist",
        ),
        (
            vec![
                "snapshot".into(),
                "create".into(),
                "vm".into(),
                "s2".into(),
                "--diskspec".into(),
                "vda,file=relative".into(),
            ],
            "not an absolute path",
        ),
        (
            vec![
                "snapshot".into(),
                "create".into(),
                "vm".into(),
                "--xml".into(),
                big.to_string_lossy().into(),
            ],
            "accepted",
        ),
        (
            vec![
                "snapshot".into(),
                "create".into(),
                "vm".into(),
                "--xml".into(),
                malformed.to_string_lossy().into(),
            ],
            "unclosed",
        ),
        (
            vec!["snapshot".into(), "create".into(), "nosuch".into(), "s2".into()],
            "domain nosuch is not defined",
        ),
        (
            vec!["snapshot".into(), "revert".into(), "vm".into(), "nosuch".into()],
            "no snapshot called nosuch",
        ),
        (
            vec!["snapshot".into(), "delete".into(), "vm".into(), "nosuch".into()],
            "no snapshot called nosuch",
        ),
        (
            vec![
                "domain".into(),
                "define".into(),
                bad_domain.to_string_lossy().into(),
            ],
            "invalid domain name",
        ),
    ];
    for (args, expect) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = f.fails(&argv).unwrap();
        assert!(err.contains(expect), "{args:?}: expected {expect:?} in {err}");
        assert!(
            err.contains("nothing was changed")
                || expect == "domain nosuch is not defined"
                || err.contains("not defined")
                || err.contains("no snapshot"),
            "{args:?}: {err}"
        );
        assert_eq!(f.state().unwrap(), before_state, "{args:?} changed the state");
        assert_eq!(chaos::fixture::files(&f.img), before_files, "{args:?} left files");
        assert_eq!(
            chaos::fixture::files(&xml_dir),
            before_xml,
            "{args:?} changed XML"
        );
    }
    // An image whose chain is not what the journal says is refused.
    let vda = f.img.join("vda.s1").to_string_lossy().into_owned();
    tool("qemu-img", &["rebase", "-u", "-b", "", &vda]).unwrap();
    let err = f.fails(&["snapshot", "create", "vm", "s2"]).unwrap();
    assert!(err.contains("differs from the journal"), "{err}");
}

#[test]
fn library_api_round_trip() {
    let f = Fixture::new(2).unwrap();
    let (exec, rec) = recovery::open(&f.state).unwrap();
    assert!(rec.transactions.is_empty());
    let r = exec
        .snapshot_create(&executor::CreateRequest {
            domain: "vm".into(),
            name: "lib1".into(),
            description: None,
            disks: vec![executor::DiskRequest {
                disk: "vdb".into(),
                mode: journal::DiskSnapshotMode::External,
                file: Some(f.img.join("custom-vdb").to_string_lossy().into_owned()),
            }],
            checkpoint: None,
        })
        .unwrap();
    assert_eq!(r.overlays.len(), 2);
    assert!(f.img.join("custom-vdb").exists());
    let h = exec.journal().history("vm").unwrap();
    assert_eq!(h.last().unwrap().txn, r.txn);
    assert!(h.last().unwrap().what.contains("create snapshot lib1"));
    let d = exec
        .snapshot_delete(&executor::DeleteRequest {
            domain: "vm".into(),
            snapshot: "lib1".into(),
            children: false,
            metadata_only: false,
        })
        .unwrap();
    assert_eq!(d.merges.len(), 2);
    // A second process is refused while this one holds the directory.
    let err = f.fails(&["domain", "list"]).unwrap();
    assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
}

#[test]
fn revert_with_overlays_named_by_the_caller() {
    let f = Fixture::new(2).unwrap();
    f.write_present(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.write_present(B, 1).unwrap();
    let mine = f
        .img
        .join("vda-after-revert.qcow2")
        .to_string_lossy()
        .into_owned();
    let revert = f.root.path().join("revert.xml");
    std::fs::write(
        &revert,
        format!("<domainsnapshotrevert><disks><disk name='vda'><source file='{mine}'/></disk></disks></domainsnapshotrevert>"),
    )
    .unwrap();
    let out = json(
        &f.ok(&[
            "--json",
            "snapshot",
            "revert",
            "vm",
            "s1",
            "--xml",
            &revert.to_string_lossy(),
        ])
        .unwrap(),
    );
    assert_eq!(out["overlays"][0]["file"], mine.as_str(), "{out}");
    assert!(
        out["overlays"][1]["file"].as_str().unwrap().ends_with("vdb.s1-1"),
        "{out}"
    );
    assert_eq!(active(&f, "vda"), mine);
    assert_view(&mine, &[(0, A)]);
    // A second revert generates the next free name (the present overlay
    // still exists while the revert is planned) and removes the old one.
    let out = json(&f.ok(&["--json", "snapshot", "revert", "vm", "s1"]).unwrap());
    assert!(
        out["overlays"][1]["file"].as_str().unwrap().ends_with("vdb.s1-2"),
        "{out}"
    );
    assert!(
        !f.img.join("vdb.s1-1").exists() && !std::path::Path::new(&mine).exists(),
        "{out}"
    );
    // Naming a disk the snapshot does not have is refused.
    std::fs::write(
        &revert,
        "<domainsnapshotrevert><disks><disk name='vdq'><source file='/tmp/x'/></disk></disks></domainsnapshotrevert>",
    )
    .unwrap();
    let err = f
        .fails(&[
            "snapshot",
            "revert",
            "vm",
            "s1",
            "--xml",
            &revert.to_string_lossy(),
        ])
        .unwrap();
    assert!(
        err.contains("no external disk vdq") && err.contains("nothing was changed"),
        "{err}"
    );
}

#[test]
fn mixed_internal_and_external_trees_are_refused() {
    let f = Fixture::new(1).unwrap();
    tool("qemu-img", &["snapshot", "-c", "internal1", &f.base("vda")]).unwrap();
    let err = f.fails(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert!(
        err.contains("internal snapshots") && err.contains("refused"),
        "{err}"
    );
    let xml = f.root.path().join("vm2.xml");
    std::fs::write(&xml, domain_xml("vm2", &[("vda".into(), f.base("vda"))])).unwrap();
    let err = f.fails(&["domain", "define", &xml.to_string_lossy()]).unwrap();
    assert!(err.contains("internal snapshots"), "{err}");
    let x = f.root.path().join("snap.xml");
    std::fs::write(&x, "<domainsnapshot><name>i</name><disks><disk name='vda' snapshot='internal'/></disks></domainsnapshot>").unwrap();
    let err = f
        .fails(&["snapshot", "create", "vm", "--xml", &x.to_string_lossy()])
        .unwrap();
    assert!(err.contains("internal snapshots are not supported"), "{err}");
}
