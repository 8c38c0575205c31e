//! The async API for agents. Lifecycle events are prepared on the calling
//! task (in memory, under a short lock) and then awaited without holding a
//! thread: many transaction streams share group commits on a few runtime
//! threads, and the RocksDB write and fsync of each group run on tokio's
//! blocking pool. Reads run on the blocking pool too.

use std::sync::Arc;

use crate::error::{JournalError, Result};
use crate::event::{Event, Intent, StateChange, TxnId};
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
        let (txn, ticket) = self.inner.begin_queued(intent, plan, prior)?;
        self.inner.durable_async(ticket).await?;
        Ok(txn)
    }

    async fn append(&self, event: Event) -> Result<()> {
        let ticket = self.inner.append_queued(event)?;
        self.inner.durable_async(ticket).await
    }

    /// See [`Journal::step_done`].
    pub async fn step_done(&self, txn: TxnId, step: u32) -> Result<()> {
        self.append(Event::StepDone { txn, step }).await
    }

    /// See [`Journal::commit`].
    pub async fn commit(&self, txn: TxnId, changes: Vec<StateChange>) -> Result<()> {
        self.append(Event::Committed { txn, changes }).await
    }

    /// See [`Journal::aborting`].
    pub async fn aborting(&self, txn: TxnId, reason: String) -> Result<()> {
        self.append(Event::Aborting { txn, reason }).await
    }

    /// See [`Journal::step_undone`].
    pub async fn step_undone(&self, txn: TxnId, step: u32) -> Result<()> {
        self.append(Event::StepUndone { txn, step }).await
    }

    /// See [`Journal::aborted`].
    pub async fn aborted(&self, txn: TxnId, reason: String) -> Result<()> {
        self.append(Event::Aborted { txn, reason }).await
    }

    /// See [`Journal::finish`].
    pub async fn finish(&self, txn: TxnId) -> Result<()> {
        self.append(Event::Finished { txn }).await
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
