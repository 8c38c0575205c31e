//! Runs a plan as a journaled transaction, and resumes or rolls back an
//! open one (the recovery engine drives the latter).

use std::sync::Arc;

use journal::crashpoint::crash_point;
use journal::{DomainState, Intent, Journal, OpenTxn, Plan, TxnId, TxnPhase};

use crate::error::{ExecError, Result};
use crate::images::QemuImg;
use crate::live::{Live, ProgressFn};
use crate::metadata::MetadataStore;
use crate::steps::{StepCtx, Strays, World};

/// Runs transactions against one state directory.
pub struct Executor {
    journal: Arc<Journal>,
    images: QemuImg,
    metadata: MetadataStore,
    live: Live,
    libvirt: crate::libvirt::Libvirt,
    on_begin: Option<BeginFn>,
}

/// Told of every transaction this executor begins (its id and what it
/// does), right after its intent record is durable.
pub type BeginFn = Box<dyn Fn(TxnId, &str) + Send + Sync>;

impl Executor {
    /// An executor over an open journal.
    pub fn new(journal: Arc<Journal>) -> Self {
        let metadata = MetadataStore::new(journal.dir());
        Executor {
            journal,
            images: QemuImg::default(),
            metadata,
            live: Live::default(),
            libvirt: crate::libvirt::Libvirt::default(),
            on_begin: None,
        }
    }

    /// Sets the callback told of every transaction begun (a server tells
    /// its client the transaction id before the operation finishes).
    pub fn set_on_begin(&mut self, f: BeginFn) {
        self.on_begin = Some(f);
    }

    /// Sets the callback block jobs of live deletes report progress to.
    pub fn set_progress(&mut self, f: ProgressFn) {
        self.live.set_progress(f);
    }

    /// The live backend (QMP connections of running domains).
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The connections to libvirt (domains libvirt runs).
    pub fn libvirt(&self) -> &crate::libvirt::Libvirt {
        &self.libvirt
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The image backend.
    pub fn images(&self) -> &QemuImg {
        &self.images
    }

    /// The XML files.
    pub fn metadata(&self) -> &MetadataStore {
        &self.metadata
    }

    /// The world the steps act on.
    pub fn world(&self) -> World<'_> {
        World {
            journal: &self.journal,
            images: &self.images,
            metadata: &self.metadata,
            live: &self.live,
            libvirt: &self.libvirt,
        }
    }

    fn record_done(&self, txn: TxnId, index: u32, step: &journal::Step) -> Result<()> {
        if step.completion_must_sync() {
            self.journal.step_done_synced(txn, index)?;
        } else {
            self.journal.step_done(txn, index)?;
        }
        Ok(())
    }

    /// Writes the intent, runs the steps before the commit point (undoing
    /// them on failure), commits, and runs the rest. `planned_on` is the
    /// domain state the plan was made from: if another transaction changed
    /// the domain in between, the transaction is closed at once and nothing
    /// is changed.
    pub fn run(&self, intent: Intent, plan: Plan, planned_on: Option<&DomainState>) -> Result<TxnId> {
        let what = intent.describe();
        let domain = intent.domain().to_string();
        let prior = planned_on.map(|d| d.core.clone());
        let txn = self.journal.begin(intent, plan.clone(), prior)?;
        if let Some(f) = &self.on_begin {
            f(txn, &what);
        }
        crash_point("txn.begun");
        let now = self.journal.domain(&domain)?;
        if now.as_ref() != planned_on {
            let reason = format!("domain {domain} changed while the request was being planned; retry");
            self.journal.aborting(txn, reason.clone())?;
            self.journal.aborted(txn, reason.clone())?;
            return Err(ExecError::refused(reason));
        }
        let world = self.world();
        for (i, step) in plan.steps.iter().enumerate().take(plan.commit_index as usize) {
            crash_point("step.apply.before");
            let ctx = StepCtx { txn, index: i as u32 };
            if let Err(e) = world.apply(ctx, step) {
                let cause = format!("{}: {e}", step.describe());
                // The data-safety rule: if QEMU switched onto the overlays
                // (the reply was lost, say), the guest may be writing to
                // them; the transaction goes forward, never back.
                if self.switched_in_plan(&plan) {
                    let open = self
                        .journal
                        .open_transaction(txn)?
                        .ok_or(journal::JournalError::NotOpen(txn))?;
                    return match self.forward(&open, Strays::NoneLeft) {
                        Ok(()) => Ok(txn),
                        Err(e2) => Err(ExecError::ForwardIncomplete {
                            txn,
                            what,
                            cause: format!("{cause}; QEMU switched anyway, so it goes forward: {e2}"),
                        }),
                    };
                }
                return Err(self.abort_after_failure(txn, &what, cause));
            }
            crash_point("step.apply.after");
            self.record_done(txn, i as u32, step)?;
        }
        crash_point("commit.before");
        self.journal.commit(txn, plan.changes.clone())?;
        crash_point("commit.after");
        let open = self
            .journal
            .open_transaction(txn)?
            .ok_or(journal::JournalError::NotOpen(txn))?;
        self.forward(&open, Strays::NoneLeft)
            .map_err(|e| ExecError::ForwardIncomplete {
                txn,
                what,
                cause: e.to_string(),
            })?;
        Ok(txn)
    }

    /// Whether the plan has a live switch that QEMU shows done.
    fn switched_in_plan(&self, plan: &Plan) -> bool {
        let world = self.world();
        plan.steps
            .iter()
            .any(|s| matches!(world.switch_seen(s), Ok(Some(true))))
    }

    fn abort_after_failure(&self, txn: TxnId, what: &str, cause: String) -> ExecError {
        let undo = self
            .journal
            .open_transaction(txn)
            .map_err(ExecError::from)
            .and_then(|o| o.ok_or(ExecError::Journal(journal::JournalError::NotOpen(txn))))
            .and_then(|o| self.roll_back(&o, &cause));
        match undo {
            Ok(()) => ExecError::RolledBack {
                txn,
                what: what.to_string(),
                cause,
            },
            Err(e) => ExecError::UndoFailed {
                txn,
                what: what.to_string(),
                cause,
                undo: e.to_string(),
            },
        }
    }

    /// Runs the steps after the commit point that are not recorded done
    /// (each is idempotent), then closes the transaction. Commits first if
    /// the transaction has not passed its commit point.
    pub fn roll_forward(&self, open: &OpenTxn) -> Result<()> {
        self.forward(open, Strays::MayBeLeft)
    }

    /// [`Executor::roll_forward`]; `strays` says whether a crashed writer
    /// may have left temp files beside the domain's metadata files (a
    /// transaction this process runs from its beginning has none to sweep:
    /// recovery swept those of every earlier crash).
    fn forward(&self, open: &OpenTxn, strays: Strays) -> Result<()> {
        let txn = open.txn;
        if open.phase == TxnPhase::Aborting {
            return Err(ExecError::refused(format!(
                "transaction {txn} is aborting and cannot go forward"
            )));
        }
        let world = self.world();
        if open.phase == TxnPhase::Running {
            for (i, step) in open
                .plan
                .steps
                .iter()
                .enumerate()
                .take(open.plan.commit_index as usize)
            {
                if !open.done.contains(&(i as u32)) {
                    world.apply(StepCtx { txn, index: i as u32 }, step)?;
                    self.record_done(txn, i as u32, step)?;
                }
            }
            crash_point("commit.before");
            self.journal.commit(txn, open.plan.changes.clone())?;
            crash_point("commit.after");
        }
        for (i, step) in open
            .plan
            .steps
            .iter()
            .enumerate()
            .skip(open.plan.commit_index as usize)
        {
            if open.done.contains(&(i as u32)) {
                continue;
            }
            crash_point("step.apply.before");
            match step {
                // The files of what this transaction changed, not every
                // snapshot of the domain.
                journal::Step::SyncXml { domain } => world.sync_xml(domain, &open.plan.changes, strays)?,
                // Not recorded done: it may have been cut short after its
                // header reached the disk and before its copy did.
                journal::Step::RebaseImage { safe: true, .. } => world.apply_interrupted_rebase(
                    StepCtx { txn, index: i as u32 },
                    step,
                    &open.plan,
                    open.prior.as_ref(),
                )?,
                _ => world.apply(StepCtx { txn, index: i as u32 }, step)?,
            }
            crash_point("step.apply.after");
            self.record_done(txn, i as u32, step)?;
        }
        crash_point("finish.before");
        self.journal.finish(txn)?;
        Ok(())
    }

    /// Undoes every step before the commit point, last first (undo is
    /// idempotent, so steps the journal does not know finished are undone
    /// too), then closes the transaction as aborted.
    pub fn roll_back(&self, open: &OpenTxn, reason: &str) -> Result<()> {
        let txn = open.txn;
        if open.phase == TxnPhase::Committed {
            return Err(ExecError::refused(format!(
                "transaction {txn} passed its commit point and cannot be rolled back"
            )));
        }
        if open.phase == TxnPhase::Running {
            self.journal.aborting(txn, reason)?;
            crash_point("abort.begun");
        }
        let world = self.world();
        for i in (0..open.plan.commit_index).rev() {
            if open.undone.contains(&i) {
                continue;
            }
            let step = &open.plan.steps[i as usize];
            crash_point("step.undo.before");
            world.undo(step)?;
            crash_point("step.undo.after");
            self.journal.step_undone(txn, i)?;
        }
        let reason = open.abort_reason.clone().unwrap_or_else(|| reason.to_string());
        self.journal.aborted(txn, reason)?;
        Ok(())
    }
}
