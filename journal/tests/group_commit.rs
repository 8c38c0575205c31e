//! Group commit under concurrency: many streams (threads, and tasks of the
//! async API) on different domains share groups; everything they wrote is
//! there, in order, after a reopen.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use journal::{AsyncJournal, Journal, Outcome, StateChange, TxnId};

const STREAMS: usize = 24;
const TXNS: usize = 15;

fn change(domain: &str, i: usize) -> Vec<StateChange> {
    vec![
        StateChange::DomainDefined {
            core: common::core(domain, &["vda"]),
        },
        StateChange::CurrentSnapshotSet {
            domain: domain.into(),
            snapshot: Some(format!("s{i}")),
        },
    ]
}

/// Every stream's transactions are closed and in its history in order; the
/// projection, the fold of the log and the reopened journal agree; ids were
/// never reused (the next-id record is written in order).
fn check(dir: &std::path::Path, ids: Vec<TxnId>) {
    let unique: BTreeSet<TxnId> = ids.iter().copied().collect();
    assert_eq!(unique.len(), STREAMS * TXNS, "transaction ids are unique");
    let j = common::open(dir);
    assert!(j.open_transactions().unwrap().is_empty());
    let state = j.state().unwrap();
    assert_eq!(state, j.fold_events().unwrap());
    assert_eq!(state, j.stored_projection().unwrap());
    for s in 0..STREAMS {
        let d = format!("d{s}");
        assert_eq!(
            state.domains[&d].core.current_snapshot.as_deref(),
            Some(format!("s{}", TXNS - 1).as_str())
        );
        let h = j.history(&d).unwrap();
        assert_eq!(h.len(), TXNS);
        assert!(h.iter().all(|e| e.outcome == Outcome::Finished));
        assert!(h.windows(2).all(|w| w[0].txn < w[1].txn));
    }
    assert!(j.verify_records().unwrap().is_empty());
    let next = j
        .begin(common::intent("late"), common::plan("late", 1), None)
        .unwrap();
    assert!(
        next > *unique.iter().next_back().unwrap(),
        "{next} after every id used"
    );
}

#[test]
fn threads_share_groups_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let j = Arc::new(common::open(dir.path()));
        let handles: Vec<_> = (0..STREAMS)
            .map(|s| {
                let j = j.clone();
                std::thread::spawn(move || {
                    let d = format!("d{s}");
                    (0..TXNS)
                        .map(|i| {
                            let t = j.begin(common::intent(&d), common::plan(&d, 2), None).unwrap();
                            j.step_done(t, 0).unwrap();
                            j.commit(t, change(&d, i)).unwrap();
                            j.step_done(t, 1).unwrap();
                            j.finish(t).unwrap();
                            t
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    };
    check(dir.path(), ids);
}

#[test]
fn async_tasks_share_groups_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let journal: Arc<Journal> = Arc::new(common::open(dir.path()));
    let ids: Vec<TxnId> = rt.block_on(async {
        let j = AsyncJournal::new(journal.clone());
        let tasks: Vec<_> = (0..STREAMS)
            .map(|s| {
                let j = j.clone();
                tokio::spawn(async move {
                    let d = format!("d{s}");
                    let mut ids = Vec::new();
                    for i in 0..TXNS {
                        let t = j
                            .begin(common::intent(&d), common::plan(&d, 2), None)
                            .await
                            .unwrap();
                        j.step_done(t, 0).await.unwrap();
                        j.commit(t, change(&d, i)).await.unwrap();
                        j.step_done(t, 1).await.unwrap();
                        j.finish(t).await.unwrap();
                        ids.push(t);
                    }
                    ids
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    drop(rt);
    drop(journal);
    check(dir.path(), ids);
}

#[test]
fn busy_domain_and_protocol_errors_through_the_async_api() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let j = AsyncJournal::new(Arc::new(common::open(dir.path())));
    rt.block_on(async {
        let t = j
            .begin(common::intent("a"), common::plan("a", 1), None)
            .await
            .unwrap();
        let busy = j
            .begin(common::intent("a"), common::plan("a", 1), None)
            .await
            .unwrap_err();
        assert!(busy.to_string().contains("busy"), "{busy}");
        assert!(
            j.step_done(t, 7).await.is_err(),
            "a step outside the plan is refused"
        );
        assert!(j.finish(TxnId(999)).await.is_err(), "not open");
        j.commit(t, vec![]).await.unwrap();
        j.finish(t).await.unwrap();
        assert!(j.open_transactions().await.unwrap().is_empty());
    });
}
