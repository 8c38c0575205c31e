//! Redefine stores only what is true (issue 21): a snapshot whose image is
//! still the domain's writable disk, and two checkpoints sharing a bitmap,
//! are refused with the reason and change nothing; fsck judges by the same
//! rules; unbounded, BOM-prefixed and oddly named input gets a clear
//! answer.

use std::process::Command;

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

#[test]
fn libvirt_style_recording_bitmaps_are_refused_with_the_remedy() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c1"]).unwrap();
    f.ok(&["checkpoint", "create", "vm", "c2"]).unwrap();
    let mut files = Vec::new();
    for c in ["c1", "c2"] {
        let p = f.root.path().join(format!("{c}.xml"));
        std::fs::write(&p, f.ok(&["checkpoint", "dumpxml", "vm", c]).unwrap()).unwrap();
        files.push(p.display().to_string());
    }
    for c in ["c2", "c1"] {
        f.ok(&["checkpoint", "delete", "vm", c, "--metadata-only"])
            .unwrap();
    }
    // libvirt keeps every checkpoint's bitmap enabled.
    let base = f.base("vda");
    tool("qemu-img", &["bitmap", "--enable", &base, "c1"]).unwrap();
    let mut args = vec!["checkpoint", "redefine", "vm"];
    args.extend(files.iter().map(String::as_str));
    let err = f.fails(&args).unwrap();
    assert!(
        err.contains("records writes although the newer checkpoint c2 does")
            && err.contains("qemu-img bitmap --disable")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(f.state().unwrap().domains["vm"].checkpoints.is_empty());
    // Done as the message says, the same documents are accepted and fsck
    // agrees.
    tool("qemu-img", &["bitmap", "--disable", &base, "c1"]).unwrap();
    f.ok(&args).unwrap();
    f.ok(&["fsck"]).unwrap();
}

/// A domain `vm3` with a file disk, a block device and a cdrom.
fn domain_with_other_disks(f: &Fixture) {
    let vda = f.img.join("vm3-vda.qcow2").display().to_string();
    tool("qemu-img", &["create", "-q", "-f", "qcow2", &vda, "4M"]).unwrap();
    let xml = format!(
        "<domain type='kvm'>\n  <name>vm3</name>\n  <memory unit='KiB'>65536</memory>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{vda}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type='block' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source dev='/dev/null'/>\n      <target dev='vdz' bus='virtio'/>\n    </disk>\n    <disk type='file' device='cdrom'>\n      <target dev='hdc' bus='sata'/>\n      <readonly/>\n    </disk>\n  </devices>\n</domain>\n"
    );
    let p = f.root.path().join("vm3.xml");
    std::fs::write(&p, xml).unwrap();
    f.ok(&["domain", "define", p.to_str().unwrap()]).unwrap();
}

#[test]
fn block_disks_and_cdroms_are_named_not_invisible() {
    let f = Fixture::new(1).unwrap();
    domain_with_other_disks(&f);
    // Excluding them is accepted; snapshotting them is refused by kind.
    f.ok(&[
        "snapshot",
        "create",
        "vm3",
        "s1",
        "--diskspec",
        "vdz,snapshot=no",
        "--diskspec",
        "hdc,snapshot=no",
    ])
    .unwrap();
    let err = f
        .fails(&[
            "snapshot",
            "create",
            "vm3",
            "s2",
            "--diskspec",
            "vdz,file=/tmp/never",
        ])
        .unwrap();
    assert!(
        err.contains("disk vdz of domain vm3 is a block device") && err.contains("nothing was changed"),
        "{err}"
    );
    let err = f
        .fails(&["checkpoint", "create", "vm3", "c1", "--diskspec", "hdc"])
        .unwrap();
    assert!(err.contains("disk hdc of domain vm3 is a cdrom"), "{err}");
    f.ok(&[
        "checkpoint",
        "create",
        "vm3",
        "c1",
        "--diskspec",
        "hdc,checkpoint=no",
    ])
    .unwrap();
    // A libvirt-style document that lists the cdrom as snapshot='no' is
    // carried; one that snapshots the block device is refused by kind.
    let s1 = f.ok(&["snapshot", "dumpxml", "vm3", "s1"]).unwrap();
    f.ok(&["snapshot", "delete", "vm3", "s1", "--metadata-only"])
        .unwrap();
    let with_cdrom = s1.replacen("<disks>", "<disks>\n    <disk name='hdc' snapshot='no'/>", 1);
    let p = f.root.path().join("s1-cdrom.xml");
    std::fs::write(&p, &with_cdrom).unwrap();
    f.ok(&["snapshot", "redefine", "vm3", p.to_str().unwrap()])
        .unwrap();
    f.ok(&["snapshot", "delete", "vm3", "s1", "--metadata-only"])
        .unwrap();
    let with_block = s1.replacen(
        "<disks>",
        "<disks>\n    <disk name='vdz' snapshot='external'><source file='/tmp/vdz.s1'/></disk>",
        1,
    );
    std::fs::write(&p, &with_block).unwrap();
    let err = f
        .fails(&["snapshot", "redefine", "vm3", p.to_str().unwrap()])
        .unwrap();
    assert!(err.contains("disk vdz: the disk is a block device"), "{err}");
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn overlays_of_kinds_snapjournal_does_not_manage_are_refused_by_name() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    let s1 = f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap();
    let overlay = f.img.join("vda.s1").display().to_string();
    assert!(s1.contains(&overlay), "{s1}");
    f.ok(&["snapshot", "delete", "vm", "s1", "--metadata-only"])
        .unwrap();
    let p = f.root.path().join("s1.xml");
    let cases = [
        (
            s1.replacen(
                "snapshot='external' type='file'",
                "snapshot='external' type='block'",
                1,
            ),
            "of type 'block'",
        ),
        (
            s1.replacen("<driver type='qcow2'/>", "<driver type='qed'/>", 1),
            "a qed image",
        ),
        (
            s1.replacen(&format!("file='{overlay}'"), "", 1),
            "names no overlay file",
        ),
    ];
    for (doc, want) in &cases {
        assert_ne!(doc, &s1, "the edit for {want:?} did not apply");
        std::fs::write(&p, doc).unwrap();
        let err = f
            .fails(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
            .unwrap();
        assert!(
            err.contains(want) && err.contains("nothing was changed"),
            "{want}: {err}"
        );
        // Said once, not once more through the error's source chain.
        assert_eq!(err.matches("nothing was changed").count(), 1, "{err}");
    }
    // A qed file where the overlay should be: named, not "stands on nothing".
    let qed = f.img.join("vda.qed").display().to_string();
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qed",
            "-F",
            "qcow2",
            "-b",
            &f.base("vda"),
            &qed,
        ],
    )
    .unwrap();
    std::fs::write(&p, s1.replacen(&overlay, &qed, 1)).unwrap();
    let err = f
        .fails(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    assert!(err.contains("is a qed image"), "{err}");
    assert!(f.state().unwrap().domains["vm"].snapshots.is_empty());
}

#[test]
fn redefining_the_same_snapshot_with_other_line_endings_and_quotes_is_a_no_op() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    let s1 = f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap();
    let start = s1.find("<domain").unwrap();
    let (head, dom) = s1.split_at(start);
    let requoted = format!("{head}{}", dom.replace("'", "\"").replace('\n', "\r\n"));
    let p = f.root.path().join("s1.xml");
    std::fs::write(&p, requoted).unwrap();
    let out = f
        .ok(&["--json", "snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["unchanged"], serde_json::json!(["s1"]), "{out}");
}

#[test]
fn what_the_record_does_not_model_round_trips_as_written() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    let dumped = f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap();
    f.ok(&["snapshot", "delete", "vm", "s1", "--metadata-only"])
        .unwrap();
    // libvirt's own pieces: a label on the overlay's source, a qcow2
    // metadata cache on its driver, a cdrom left out, the inactive
    // definition and the migration cookie of a running domain.
    let cdrom = "    <disk type='file' device='cdrom'>\n      <source file='/isos/install.iso'/>\n      <target dev='hdc' bus='sata'/>\n      <readonly/>\n    </disk>\n  </devices>";
    let doc = dumped
        .replacen("<driver type='qcow2'/>", "<driver type='qcow2'>\n        <metadata_cache>\n          <max_size unit='bytes'>1234</max_size>\n        </metadata_cache>\n      </driver>", 1)
        .replacen("'/>\n    </disk>\n  </disks>", "'>\n        <seclabel model='dac' relabel='no'/>\n      </source>\n    </disk>\n    <disk name='hdc' snapshot='no'/>\n  </disks>", 1)
        .replacen("  </devices>", cdrom, 1)
        .replacen(
            "</domain>\n</domainsnapshot>",
            "</domain>\n  <inactiveDomain type='kvm'>\n    <name>vm</name>\n    <memory unit='KiB'>131072</memory>\n    <os><type arch='x86_64'>hvm</type></os>\n  </inactiveDomain>\n  <cookie>\n    <cpu mode='custom' match='exact' check='full'>\n      <model fallback='forbid'>qemu64</model>\n    </cpu>\n  </cookie>\n</domainsnapshot>",
            1,
        );
    for piece in [
        "<seclabel",
        "<metadata_cache>",
        "name='hdc'",
        "<inactiveDomain",
        "<cookie>",
        "install.iso",
    ] {
        assert!(doc.contains(piece), "the test document lacks {piece}:\n{doc}");
    }
    let p = f.root.path().join("s1.xml");
    std::fs::write(&p, &doc).unwrap();
    f.ok(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    let again = f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap();
    for piece in [
        "<seclabel model='dac' relabel='no'/>",
        "<max_size unit='bytes'>1234</max_size>",
        "<disk name='hdc' snapshot='no'/>",
        "<inactiveDomain type='kvm'>",
        "<model fallback='forbid'>qemu64</model>",
    ] {
        assert!(again.contains(piece), "{piece} was dropped:\n{again}");
    }
    let schema = Command::new("xmllint")
        .args([
            "--noout",
            "--relaxng",
            "/usr/share/libvirt/schemas/domainsnapshot.rng",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(again.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        schema.status.success(),
        "{}\n{again}",
        String::from_utf8_lossy(&schema.stderr)
    );
    let file = f.state.join("snapshots/vm/s1.xml");
    assert_eq!(std::fs::read_to_string(file).unwrap(), again);
    // The dump redefines as identical; another cookie is a conflict.
    let p2 = f.root.path().join("s1-again.xml");
    std::fs::write(&p2, &again).unwrap();
    let out = f
        .ok(&["--json", "snapshot", "redefine", "vm", p2.to_str().unwrap()])
        .unwrap();
    assert!(out.contains("\"unchanged\":[\"s1\"]"), "{out}");
    std::fs::write(&p2, again.replace("qemu64", "Haswell")).unwrap();
    let e = f
        .fails(&["snapshot", "redefine", "vm", p2.to_str().unwrap()])
        .unwrap();
    assert!(e.contains("kept as written"), "{e}");
    f.ok(&["fsck"]).unwrap();
    // Deleted with the snapshot.
    f.ok(&["snapshot", "delete", "vm", "s1", "--metadata-only"])
        .unwrap();
    f.ok(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn deleting_one_of_two_snapshots_that_freeze_one_image_keeps_the_image() {
    let f = Fixture::new(1).unwrap();
    f.write_present(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.write_present(B, 1).unwrap();
    // s2 is s1 under another name: both freeze the base image.
    let s2 =
        f.ok(&["snapshot", "dumpxml", "vm", "s1"])
            .unwrap()
            .replacen("<name>s1</name>", "<name>s2</name>", 1);
    let p = f.root.path().join("s2.xml");
    std::fs::write(&p, s2).unwrap();
    f.ok(&["snapshot", "redefine", "vm", p.to_str().unwrap()])
        .unwrap();
    f.ok(&["snapshot", "revert", "vm", "s2"]).unwrap();
    // Nothing is merged: s1 still needs the base as it is.
    let r = f.ok(&["--json", "snapshot", "delete", "vm", "s2"]).unwrap();
    assert!(r.contains("\"merges\":[]"), "{r}");
    f.ok(&["fsck"]).unwrap();
    let s1 = &f.state().unwrap().domains["vm"].snapshots["s1"];
    assert_eq!(s1.disks[0].frozen.as_ref().unwrap().path, f.base("vda"));
    f.ok(&["snapshot", "revert", "vm", "s1"]).unwrap();
    let active = f.state().unwrap().domains["vm"].core.disks["vda"].chain[0]
        .path
        .clone();
    assert!(region_holds(&active, A, 0).unwrap() && region_holds(&active, 0, 1).unwrap());
    f.ok(&["fsck"]).unwrap();
}
