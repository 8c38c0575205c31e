//! Recovery: finish every open transaction, forward or back.

use executor::Executor;
use journal::{OpenTxn, TxnId, TxnPhase};
use serde::Serialize;

use crate::decide::{decide, Decision, Direction, Probe};
use crate::error::{RecoveryError, Result};

/// The state of one step, as recovery sees it.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub index: u32,
    pub description: String,
    pub before_commit: bool,
    pub recorded_done: bool,
    pub recorded_undone: bool,
    /// What the world shows (probed for steps whose record may be missing).
    pub world_done: Option<bool>,
}

/// The plan for one open transaction.
#[derive(Debug, Clone, Serialize)]
pub struct TxnPlan {
    pub txn: TxnId,
    pub domain: String,
    pub what: String,
    pub phase: String,
    pub steps: Vec<StepView>,
    pub decision: Decision,
    /// What will be done, in order.
    pub actions: Vec<String>,
}

/// The outcome for one transaction.
#[derive(Debug, Clone, Serialize)]
pub struct TxnOutcome {
    pub plan: TxnPlan,
    /// `None` when finished, else the error that left it open.
    pub error: Option<String>,
}

/// What a recovery run did (or, dry, would do).
#[derive(Debug, Clone, Serialize, Default)]
pub struct RecoveryReport {
    pub dry_run: bool,
    pub transactions: Vec<TxnOutcome>,
    /// Domains recorded running whose QEMU was found gone (now recorded
    /// stopped, unless dry).
    pub gone: Vec<String>,
    /// Redefine sessions removed (never committed: they leave nothing).
    pub sessions_removed: Vec<String>,
    /// Domains a live revert had stopped when the agent died, started
    /// again as they ran (one line each).
    pub resumed: Vec<String>,
}

impl RecoveryReport {
    /// Whether every open transaction was closed.
    pub fn all_closed(&self) -> bool {
        self.transactions.iter().all(|t| t.error.is_none())
    }

    /// Plain words for a person.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        for s in &self.sessions_removed {
            out.push_str(&format!(
                "redefine session {s}: never committed; {}\n",
                if self.dry_run {
                    "will remove it"
                } else {
                    "removed it (nothing was defined)"
                }
            ));
        }
        for r in &self.resumed {
            out.push_str(r);
            out.push('\n');
        }
        for g in &self.gone {
            out.push_str(&format!(
                "domain {g}: its QEMU is gone; {}\n",
                if self.dry_run {
                    "will record it stopped"
                } else {
                    "recorded it stopped"
                }
            ));
        }
        if self.transactions.is_empty() {
            out.push_str("no open transactions: nothing to recover\n");
            return out;
        }
        for t in &self.transactions {
            let p = &t.plan;
            out.push_str(&format!(
                "{} on domain {}: {} ({})\n",
                p.txn, p.domain, p.what, p.phase
            ));
            for s in &p.steps {
                let status = if s.recorded_undone {
                    "undone".to_string()
                } else if s.recorded_done {
                    "done".to_string()
                } else {
                    match s.world_done {
                        Some(true) => "done in the world, not yet recorded".into(),
                        Some(false) => "not done".into(),
                        None => "not done".into(),
                    }
                };
                out.push_str(&format!(
                    "  step {} [{}] {}: {status}\n",
                    s.index,
                    if s.before_commit {
                        "before commit"
                    } else {
                        "after commit"
                    },
                    s.description
                ));
            }
            let dir = match p.decision.direction {
                Direction::Forward => "roll FORWARD",
                Direction::Back => "roll BACK",
            };
            out.push_str(&format!("  decision: {dir}, because {}\n", p.decision.reason));
            for a in &p.actions {
                out.push_str(&format!("  {} {a}\n", if self.dry_run { "will" } else { "did:" }));
            }
            if let Some(e) = &t.error {
                out.push_str(&format!("  FAILED: {e}\n"));
            }
        }
        out
    }
}

fn phase_name(p: TxnPhase) -> &'static str {
    match p {
        TxnPhase::Running => "begun, commit point not reached",
        TxnPhase::Committed => "committed, finishing steps pending",
        TxnPhase::Aborting => "aborting",
    }
}

/// Probes the world and decides, without changing anything.
pub fn plan_for(exec: &Executor, open: &OpenTxn) -> Result<TxnPlan> {
    let world = exec.world();
    let mut probe = Probe::default();
    let mut steps = Vec::new();
    for (i, step) in open.plan.steps.iter().enumerate() {
        let i = i as u32;
        let before = open.plan.is_pre_commit(i);
        let recorded_done = open.done.contains(&i);
        let world_done = if !recorded_done || (before && open.phase != TxnPhase::Committed) {
            Some(world.probe(step).map_err(|e| RecoveryError::Probe {
                txn: open.txn,
                step: step.describe(),
                cause: e.to_string(),
            })?)
        } else {
            None
        };
        if before {
            probe.pre_commit_done.push(world_done.unwrap_or(recorded_done));
            if matches!(step, journal::Step::LiveSnapshot { .. }) && open.phase == TxnPhase::Running {
                probe.switch_seen = world.switch_seen(step).map_err(|e| RecoveryError::Probe {
                    txn: open.txn,
                    step: step.describe(),
                    cause: e.to_string(),
                })?;
            }
        }
        steps.push(StepView {
            index: i,
            description: step.describe(),
            before_commit: before,
            recorded_done,
            recorded_undone: open.undone.contains(&i),
            world_done,
        });
    }
    let decision = decide(open, &probe);
    let mut actions = Vec::new();
    match decision.direction {
        Direction::Forward => {
            if open.phase == TxnPhase::Running {
                for s in steps.iter().filter(|s| s.before_commit && !s.recorded_done) {
                    actions.push(format!("finish step {}: {}", s.index, s.description));
                }
                actions.push("record the commit point (apply the planned state changes)".into());
            }
            for s in steps.iter().filter(|s| !s.before_commit && !s.recorded_done) {
                actions.push(format!("run step {}: {}", s.index, s.description));
            }
            actions.push("close the transaction as finished".into());
        }
        Direction::Back => {
            for s in steps
                .iter()
                .rev()
                .filter(|s| s.before_commit && !s.recorded_undone)
            {
                actions.push(format!("undo step {}: {}", s.index, s.description));
            }
            actions.push("close the transaction as aborted (the state stays as before the request)".into());
        }
    }
    Ok(TxnPlan {
        txn: open.txn,
        domain: open.domain.clone(),
        what: open.intent.describe(),
        phase: phase_name(open.phase).into(),
        steps,
        decision,
        actions,
    })
}

/// Recovers one open transaction (or, with `dry_run`, explains what it
/// would do); a server calls it for a transaction no running request
/// holds, without touching the others.
pub fn recover_txn(exec: &Executor, open: &OpenTxn, dry_run: bool) -> TxnOutcome {
    let plan = match plan_for(exec, open) {
        Ok(p) => p,
        Err(e) => {
            return TxnOutcome {
                plan: TxnPlan {
                    txn: open.txn,
                    domain: open.domain.clone(),
                    what: open.intent.describe(),
                    phase: phase_name(open.phase).into(),
                    steps: vec![],
                    decision: Decision {
                        direction: Direction::Back,
                        reason: "could not probe".into(),
                    },
                    actions: vec![],
                },
                error: Some(e.to_string()),
            };
        }
    };
    let error = if dry_run {
        None
    } else {
        let r = match plan.decision.direction {
            Direction::Forward => exec.roll_forward(open),
            Direction::Back => exec.roll_back(open, "rolled back by recovery after a crash"),
        };
        r.err().map(|e| {
            format!(
                "{} of {} failed: {e}; the transaction stays open and the next recovery retries it",
                match plan.decision.direction {
                    Direction::Forward => "rolling forward",
                    Direction::Back => "rolling back",
                },
                open.txn
            )
        })
    };
    TxnOutcome { plan, error }
}

/// Open transactions from this many on are recovered on several threads.
/// Each holds a different domain (the journal allows one per domain), so
/// their probes and actions are independent; below it they run in order,
/// which keeps a crash inside recovery reproducible point by point.
const PARALLEL_FROM: usize = 8;

/// Threads recovering many transactions: their probes and actions wait on
/// fsyncs, qemu-img and QMP more than on the CPU.
/// `SNAPJOURNAL_RECOVERY_THREADS` overrides it (1: one after another).
const RECOVERY_THREADS: usize = 8;

fn recovery_threads() -> usize {
    std::env::var("SNAPJOURNAL_RECOVERY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or(RECOVERY_THREADS)
}

/// [`recover_txn`] for each transaction; outcomes in the same order.
fn recover_each(exec: &Executor, open: &[OpenTxn], dry_run: bool) -> Vec<TxnOutcome> {
    let threads = recovery_threads();
    if open.len() < PARALLEL_FROM || threads == 1 {
        return open.iter().map(|o| recover_txn(exec, o, dry_run)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(open.len()));
    std::thread::scope(|s| {
        for _ in 0..threads.min(open.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(o) = open.get(i) else { break };
                let outcome = recover_txn(exec, o, dry_run);
                done.lock().unwrap_or_else(|e| e.into_inner()).push((i, outcome));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, o)| o).collect()
}

/// Recovers every open transaction (or, with `dry_run`, explains what it
/// would do). A transaction that cannot be finished stays open and its
/// error is in the report; the others are still recovered.
pub fn recover(exec: &Executor, dry_run: bool) -> Result<RecoveryReport> {
    let mut report = RecoveryReport {
        dry_run,
        transactions: Vec::new(),
        gone: Vec::new(),
        sessions_removed: Vec::new(),
        resumed: Vec::new(),
    };
    let open = exec.journal().open_transactions()?;
    report.transactions = recover_each(exec, &open, dry_run);
    // Domains whose QEMU died: the state catches up (after the open
    // transactions, which may still have needed to look at QEMU).
    if report.all_closed() {
        report.gone = if dry_run {
            gone_domains(exec)?
        } else {
            exec.reap_gone_domains()
                .map_err(|e| RecoveryError::Reap(e.to_string()))?
        };
        // After the gone domains: a domain whose QEMU died is recorded
        // stopped first, and one stopped for a revert starts again.
        report.resumed = exec
            .resume_interrupted_reverts(dry_run)
            .map_err(|e| RecoveryError::Reap(e.to_string()))?;
        // Temp files a crashed writer left beside the domain files (a
        // transaction's own sync looks only in its domain's directories).
        if !dry_run {
            exec.metadata()
                .remove_shared_strays()
                .map_err(|e| RecoveryError::Reap(e.to_string()))?;
        }
    }
    Ok(report)
}

/// Domains recorded running whose QEMU is gone (its process, when known, is
/// not alive; else nothing answers on its socket).
pub(crate) fn gone_domains(exec: &Executor) -> Result<Vec<String>> {
    let running: Vec<(String, journal::Runtime)> = exec.journal().with_state(|s| {
        s.domains
            .iter()
            .filter_map(|(name, d)| Some((name.clone(), d.core.runtime.clone()?)))
            .collect()
    })?;
    Ok(running
        .into_iter()
        .filter(|(_, rt)| matches!(exec.live().gone(rt), Ok(true)))
        .map(|(name, _)| name)
        .collect())
}

/// The explicit recovery after an agent died: every open transaction, every
/// domain whose QEMU is gone, and every redefine session (its agent will
/// not commit it).
pub fn recover_all(exec: &Executor, dry_run: bool) -> Result<RecoveryReport> {
    let mut report = recover(exec, dry_run)?;
    report.sessions_removed = if dry_run {
        exec.redefine_sessions()?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect()
    } else {
        exec.reap_sessions(true)?
    };
    Ok(report)
}
