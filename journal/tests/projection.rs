//! Property test: the stored projection equals the fold of every event,
//! over random transaction sequences (commits, aborts, transactions left
//! open, interleaved domains), before and after reopening and compaction.

mod common;

use std::collections::BTreeMap;

use journal::{
    ChainImage, DiskSnapshotMode, ImageRecord, JournalError, Plan, SnapshotDisk, SnapshotRecord, StateChange,
    TxnId,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Begin { dom: usize, changes: Vec<u8> },
    Commit { dom: usize },
    Abort { dom: usize },
    Finish { dom: usize },
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, proptest::collection::vec(0u8..10, 0..5))
            .prop_map(|(dom, changes)| Op::Begin { dom, changes }),
        (0..3usize).prop_map(|dom| Op::Commit { dom }),
        (0..3usize).prop_map(|dom| Op::Abort { dom }),
        (0..3usize).prop_map(|dom| Op::Finish { dom }),
        Just(Op::Compact),
    ]
}

fn change(dom: &str, k: u8, n: usize) -> StateChange {
    let d = dom.to_string();
    match k {
        0 => StateChange::DomainDefined {
            core: common::core(dom, &["vda", "vdb"]),
        },
        1 => StateChange::DomainUndefined { domain: d },
        2 => StateChange::DiskChainChanged {
            domain: d,
            disk: "vda".into(),
            chain: vec![
                ChainImage::qcow2(format!("/img/{dom}.{n}")),
                ChainImage::qcow2("/img/base"),
            ],
        },
        3 => StateChange::SnapshotRecorded {
            domain: d,
            snapshot: SnapshotRecord {
                name: format!("s{}", n % 4),
                description: None,
                creation_time: n as i64,
                state: "shutoff".into(),
                parent: None,
                disks: vec![SnapshotDisk {
                    disk: "vda".into(),
                    mode: DiskSnapshotMode::External,
                    overlay: Some(format!("/img/{dom}.{n}")),
                    frozen: Some(ChainImage::qcow2("/img/base")),
                }],
            },
            domain_xml: format!("<domain n='{n}'/>"),
        },
        4 => StateChange::SnapshotRemoved {
            domain: d,
            snapshot: format!("s{}", n % 4),
        },
        5 => StateChange::CurrentSnapshotSet {
            domain: d,
            snapshot: Some(format!("s{}", n % 4)),
        },
        6 => StateChange::ImageCreated {
            image: ImageRecord {
                path: format!("/img/{dom}.{}", n % 5),
                domain: d,
            },
        },
        7 => StateChange::ImageRemoved {
            path: format!("/img/{dom}.{}", n % 5),
        },
        8 => StateChange::SnapshotReparented {
            domain: d,
            snapshot: format!("s{}", n % 4),
            parent: Some("s0".into()),
        },
        _ => StateChange::DomainXmlSet {
            domain: d,
            xml: format!("<domain><name>{dom}</name><n>{n}</n></domain>"),
        },
    }
}

/// Every snapshot has exactly its historic document, the one recorded last
/// (a recording `n` writes overlay `/img/<dom>.<n>` and `<domain n='n'/>`);
/// nothing else has one.
fn check_documents(j: &journal::Journal, doms: &[&str]) -> Result<(), TestCaseError> {
    let state = j.state().unwrap();
    for dom in doms {
        let docs = j.snapshot_domain_xmls(dom).unwrap();
        let snaps = state
            .domains
            .get(*dom)
            .map(|d| d.snapshots.clone())
            .unwrap_or_default();
        prop_assert_eq!(docs.keys().collect::<Vec<_>>(), snaps.keys().collect::<Vec<_>>());
        for (name, s) in &snaps {
            let overlay = s.disks[0].overlay.clone().unwrap();
            let n = overlay.rsplit('.').next().unwrap();
            let expected = format!("<domain n='{n}'/>");
            prop_assert_eq!(&docs[name], &expected);
            prop_assert_eq!(j.snapshot_domain_xml(dom, name).unwrap(), Some(expected));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn projection_equals_fold(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let doms = ["alpha", "beta", "gamma"];
        let mut pending: BTreeMap<usize, (TxnId, Vec<StateChange>, bool)> = BTreeMap::new();
        let open_before = {
            let j = common::open(dir.path());
            for (n, op) in ops.iter().enumerate() {
                match op {
                    Op::Begin { dom, changes } => {
                        let cs: Vec<StateChange> = changes.iter().map(|k| change(doms[*dom], *k, n)).collect();
                        let plan = Plan { steps: vec![], commit_index: 0, changes: cs.clone() };
                        match j.begin(common::intent(doms[*dom]), plan, None) {
                            Ok(t) => { pending.insert(*dom, (t, cs, false)); }
                            Err(JournalError::DomainBusy { domain, txn }) => {
                                prop_assert_eq!(domain, doms[*dom]);
                                prop_assert_eq!(Some(txn), pending.get(dom).map(|p| p.0));
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Commit { dom } => if let Some(p) = pending.get_mut(dom) {
                        if !p.2 { j.commit(p.0, p.1.clone()).unwrap(); p.2 = true; }
                    },
                    Op::Abort { dom } => if let Some(p) = pending.get(dom) {
                        if !p.2 {
                            j.aborting(p.0, "test").unwrap();
                            j.aborted(p.0, "test").unwrap();
                            pending.remove(dom);
                        }
                    },
                    Op::Finish { dom } => if let Some(p) = pending.get(dom) {
                        if p.2 { j.finish(p.0).unwrap(); pending.remove(dom); }
                    },
                    Op::Compact => { j.compact(u64::MAX, 0).unwrap(); }
                }
                prop_assert_eq!(&j.state().unwrap(), &j.stored_projection().unwrap());
                prop_assert_eq!(j.open_transactions().unwrap(), j.stored_open_transactions().unwrap());
                check_documents(&j, &doms)?;
            }
            let state = j.state().unwrap();
            prop_assert_eq!(&state, &j.fold_events().unwrap());
            let open: Vec<TxnId> = j.open_transactions().unwrap().iter().map(|o| o.txn).collect();
            let expected: Vec<TxnId> = pending.values().map(|p| p.0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            prop_assert_eq!(open, expected);
            j.open_transactions().unwrap()
        };
        // Reopen: the loaded projection, the fold and the open index agree.
        let j = common::open(dir.path());
        prop_assert_eq!(&j.state().unwrap(), &j.fold_events().unwrap());
        prop_assert_eq!(j.open_transactions().unwrap(), open_before);
        check_documents(&j, &doms)?;
        prop_assert!(j.verify_records().unwrap().is_empty());
    }
}
