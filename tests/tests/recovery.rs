//! Recovery and fsck: crashes injected at every crash point of the offline
//! operations, and hand-made broken states for every fsck finding kind.

use chaos::runner::{reference, run_case, Outcome};
use chaos::scenario::Op;
use snapjournal_tests::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn crash_everywhere(op: Op, disks: usize) {
    let r = reference(op, disks).unwrap();
    assert!(
        r.trace.len() > 10,
        "{} passes only {} crash points",
        op.name(),
        r.trace.len()
    );
    let (mut back, mut fwd) = (0, 0);
    for i in 1..=r.trace.len() as u64 {
        let c = run_case(op, disks, &r, i, None, None).unwrap();
        match c.outcome {
            Outcome::RolledBack => back += 1,
            Outcome::RolledForward => fwd += 1,
            Outcome::NotReached => panic!("crash point {i} ({}) not reached", c.point),
            Outcome::Violation(v) => panic!("{} crash at #{i} ({}): {v:#?}", op.name(), c.point),
        }
    }
    assert!(fwd > 0, "{}: no crash rolled forward", op.name());
    if op != Op::DeleteLeaf && op != Op::DeleteRoot && op != Op::DeleteMetadataOnly {
        assert!(back > 0, "{}: no crash rolled back", op.name());
    }
}

#[test]
fn crash_at_every_point_of_create_on_two_disks() {
    crash_everywhere(Op::Create, 2);
}

#[test]
fn crash_at_every_point_of_revert() {
    crash_everywhere(Op::Revert, 1);
}

#[test]
fn crash_at_every_point_of_delete() {
    crash_everywhere(Op::DeleteLeaf, 1);
}

#[test]
fn crash_during_recovery_is_recovered() {
    let r = reference(Op::Create, 1).unwrap();
    // Crash after the first overlay exists, before the commit point.
    let at = r.trace.iter().position(|p| p == "step.apply.after").unwrap() as u64 + 1;
    let rt = chaos::runner::recovery_trace(Op::Create, 1, at).unwrap();
    assert!(!rt.is_empty());
    for j in 1..=rt.len() as u64 {
        let c = run_case(Op::Create, 1, &r, at, Some(j), rt.get(j as usize - 1).cloned()).unwrap();
        assert!(!matches!(c.outcome, Outcome::Violation(_)), "{c:?}");
    }
}

/// A 2-disk fixture whose snapshot create was killed right after its first
/// overlay was created (before the commit point).
fn crashed_after_first_overlay() -> Fixture {
    let f = Fixture::new(2).unwrap();
    let r = reference(Op::Create, 2).unwrap();
    let at = r.trace.iter().position(|p| p == "step.apply.after").unwrap() as u64 + 1;
    let st = f
        .command(&Op::Create.args())
        .env("SNAPJOURNAL_CRASH_AT", at.to_string())
        .status()
        .unwrap();
    assert!(!st.success());
    f
}

#[test]
fn dry_run_explains_and_changes_nothing() {
    let f = crashed_after_first_overlay();
    let text = f.ok(&["recover", "--dry-run"]).unwrap();
    assert!(text.contains("create snapshot s1 of domain vm"), "{text}");
    assert!(text.contains("commit point not reached"), "{text}");
    assert!(text.contains("roll BACK"), "{text}");
    assert!(text.contains("will undo step 0"), "{text}");
    assert!(f.img.join("vda.s1").exists(), "dry run changed nothing");
    let j = json(&f.ok(&["--json", "recover", "--dry-run"]).unwrap());
    assert_eq!(j["transactions"][0]["plan"]["decision"]["direction"], "Back");
    let fsck = f.run(&["fsck"]).unwrap();
    assert_eq!(fsck.status.code(), Some(1), "an open transaction is a finding");
    f.ok(&["recover"]).unwrap();
    assert!(!f.img.join("vda.s1").exists());
    let again = json(&f.ok(&["--json", "recover"]).unwrap());
    assert!(again["transactions"].as_array().unwrap().is_empty());
    assert_eq!(f.run(&["fsck"]).unwrap().status.code(), Some(0));
}

#[test]
fn a_reading_command_after_a_crash_recovers_first() {
    // Listing opens the journal read-only only when nothing is open: after
    // a crash it recovers, exactly as a writing command does.
    let f = crashed_after_first_overlay();
    assert!(f.img.join("vda.s1").exists());
    let out = f.command(&["snapshot", "list", "vm"]).output().unwrap();
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("recovered open transactions first"), "{note}");
    assert!(
        !f.img.join("vda.s1").exists(),
        "the crashed create was rolled back"
    );
    assert_eq!(f.run(&["fsck"]).unwrap().status.code(), Some(0));
    // Nothing open now: the same command neither recovers nor writes.
    let journal = f.state.join("journal");
    let before = files_in(&journal);
    let out = f.command(&["snapshot", "list", "vm"]).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    assert_eq!(
        files_in(&journal),
        before,
        "a read-only open leaves the journal's files alone"
    );
}

fn files_in(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("LOG"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

fn fsck_json(f: &Fixture, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["--json", "fsck"];
    args.extend_from_slice(extra);
    let out = f.run(&args).unwrap();
    (
        out.status.code().unwrap(),
        json(&String::from_utf8_lossy(&out.stdout)),
    )
}

fn kinds(v: &serde_json::Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn fsck_finds_and_repairs_xml_problems() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert_eq!(fsck_json(&f, &[]).0, 0);
    let snap_xml = f.state.join("snapshots/vm/s1.xml");
    let dom_xml = f.state.join("domains/vm.xml");
    std::fs::write(&snap_xml, "<domainsnapshot><name>s1</name>").unwrap();
    let orig = std::fs::read_to_string(&dom_xml).unwrap();
    std::fs::write(&dom_xml, orig.replace("131072", "999")).unwrap();
    std::fs::write(f.state.join("snapshots/vm/.tmp-1-s9.xml"), "x").unwrap();
    std::fs::write(f.state.join("snapshots/vm/extra.xml"), "<x/>").unwrap();
    let (code, v) = fsck_json(&f, &[]);
    assert_eq!(code, 1);
    let k = kinds(&v);
    for want in ["xml-half-written", "xml-differs", "xml-stray-temp", "xml-extra"] {
        assert!(k.contains(&want.to_string()), "{want} missing in {k:?}");
    }
    let (code, _) = fsck_json(&f, &["--repair"]);
    assert_eq!(code, 0, "every XML finding is repaired");
    assert_eq!(std::fs::read_to_string(&dom_xml).unwrap(), orig);
    assert_eq!(fsck_json(&f, &[]).0, 0);
}

#[test]
fn fsck_reports_missing_images_and_never_deletes_them() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    // An overlay deleted by hand: the active image of the present state and
    // the image of snapshot s2.
    std::fs::remove_file(f.img.join("vda.s2")).unwrap();
    std::fs::remove_file(f.img.join("vda.s1")).unwrap();
    let (code, v) = fsck_json(&f, &["--repair"]);
    assert_eq!(code, 1, "{v}");
    let k = kinds(&v);
    assert!(k.iter().filter(|x| *x == "missing-image").count() >= 2, "{k:?}");
    let err = f.fails(&["snapshot", "create", "vm", "s3"]).unwrap();
    assert!(err.contains("not usable") || err.contains("cannot read"), "{err}");
}

#[test]
fn fsck_names_a_snapshot_without_its_historic_document() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    {
        let exec = recovery::open_without_recovery(&f.state).unwrap();
        exec.journal().raw_delete_snapshot_document("vm", "s1").unwrap();
    }
    let (code, v) = fsck_json(&f, &[]);
    let found: Vec<_> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "historic-document-missing")
        .collect();
    assert_eq!(found.len(), 1, "{v}");
    assert_eq!(found[0]["subject"], "vm/s1", "{v}");
    assert_eq!(found[0]["invariant"], "I9", "{v}");
    // The XML of the domain cannot be rendered without it: said, not hidden.
    assert_eq!(code, 2, "{v}");
    let err = f.fails(&["snapshot", "revert", "vm", "s1"]).unwrap();
    assert!(
        err.contains("no historic <domain>") && err.contains("nothing was changed"),
        "{err}"
    );
}

#[test]
fn fsck_orphans_are_removed_only_without_data() {
    let f = Fixture::new(1).unwrap();
    let empty = f.img.join("orphan-empty").to_string_lossy().into_owned();
    let full = f.img.join("orphan-data").to_string_lossy().into_owned();
    for p in [&empty, &full] {
        tool("qemu-img", &["create", "-q", "-f", "qcow2", p, "4M"]).unwrap();
    }
    write_pattern(&full, A, 0).unwrap();
    {
        // Record both as created by the journal but referenced by nothing.
        let exec = recovery::open_without_recovery(&f.state).unwrap();
        let dom = exec.journal().domain("vm").unwrap();
        exec.run(
            journal::Intent::Other {
                domain: "vm".into(),
                what: "test".into(),
            },
            journal::Plan {
                steps: vec![],
                commit_index: 0,
                changes: [&empty, &full]
                    .iter()
                    .map(|p| journal::StateChange::ImageCreated {
                        image: journal::ImageRecord {
                            path: p.to_string(),
                            domain: "vm".into(),
                        },
                    })
                    .collect(),
            },
            dom.as_ref(),
        )
        .unwrap();
    }
    let (code, v) = fsck_json(&f, &[]);
    assert_eq!(code, 1);
    assert_eq!(kinds(&v).iter().filter(|k| *k == "orphan-image").count(), 2);
    let (code, v) = fsck_json(&f, &["--repair"]);
    assert_eq!(code, 1, "the orphan with data stays a finding: {v}");
    assert!(!std::path::Path::new(&empty).exists(), "empty orphan removed");
    assert!(std::path::Path::new(&full).exists(), "orphan with data kept");
    let (_, v) = fsck_json(&f, &[]);
    assert_eq!(kinds(&v), vec!["orphan-image".to_string()]);
}

#[test]
fn fsck_names_a_corrupt_journal_record() {
    let c = chaos::faults::corrupt_record().unwrap();
    assert_eq!(c.outcome, "clear-error", "{c:?}");
    assert!(
        c.detail.contains("checksum mismatch") || c.detail.contains("does not decode"),
        "{c:?}"
    );
}

#[test]
fn retried_delete_with_images_already_merged_finishes() {
    // Crash right before the transaction closes: the merge and removals are
    // done; recovery must see that from the world and only finish.
    let r = reference(Op::DeleteLeaf, 1).unwrap();
    let at = r.trace.iter().rposition(|p| p == "finish.before").unwrap() as u64 + 1;
    let c = run_case(Op::DeleteLeaf, 1, &r, at, None, None).unwrap();
    assert_eq!(c.outcome, Outcome::RolledForward, "{c:?}");
}
