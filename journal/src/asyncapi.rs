//! The async API for agents: every call runs the blocking RocksDB work on
//! tokio's blocking pool, never on the runtime threads.

use std::sync::Arc;

use crate::error::{JournalError, Result};
use crate::event::{Intent, StateChange, TxnId};
use crate::plan::Plan;
use crate::state::{DomainCore, DomainState};
use crate::store::{HistoryEntry, Journal, OpenTxn};

/// A cheaply clonable async handle on a [`Journal`].
#[derive(Clone)]
pub struct AsyncJournal {
    inner: Arc<Journal>,
}

impl AsyncJournal {
    /// Wraps an open journal.
    pub fn new(journal: Arc<Journal>) -> Self {
        AsyncJournal { inner: journal }
    }

    /// The blocking journal underneath.
    pub fn blocking(&self) -> &Arc<Journal> {
        &self.inner
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let j = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&j))
            .await
            .map_err(|e| JournalError::Task(e.to_string()))?
    }

    /// See [`Journal::begin`].
    pub async fn begin(&self, intent: Intent, plan: Plan, prior: Option<DomainCore>) -> Result<TxnId> {
        self.run(move |j| j.begin(intent, plan, prior)).await
    }

    /// See [`Journal::step_done`].
    pub async fn step_done(&self, txn: TxnId, step: u32) -> Result<()> {
        self.run(move |j| j.step_done(txn, step)).await
    }

    /// See [`Journal::commit`].
    pub async fn commit(&self, txn: TxnId, changes: Vec<StateChange>) -> Result<()> {
        self.run(move |j| j.commit(txn, changes)).await
    }

    /// See [`Journal::aborting`].
    pub async fn aborting(&self, txn: TxnId, reason: String) -> Result<()> {
        self.run(move |j| j.aborting(txn, reason)).await
    }

    /// See [`Journal::step_undone`].
    pub async fn step_undone(&self, txn: TxnId, step: u32) -> Result<()> {
        self.run(move |j| j.step_undone(txn, step)).await
    }

    /// See [`Journal::aborted`].
    pub async fn aborted(&self, txn: TxnId, reason: String) -> Result<()> {
        self.run(move |j| j.aborted(txn, reason)).await
    }

    /// See [`Journal::finish`].
    pub async fn finish(&self, txn: TxnId) -> Result<()> {
        self.run(move |j| j.finish(txn)).await
    }

    /// See [`Journal::open_transactions`].
    pub async fn open_transactions(&self) -> Result<Vec<OpenTxn>> {
        self.run(|j| j.open_transactions()).await
    }

    /// See [`Journal::domain`].
    pub async fn domain(&self, name: String) -> Result<Option<DomainState>> {
        self.run(move |j| j.domain(&name)).await
    }

    /// See [`Journal::history`].
    pub async fn history(&self, domain: String) -> Result<Vec<HistoryEntry>> {
        self.run(move |j| j.history(&domain)).await
    }
}
