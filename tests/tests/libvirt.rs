//! The libvirt backend against a real libvirtd (started by `scripts/test`,
//! or `bash scripts/libvirtd start`): domains adopted from libvirt, running
//! and shut off, snapshotted, merged and reverted through libvirt's API,
//! libvirt's metadata kept a projection of the journal, bad input refused
//! with nothing changed, a crash at the commit point finished by recovery.

use chaos::libvirt::{virsh, LibvirtFixture};
use snapjournal_tests::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The journal's chain of `disk`, active image first.
fn journal_chain(f: &LibvirtFixture, disk: &str) -> Vec<String> {
    let exec = recovery::open_without_recovery(&f.state).unwrap();
    let state = exec.journal().state().unwrap();
    state.domains[&f.domain].core.disks[disk]
        .chain
        .iter()
        .map(|c| c.path.clone())
        .collect()
}

/// libvirt's live (or persistent) chains equal the journal's; libvirt lists
/// exactly `snapshots`; fsck is clean (it compares libvirt's metadata too).
fn assert_agree(f: &LibvirtFixture, snapshots: &[&str], current: Option<&str>) {
    let running = f.running().unwrap();
    for (disk, chain) in f.chains(!running).unwrap() {
        let ours = journal_chain(f, &disk);
        if running {
            assert_eq!(chain, ours, "libvirt's live chain of {disk}");
        } else {
            assert_eq!(
                chain.first(),
                ours.first(),
                "libvirt's persistent source of {disk}"
            );
        }
    }
    let mut want: Vec<String> = snapshots.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(f.libvirt_snapshots().unwrap(), want);
    if let Some(c) = current {
        assert_eq!(f.libvirt_current().unwrap().as_deref(), Some(c));
    }
    f.ok(&["fsck"]).unwrap();
}

/// The guest's view of every disk (read through its active chain).
fn assert_data(f: &LibvirtFixture, want: &[(u64, u8)]) {
    for disk in &f.disks {
        let active = journal_chain(f, disk)[0].clone();
        assert_view(&active, want);
    }
}

#[test]
fn a_running_libvirt_domain_is_adopted_snapshotted_merged_and_reverted() {
    let f = LibvirtFixture::new(2, true).unwrap();
    // libvirt's own snapshot, with its overlays, before snapjournal.
    virsh(&["snapshot-create-as", &f.domain, "s1", "--disk-only", "--atomic"]).unwrap();
    f.guest_write(A, 0).unwrap();
    let r = json(
        &f.ok(&["--json", "domain", "adopt", &f.domain, "--libvirt"])
            .unwrap(),
    );
    assert_eq!(r["running"], true, "{r}");
    assert_eq!(r["snapshots"], serde_json::json!(["s1"]), "{r}");
    assert_eq!(r["adopted_images"].as_array().unwrap().len(), 2, "{r}");
    assert_agree(&f, &["s1"], Some("s1"));

    // Create: one atomic switch through libvirt; libvirt's metadata
    // written from the journal.
    let r = json(&f.ok(&["--json", "snapshot", "create", &f.domain, "s2"]).unwrap());
    let overlay = r["overlays"][0]["file"].as_str().unwrap().to_string();
    assert_eq!(f.chains(false).unwrap()[0].1[0], overlay);
    assert_agree(&f, &["s1", "s2"], Some("s2"));
    f.guest_write(B, 1).unwrap();
    f.ok(&["snapshot", "create", &f.domain, "s3"]).unwrap();
    f.guest_write(C, 2).unwrap();
    assert_agree(&f, &["s1", "s2", "s3"], Some("s3"));

    // Delete a middle snapshot: a block commit below the active image.
    let r = json(&f.ok(&["--json", "snapshot", "delete", &f.domain, "s2"]).unwrap());
    assert!(r["merges"][0].as_str().unwrap().contains("commit"), "{r}");
    assert_agree(&f, &["s1", "s3"], Some("s3"));
    assert_data(&f, &[(0, A), (1, B), (2, C)]);
    // Delete the leaf: an active commit, pivoted.
    f.ok(&["snapshot", "delete", &f.domain, "s3"]).unwrap();
    assert_agree(&f, &["s1"], Some("s1"));
    assert_data(&f, &[(0, A), (1, B), (2, C)]);
    assert!(f.running().unwrap());

    // Revert: stopped, reverted, started again through libvirt.
    let r = json(&f.ok(&["--json", "snapshot", "revert", &f.domain, "s1"]).unwrap());
    assert_eq!(r["restarted_running"], true, "{r}");
    assert!(f.running().unwrap());
    assert_agree(&f, &["s1"], Some("s1"));
    assert_data(&f, &[]);
}

#[test]
fn a_snapshot_with_several_children_goes_with_children_which_libvirt_refuses() {
    let f = LibvirtFixture::new(1, true).unwrap();
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    f.guest_write(A, 0).unwrap();
    f.ok(&["snapshot", "create", &f.domain, "s1"]).unwrap();
    f.guest_write(B, 1).unwrap();
    f.ok(&["snapshot", "create", &f.domain, "s2"]).unwrap();
    f.ok(&["snapshot", "revert", &f.domain, "s1"]).unwrap();
    f.guest_write(C, 2).unwrap();
    f.ok(&["snapshot", "create", &f.domain, "s3"]).unwrap();
    assert_agree(&f, &["s1", "s2", "s3"], Some("s3"));
    // libvirt itself refuses to delete an external snapshot with children.
    let own = virsh(&["snapshot-delete", &f.domain, "s1"]);
    assert!(own.is_err(), "libvirt deleted s1: {own:?}");
    assert_agree(&f, &["s1", "s2", "s3"], Some("s3"));
    let e = f.fails(&["snapshot", "delete", &f.domain, "s1"]).unwrap();
    assert!(
        e.contains("--children") && e.contains("nothing was changed"),
        "{e}"
    );
    f.ok(&["snapshot", "delete", &f.domain, "s1", "--children"])
        .unwrap();
    assert!(f.running().unwrap());
    assert_agree(&f, &[], None);
    assert_data(&f, &[(0, A), (2, C)]);
}

#[test]
fn a_shut_off_libvirt_domain_is_operated_on_its_files_and_libvirt_follows() {
    let f = LibvirtFixture::new(2, false).unwrap();
    virsh(&["snapshot-create-as", &f.domain, "s1", "--disk-only", "--atomic"]).unwrap();
    let r = json(
        &f.ok(&["--json", "domain", "adopt", &f.domain, "--libvirt"])
            .unwrap(),
    );
    assert_eq!(r["running"], false, "{r}");
    for disk in &f.disks {
        write_pattern(&journal_chain(&f, disk)[0], A, 0).unwrap();
    }
    f.ok(&["snapshot", "create", &f.domain, "s2"]).unwrap();
    assert_agree(&f, &["s1", "s2"], Some("s2"));
    f.ok(&["snapshot", "delete", &f.domain, "s1"]).unwrap();
    assert_agree(&f, &["s2"], Some("s2"));
    f.ok(&["snapshot", "revert", &f.domain, "s2"]).unwrap();
    assert_agree(&f, &["s2"], Some("s2"));
    assert_data(&f, &[(0, A)]);
    // libvirt starts the domain on the chain the journal made.
    virsh(&["start", &f.domain]).unwrap();
    assert_agree(&f, &["s2"], Some("s2"));
    virsh(&["destroy", &f.domain]).unwrap();
}

#[test]
fn adoption_refuses_what_it_cannot_take_and_changes_nothing() {
    let f = LibvirtFixture::new(1, false).unwrap();
    let e = f
        .fails(&["domain", "adopt", "sjt-no-such-domain", "--libvirt"])
        .unwrap();
    assert!(
        e.contains("qemu:///system") && e.contains("sjt-no-such-domain") && e.contains("nothing was changed"),
        "{e}"
    );
    let bad = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
    let e = f
        .fails(&["domain", "adopt", &f.domain, "--libvirt", "--uri", bad])
        .unwrap();
    assert!(e.contains(bad) && e.contains("nothing was changed"), "{e}");
    let e = f.fails(&["domain", "adopt", &f.domain]).unwrap();
    assert!(e.contains("--libvirt"), "{e}");
    // A writable disk that is not a file.
    let xml = f.dir.join("block.xml");
    let name = format!("{}-blk", f.domain);
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os><devices><disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/null'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
        ),
    )
    .unwrap();
    virsh(&["define", &xml.to_string_lossy()]).unwrap();
    let e = f.fails(&["domain", "adopt", &name, "--libvirt"]);
    let _ = virsh(&["undefine", &name]);
    let e = e.unwrap();
    assert!(e.contains("block") && e.contains("nothing was changed"), "{e}");
    let list = f.ok(&["--json", "domain", "list"]).unwrap();
    assert!(!list.contains("sjt-"), "{list}");
    // Adopted once; a second adoption is refused.
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    let e = f.fails(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    assert!(e.contains("already defined"), "{e}");
}

#[test]
fn fsck_sees_libvirt_changed_behind_the_journal_and_repairs_it() {
    let f = LibvirtFixture::new(1, true).unwrap();
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    f.ok(&["snapshot", "create", &f.domain, "s1"]).unwrap();
    f.ok(&["snapshot", "create", &f.domain, "s2"]).unwrap();
    virsh(&["snapshot-delete", &f.domain, "s2", "--metadata"]).unwrap();
    let out = f.run(&["fsck"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libvirt lacks snapshot s2"), "{text}");
    f.ok(&["fsck", "--repair"]).unwrap();
    assert_agree(&f, &["s1", "s2"], Some("s2"));
}

#[test]
fn a_crash_after_libvirt_switched_the_disks_rolls_forward() {
    let f = LibvirtFixture::new(2, true).unwrap();
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    // Killed right after libvirt switched the disks (before the commit).
    let out = f
        .command(&["snapshot", "create", &f.domain, "s1"])
        .env("SNAPJOURNAL_CRASH_NAME", "libvirt.snapshot.after")
        .env("SNAPJOURNAL_CRASH_AT", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let r = f.ok(&["recover"]).unwrap();
    assert!(r.contains("roll FORWARD"), "{r}");
    assert_agree(&f, &["s1"], Some("s1"));
    // Killed before libvirt was asked: rolled back, the overlays gone.
    let before = f.chains(false).unwrap();
    let out = f
        .command(&["snapshot", "create", &f.domain, "s2"])
        .env("SNAPJOURNAL_CRASH_NAME", "libvirt.snapshot.before")
        .env("SNAPJOURNAL_CRASH_AT", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let r = f.ok(&["recover"]).unwrap();
    assert!(r.contains("roll BACK"), "{r}");
    assert_eq!(f.chains(false).unwrap(), before);
    assert_agree(&f, &["s1"], Some("s1"));
}

/// The dirty bytes QEMU counts in bitmap `name`, summed over the images
/// of the chain that hold one (a snapshot starts the bitmap anew in the
/// overlay; the changes since the checkpoint are the union along the
/// chain, and the test writes disjoint regions). Read by the harness.
fn dirty_bytes(f: &LibvirtFixture, name: &str) -> u64 {
    let reply = virsh(&[
        "qemu-monitor-command",
        &f.domain,
        r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#,
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    v["return"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["drv"] == "qcow2")
        .flat_map(|n| n["dirty-bitmaps"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["name"] == name)
        .filter_map(|b| b["count"].as_u64())
        .sum()
}

#[test]
fn checkpoints_of_a_running_libvirt_domain_go_through_libvirt() {
    let f = LibvirtFixture::new(1, true).unwrap();
    // One of libvirt's own, adopted with the domain.
    virsh(&["checkpoint-create-as", &f.domain, "c1"]).unwrap();
    f.guest_write(A, 0).unwrap();
    let r = json(
        &f.ok(&["--json", "domain", "adopt", &f.domain, "--libvirt"])
            .unwrap(),
    );
    assert_eq!(r["checkpoints"], serde_json::json!(["c1"]), "{r}");
    f.ok(&["fsck"]).unwrap();
    f.ok(&["checkpoint", "create", &f.domain, "c2"]).unwrap();
    assert_eq!(f.libvirt_checkpoints().unwrap(), vec!["c1", "c2"]);
    f.guest_write(B, 1).unwrap();
    assert_eq!(dirty_bytes(&f, "c2"), REGION);
    f.ok(&["fsck"]).unwrap();
    // A snapshot and the active commit of its delete keep the bitmaps.
    f.ok(&["snapshot", "create", &f.domain, "s1"]).unwrap();
    f.guest_write(C, 2).unwrap();
    f.ok(&["snapshot", "create", &f.domain, "s2"]).unwrap();
    f.ok(&["fsck"]).unwrap();
    f.ok(&["snapshot", "delete", &f.domain, "s2"]).unwrap();
    f.ok(&["fsck"]).unwrap();
    // Pulling the user's base into the active image would drop the
    // bitmaps: refused, nothing changed.
    let e = f.fails(&["snapshot", "delete", &f.domain, "s1"]).unwrap();
    assert!(
        e.contains("block pull") && e.contains("nothing was changed"),
        "{e}"
    );
    assert!(dirty_bytes(&f, "c2") >= 2 * REGION, "c2 lost the writes after it");
    assert!(dirty_bytes(&f, "c1") >= 3 * REGION, "c1 lost the writes after it");
    // c2 goes: c1 still records everything it held.
    f.ok(&["checkpoint", "delete", &f.domain, "c2"]).unwrap();
    assert_eq!(f.libvirt_checkpoints().unwrap(), vec!["c1"]);
    f.ok(&["fsck"]).unwrap();
    assert_agree(&f, &["s1"], Some("s1"));
}

#[test]
fn checkpoints_of_a_shut_off_libvirt_domain_and_internal_snapshots() {
    let f = LibvirtFixture::new(1, false).unwrap();
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    f.ok(&["checkpoint", "create", &f.domain, "c1"]).unwrap();
    write_pattern(&journal_chain(&f, "vda")[0], A, 0).unwrap();
    f.ok(&["checkpoint", "create", &f.domain, "c2"]).unwrap();
    assert_eq!(f.libvirt_checkpoints().unwrap(), vec!["c1", "c2"]);
    f.ok(&["fsck"]).unwrap();
    f.ok(&["checkpoint", "delete", &f.domain, "c2"]).unwrap();
    assert_eq!(f.libvirt_checkpoints().unwrap(), vec!["c1"]);
    f.ok(&["fsck"]).unwrap();
    // libvirt starts the domain with the bitmap the journal left.
    virsh(&["start", "--paused", &f.domain]).unwrap();
    f.ok(&["fsck"]).unwrap();
    virsh(&["destroy", "--graceful", &f.domain]).unwrap();

    // A domain with an internal snapshot is refused, nothing changed.
    let g = LibvirtFixture::new(1, false).unwrap();
    virsh(&["snapshot-create-as", &g.domain, "internal1"]).unwrap();
    let e = g.fails(&["domain", "adopt", &g.domain, "--libvirt"]).unwrap();
    assert!(e.contains("internal") && e.contains("nothing was changed"), "{e}");
    let list = g.ok(&["--json", "domain", "list"]).unwrap();
    assert!(!list.contains(&g.domain), "{list}");
}

/// Adds `<snapshotDeleteInProgress/>` to every disk of libvirt's snapshot
/// `name` (what libvirt leaves when its own delete of a child stops part
/// way), through libvirt's redefinition, which is how libvirt reads it.
fn mark_delete_in_progress(f: &LibvirtFixture, name: &str) {
    let xml = virsh(&["snapshot-dumpxml", &f.domain, name]).unwrap();
    let (head, rest) = xml.split_once("<disks>").expect("snapshot has <disks>");
    let (disks, tail) = rest.split_once("</disks>").unwrap();
    let marked = disks.replace(
        "snapshot='external' type='file'>",
        "snapshot='external' type='file'><snapshotDeleteInProgress/>",
    );
    assert_ne!(marked, disks, "no external disk in {xml}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{head}<disks>{marked}</disks>{tail}")).unwrap();
    virsh(&[
        "snapshot-create",
        &f.domain,
        "--redefine",
        file.path().to_str().unwrap(),
    ])
    .unwrap();
}

fn marked(f: &LibvirtFixture, name: &str) -> bool {
    virsh(&["snapshot-dumpxml", &f.domain, name])
        .unwrap()
        .contains("snapshotDeleteInProgress")
}

#[test]
fn a_delete_marker_libvirt_left_is_cleared_and_the_snapshot_deletes() {
    let f = LibvirtFixture::new(1, true).unwrap();
    virsh(&["snapshot-create-as", &f.domain, "s1", "--disk-only", "--atomic"]).unwrap();
    f.guest_write(A, 0).unwrap();
    virsh(&["snapshot-create-as", &f.domain, "s2", "--disk-only", "--atomic"]).unwrap();
    f.guest_write(B, 1).unwrap();
    mark_delete_in_progress(&f, "s1");
    assert!(marked(&f, "s1"));
    let e = virsh(&["snapshot-delete", &f.domain, "s1"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not completed snapshot delete"), "libvirt: {e}");

    // Adoption redefines libvirt's metadata from the journal: the marker
    // is gone and the snapshot deletes.
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    assert!(!marked(&f, "s1"));
    assert_agree(&f, &["s1", "s2"], Some("s2"));

    // Left again behind the journal's back: fsck names it, repair clears it.
    mark_delete_in_progress(&f, "s1");
    assert!(marked(&f, "s1"));
    let out = f.run(&["--json", "fsck"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("libvirt-delete-marker") && text.contains("snapshot s1"),
        "{text}"
    );
    f.ok(&["fsck", "--repair"]).unwrap();
    assert!(!marked(&f, "s1"));
    assert_agree(&f, &["s1", "s2"], Some("s2"));

    f.ok(&["snapshot", "delete", &f.domain, "s1"]).unwrap();
    assert_agree(&f, &["s2"], Some("s2"));
    assert_data(&f, &[(0, A), (1, B)]);
}

/// A QMP command sent through libvirt's monitor passthrough.
fn qmp(f: &LibvirtFixture, cmd: serde_json::Value) -> serde_json::Value {
    let out = virsh(&["qemu-monitor-command", &f.domain, &cmd.to_string()]).unwrap();
    json(&out)["return"].clone()
}

/// Commits the image at `top` into `base` on the first disk behind
/// libvirt's back (QEMU dismisses the job itself): the state libvirtd
/// leaves when it is killed after ending a block job and before saving
/// the new chain — QEMU runs the merged chain, libvirt lists the old one.
fn commit_behind_libvirt(f: &LibvirtFixture, top: &str, base: &str) {
    let nodes = qmp(
        f,
        serde_json::json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}}),
    );
    let node = |path: &str| -> String {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["drv"] == "qcow2" && n["file"] == path)
            .unwrap_or_else(|| panic!("no node for {path}: {nodes}"))["node-name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let active = journal_chain(f, &f.disks[0])[0].clone();
    qmp(
        f,
        serde_json::json!({"execute": "block-commit", "arguments": {
            "job-id": "behind-libvirt", "device": node(&active),
            "top-node": node(top), "base-node": node(base)}}),
    );
    for _ in 0..500 {
        let jobs = qmp(f, serde_json::json!({"execute": "query-jobs"}));
        if jobs.as_array().unwrap().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the commit behind libvirt's back did not end");
}

/// Deletes `snapshot`, killed right after the commit point (before any
/// merge ran).
fn crash_after_commit(f: &LibvirtFixture, snapshot: &str) {
    let out = f
        .command(&["snapshot", "delete", &f.domain, snapshot])
        .env("SNAPJOURNAL_CRASH_NAME", "commit.after")
        .env("SNAPJOURNAL_CRASH_AT", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !err.contains("nothing was changed"),
        "{err}"
    );
}

#[test]
fn a_merge_libvirt_lost_track_of_is_judged_from_qemus_graph() {
    let f = LibvirtFixture::new(1, true).unwrap();
    let disk = f.disks[0].clone();
    f.ok(&["domain", "adopt", &f.domain, "--libvirt"]).unwrap();
    for (i, s) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
        f.guest_write(A + i as u8, i as u64).unwrap();
        f.ok(&["snapshot", "create", &f.domain, s]).unwrap();
    }
    // Chain: o4 -> o3 -> o2 -> o1 -> base. Deleting s3 commits o3 (right
    // below the active image) into o2; QEMU already did, libvirt missed it.
    let chain = journal_chain(&f, &disk);
    crash_after_commit(&f, "s3");
    commit_behind_libvirt(&f, &chain[1], &chain[2]);
    let stale = f.chains(false).unwrap()[0].1.clone();
    assert_eq!(stale, chain, "libvirt should not have noticed");
    // The delete was committed and killed before its merge: recovery
    // finds the merge not done by libvirt's view, QEMU refuses it.
    let r = f.ok(&["recover"]).unwrap();
    assert!(r.contains("roll FORWARD"), "{r}");
    // A pull that copies nothing brought libvirt's view in line.
    assert_agree(&f, &["s1", "s2", "s4"], Some("s4"));
    assert_data(&f, &[(0, A), (1, A + 1), (2, A + 2), (3, A + 3)]);

    // Deeper (o2 below o4 below the active o5): no job copies nothing
    // there, so libvirt's view stays behind; fsck says so and that the
    // data is right, and libvirt reads the chain again at the next start.
    f.ok(&["snapshot", "create", &f.domain, "s5"]).unwrap();
    let chain = journal_chain(&f, &disk);
    crash_after_commit(&f, "s2");
    commit_behind_libvirt(&f, &chain[2], &chain[3]);
    let r = f.ok(&["recover"]).unwrap();
    assert!(r.contains("roll FORWARD"), "{r}");
    let out = f.run(&["--json", "fsck", "--repair"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("libvirt-live-view-stale"), "{text}");
    assert!(!text.contains("\"I2\""), "QEMU runs the journal's chain: {text}");
    virsh(&["destroy", &f.domain]).unwrap();
    virsh(&["start", &f.domain]).unwrap();
    assert_agree(&f, &["s1", "s4", "s5"], Some("s5"));
    assert_data(&f, &[(0, A), (1, A + 1), (2, A + 2), (3, A + 3)]);
}
