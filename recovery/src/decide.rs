//! The recovery decision: a pure function of what the journal says about a
//! transaction and what the world shows. No I/O here, so it is tested
//! exhaustively.

use journal::{OpenTxn, TxnPhase};
use serde::Serialize;

/// What probing the world found for an open transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Probe {
    /// For each step before the commit point: does the world show it done?
    pub pre_commit_done: Vec<bool>,
    /// Where the journal cannot know whether the commit point passed (a
    /// live switch in QEMU), whether the world shows it passed. `None`:
    /// the commit point is the journal record alone.
    pub switch_seen: Option<bool>,
}

/// Which way an open transaction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    Forward,
    Back,
}

/// A decision and why it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub direction: Direction,
    pub reason: String,
}

/// Decides forward or back.
///
/// - Past the commit point (journal): forward; a merge may already have
///   written into an image, nothing can be undone.
/// - Aborting: back; the decision was made before the crash.
/// - The world shows the switch (a running guest may have written to the
///   new layer): forward, never back (the data-safety rule).
/// - Every step before the commit point is done in the world: forward
///   (the request is finished rather than thrown away).
/// - Otherwise: back; nothing the guest can see has changed.
pub fn decide(open: &OpenTxn, probe: &Probe) -> Decision {
    let d = |direction, reason: &str| Decision {
        direction,
        reason: reason.to_string(),
    };
    match open.phase {
        TxnPhase::Committed => d(
            Direction::Forward,
            "the commit point passed (Committed is in the journal); the remaining steps only roll forward",
        ),
        TxnPhase::Aborting => d(
            Direction::Back,
            "the transaction was already aborting; its undo is finished",
        ),
        TxnPhase::Running => {
            if probe.switch_seen == Some(true) {
                return d(
                    Direction::Forward,
                    "the world shows the switch happened, so the new images may hold guest writes; rolling back could lose them",
                );
            }
            let pre = open.plan.commit_index as usize;
            let all_done =
                pre > 0 && probe.pre_commit_done.len() == pre && probe.pre_commit_done.iter().all(|x| *x);
            if all_done {
                d(
                    Direction::Forward,
                    "every step before the commit point is done in the world; committing finishes the request",
                )
            } else if pre == 0 {
                d(
                    Direction::Forward,
                    "the plan has no step before its commit point; committing finishes the request",
                )
            } else {
                d(
                    Direction::Back,
                    "the commit point was not reached and some steps before it are not done; undoing them restores the state before the request",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal::{ChainImage, Intent, Plan, Step, TxnId};
    use std::collections::BTreeSet;

    fn open(phase: TxnPhase, pre: usize) -> OpenTxn {
        let mut steps: Vec<Step> = (0..pre)
            .map(|i| Step::CreateOverlay {
                disk: format!("vd{i}"),
                path: format!("/x/{i}"),
                backing: ChainImage::qcow2("/x/base"),
            })
            .collect();
        steps.push(Step::SyncXml { domain: "d".into() });
        OpenTxn {
            txn: TxnId(1),
            domain: "d".into(),
            intent: Intent::Other {
                domain: "d".into(),
                what: "t".into(),
            },
            plan: Plan {
                steps,
                commit_index: pre as u32,
                changes: vec![],
            },
            prior: None,
            actor: "t".into(),
            began_ms: 0,
            phase,
            done: BTreeSet::new(),
            undone: BTreeSet::new(),
            abort_reason: None,
        }
    }

    /// Every combination of phase, number of pre-commit steps (0..4), probe
    /// results and switch observation.
    #[test]
    fn exhaustive() {
        for phase in [TxnPhase::Running, TxnPhase::Committed, TxnPhase::Aborting] {
            for pre in 0..4usize {
                for mask in 0..(1u32 << pre) {
                    for switch in [None, Some(false), Some(true)] {
                        let o = open(phase, pre);
                        let probe = Probe {
                            pre_commit_done: (0..pre).map(|i| mask & (1 << i) != 0).collect(),
                            switch_seen: switch,
                        };
                        let got = decide(&o, &probe).direction;
                        let all = mask == (1u32 << pre) - 1;
                        let expected = match phase {
                            TxnPhase::Committed => Direction::Forward,
                            TxnPhase::Aborting => Direction::Back,
                            TxnPhase::Running if switch == Some(true) => Direction::Forward,
                            TxnPhase::Running if all => Direction::Forward,
                            TxnPhase::Running => Direction::Back,
                        };
                        assert_eq!(
                            got, expected,
                            "{phase:?} pre={pre} mask={mask:b} switch={switch:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn data_safety_rule_wins_over_missing_steps() {
        let o = open(TxnPhase::Running, 2);
        let probe = Probe {
            pre_commit_done: vec![true, false],
            switch_seen: Some(true),
        };
        assert_eq!(decide(&o, &probe).direction, Direction::Forward);
    }
}
