//! Corruption, locking and protocol tests of the journal store.

mod common;

use journal::{CorruptKind, JournalError, RecordName, StateChange, TxnId};

fn one_txn(j: &journal::Journal, dom: &str) -> TxnId {
    let t = j.begin(common::intent(dom), common::plan(dom, 2), None).unwrap();
    j.step_done(t, 0).unwrap();
    j.commit(
        t,
        vec![StateChange::DomainDefined {
            core: common::core(dom, &["vda"]),
        }],
    )
    .unwrap();
    j.step_done(t, 1).unwrap();
    j.finish(t).unwrap();
    t
}

#[test]
fn flipped_bytes_truncation_and_versions_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let j = common::open(dir.path());
    one_txn(&j, "vm1");
    let good = j.raw_get_event(2).unwrap().expect("event 2 exists");
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        j.raw_put_event(2, &bad).unwrap();
        let err = j.events().expect_err("corrupt event must not decode");
        match &err {
            JournalError::Corrupt {
                record: RecordName::Event { seq: 2 },
                ..
            } => {}
            other => panic!("byte {i}: unexpected {other}"),
        }
        assert!(err.to_string().contains("event #2"), "{err}");
        assert_eq!(j.verify_records().unwrap().len(), 1);
    }
    j.raw_put_event(2, &good[..good.len() - 3]).unwrap();
    assert!(matches!(j.fold_events(), Err(JournalError::Corrupt { .. })));
    j.raw_put_event(2, &good[..3]).unwrap();
    assert!(matches!(
        j.events(),
        Err(JournalError::Corrupt {
            kind: CorruptKind::Truncated { .. },
            ..
        })
    ));
    let mut v9 = good.clone();
    v9[0] = 9;
    j.raw_put_event(2, &v9).unwrap();
    let e = j.events().unwrap_err();
    assert!(matches!(
        e,
        JournalError::Corrupt {
            kind: CorruptKind::UnknownVersion { found: 9, .. },
            ..
        }
    ));
    assert!(e.to_string().contains("unknown record format version 9"), "{e}");
    j.raw_put_event(2, &good).unwrap();
    assert!(j.verify_records().unwrap().is_empty());
}

#[test]
fn corrupt_open_transaction_fails_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let t;
    {
        let j = common::open(dir.path());
        t = j
            .begin(common::intent("vm1"), common::plan("vm1", 2), None)
            .unwrap();
        j.raw_put_open(t, b"\x01\x02garbage").unwrap();
    }
    let err = journal::Journal::open(dir.path(), Default::default())
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains(&format!("open-transaction record of {t}")), "{msg}");
    assert!(msg.contains(&format!("(transaction {t})")), "{msg}");
}

#[test]
fn corrupt_projection_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let j = common::open(dir.path());
    one_txn(&j, "vm1");
    j.raw_put_projection("d\0vm1", b"\x01\x03\0\0\0\0zz").unwrap();
    let bad = j.verify_records().unwrap();
    assert_eq!(bad.len(), 1);
    assert!(bad[0].to_string().contains("projection record"), "{}", bad[0]);
}

#[test]
fn second_opener_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _j = common::open(dir.path());
    let err = journal::Journal::open(dir.path(), Default::default())
        .err()
        .expect("locked");
    match &err {
        JournalError::StateDirLocked { pid, .. } => assert_eq!(pid, &std::process::id().to_string()),
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("in use by another snapjournal process"));
}

#[test]
fn read_only_open_reads_everything_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ro = || journal::JournalOptions {
        read_only: true,
        ..Default::default()
    };
    // No journal yet: a read-only open does not create one.
    assert!(journal::Journal::open(dir.path(), ro()).is_err());
    let (state, open) = {
        let j = common::open(dir.path());
        one_txn(&j, "a");
        j.begin(common::intent("b"), common::plan("b", 1), None).unwrap();
        (j.state().unwrap(), j.open_transactions().unwrap())
    };
    let j = journal::Journal::open(dir.path(), ro()).unwrap();
    assert!(j.is_read_only());
    assert_eq!(j.state().unwrap(), state);
    assert_eq!(j.open_transactions().unwrap(), open);
    // Refused before anything changes, in memory or on disk.
    let err = j
        .begin(common::intent("c"), common::plan("c", 1), None)
        .unwrap_err();
    assert!(matches!(err, JournalError::ReadOnly { .. }), "{err}");
    assert!(
        err.to_string().contains("read-only; nothing was changed"),
        "{err}"
    );
    assert!(j.finish(open[0].txn).is_err());
    assert!(j.compact(u64::MAX, u64::MAX).is_err());
    assert_eq!(j.open_transactions().unwrap(), open);
    assert!(j.busy_with("c").unwrap().is_none());
    // It still owns the directory.
    assert!(matches!(
        journal::Journal::open(dir.path(), Default::default()),
        Err(JournalError::StateDirLocked { .. })
    ));
    drop(j);
    let j = common::open(dir.path());
    assert_eq!(j.state().unwrap(), state);
    j.commit(open[0].txn, vec![]).unwrap();
    j.finish(open[0].txn).unwrap();
    assert!(j.open_transactions().unwrap().is_empty());
}

#[test]
fn one_transaction_per_domain_others_proceed() {
    let dir = tempfile::tempdir().unwrap();
    let j = common::open(dir.path());
    let a = j.begin(common::intent("a"), common::plan("a", 1), None).unwrap();
    let err = j
        .begin(common::intent("a"), common::plan("a", 1), None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("domain a is busy with transaction {a}; nothing was changed")
    );
    let b = j.begin(common::intent("b"), common::plan("b", 1), None).unwrap();
    assert_ne!(a, b);
    j.commit(a, vec![]).unwrap();
    j.finish(a).unwrap();
    j.begin(common::intent("a"), common::plan("a", 1), None).unwrap();
    assert_eq!(j.open_transactions().unwrap().len(), 2);
}

#[test]
fn protocol_violations_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let j = common::open(dir.path());
    let t = j.begin(common::intent("a"), common::plan("a", 2), None).unwrap();
    let n = j.events().unwrap().len();
    assert!(j.step_done(t, 7).is_err());
    assert!(j.step_done(TxnId(99), 0).is_err());
    j.commit(t, vec![]).unwrap();
    assert!(j.aborting(t, "x").is_err());
    assert!(j.commit(t, vec![]).is_err());
    assert_eq!(j.events().unwrap().len(), n + 1);
}

#[test]
fn history_survives_compaction_within_retention() {
    let dir = tempfile::tempdir().unwrap();
    let j = common::open(dir.path());
    let t1 = one_txn(&j, "vm1");
    let t2 = j
        .begin(common::intent("vm1"), common::plan("vm1", 1), None)
        .unwrap();
    j.aborting(t2, "disk full").unwrap();
    j.aborted(t2, "disk full").unwrap();
    let before = j.state().unwrap();
    let r = j.compact(u64::MAX, 0).unwrap();
    assert!(r.events_folded >= 7);
    assert!(j.events().unwrap().is_empty());
    assert_eq!(j.fold_events().unwrap(), before);
    let h = j.history("vm1").unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].txn, t1);
    assert_eq!(h[0].outcome, journal::Outcome::Finished);
    assert_eq!(
        h[1].outcome,
        journal::Outcome::Aborted {
            reason: "disk full".into()
        }
    );
    // Retention: history that ended before the cut-off goes.
    let r = j.compact(0, u64::MAX).unwrap();
    assert_eq!(r.history_dropped, 2);
    assert!(j.history("vm1").unwrap().is_empty());
    drop(j);
    let j = common::open(dir.path());
    assert_eq!(j.state().unwrap(), before);
    assert_eq!(j.fold_events().unwrap(), before);
}

#[tokio::test]
async fn async_api_runs_off_the_runtime_threads() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal::AsyncJournal::new(std::sync::Arc::new(common::open(dir.path())));
    let mut handles = Vec::new();
    for i in 0..16 {
        let j = j.clone();
        handles.push(tokio::spawn(async move {
            let d = format!("d{i}");
            let t = j
                .begin(common::intent(&d), common::plan(&d, 0), None)
                .await
                .unwrap();
            j.commit(
                t,
                vec![StateChange::DomainDefined {
                    core: common::core(&d, &["vda"]),
                }],
            )
            .await
            .unwrap();
            j.finish(t).await.unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(j.blocking().state().unwrap().domains.len(), 16);
    assert!(j.open_transactions().await.unwrap().is_empty());
}

#[test]
fn an_open_transaction_is_in_its_domains_history_once() {
    let dir = tempfile::tempdir().unwrap();
    let j = common::open(dir.path());
    let done = one_txn(&j, "vm1");
    let open = j
        .begin(common::intent("vm1"), common::plan("vm1", 2), None)
        .unwrap();
    one_txn(&j, "vm2");
    let outcomes = |j: &journal::Journal| -> Vec<(TxnId, journal::Outcome)> {
        j.history("vm1")
            .unwrap()
            .into_iter()
            .map(|h| (h.txn, h.outcome))
            .collect()
    };
    let expected_open = vec![(done, journal::Outcome::Finished), (open, journal::Outcome::Open)];
    assert_eq!(outcomes(&j), expected_open);
    let h = j.history("vm1").unwrap();
    assert_eq!(h[1].ended_ms, None);
    assert_eq!(h[1].actor, h[0].actor);
    // After a crash the open index still tells it.
    drop(j);
    let j = common::open(dir.path());
    assert_eq!(outcomes(&j), expected_open);
    j.step_done(open, 0).unwrap();
    j.commit(open, vec![]).unwrap();
    j.finish(open).unwrap();
    assert_eq!(
        outcomes(&j),
        vec![
            (done, journal::Outcome::Finished),
            (open, journal::Outcome::Finished)
        ]
    );
}

#[test]
fn corrupt_or_orphaned_progress_fails_open_naming_it() {
    // A progress record with flipped bytes.
    let dir = tempfile::tempdir().unwrap();
    let (t, progress);
    {
        let j = common::open(dir.path());
        t = j
            .begin(common::intent("vm1"), common::plan("vm1", 2), None)
            .unwrap();
        j.step_done(t, 0).unwrap();
        progress = j.raw_get_open_progress(t).unwrap().expect("written by the step");
        let mut flipped = progress.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        j.raw_put_open_progress(t, &flipped).unwrap();
        let bad = j.verify_records().unwrap();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].to_string().contains(&format!("{t}")), "{}", bad[0]);
    }
    let msg = journal::Journal::open(dir.path(), Default::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains(&format!("open-transaction record of {t}")), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");

    // A well-formed progress record whose transaction has no open record.
    let dir = tempfile::tempdir().unwrap();
    let orphan = TxnId(t.0 + 1000);
    {
        let j = common::open(dir.path());
        j.raw_put_open_progress(orphan, &progress).unwrap();
        let bad = j.verify_records().unwrap();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].to_string().contains("open record is missing"),
            "{}",
            bad[0]
        );
    }
    let msg = journal::Journal::open(dir.path(), Default::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains(&format!("open-transaction record of {orphan}")),
        "{msg}"
    );
    assert!(msg.contains("open record is missing"), "{msg}");
}
