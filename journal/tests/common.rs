//! Shared helpers of the journal tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use journal::{ChainImage, DiskState, DomainCore, Intent, Journal, JournalOptions, Plan, Step};

pub fn open(dir: &std::path::Path) -> Journal {
    Journal::open(
        dir,
        JournalOptions {
            actor: "test".into(),
            sync: false,
            read_only: false,
        },
    )
    .expect("open journal")
}

pub fn core(name: &str, disks: &[&str]) -> DomainCore {
    DomainCore {
        name: name.into(),
        xml: format!("<domain><name>{name}</name></domain>"),
        disks: disks
            .iter()
            .map(|d| {
                (
                    d.to_string(),
                    DiskState {
                        target: d.to_string(),
                        chain: vec![ChainImage::qcow2(format!("/img/{name}-{d}.qcow2"))],
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        current_snapshot: None,
        runtime: None,
    }
}

pub fn intent(domain: &str) -> Intent {
    Intent::Other {
        domain: domain.into(),
        what: "test".into(),
    }
}

pub fn plan(domain: &str, steps: usize) -> Plan {
    Plan {
        steps: (0..steps)
            .map(|_| Step::SyncXml {
                domain: domain.into(),
            })
            .collect(),
        commit_index: (steps / 2) as u32,
        changes: vec![],
    }
}
