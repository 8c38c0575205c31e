//! A transaction's lifecycle: begin, step records, commit, abort, finish;
//! every event checked against its transaction's phase
//! ([`TxnPhase::accepts`]) before anything is written.

#[allow(unused_imports)]
use super::*;

impl Journal {
    /// Begins a transaction: checks the domain is free, allocates an id and
    /// writes the synced intent record.
    pub fn begin(&self, intent: Intent, plan: Plan, prior: Option<DomainCore>) -> Result<TxnId> {
        let (txn, ticket) = self.begin_queued(intent, plan, prior)?;
        self.durable(ticket)?;
        Ok(txn)
    }

    /// Records that step `step` of `txn` completed (unsynced).
    pub fn step_done(&self, txn: TxnId, step: u32) -> Result<()> {
        self.append(Event::StepDone { txn, step })
    }

    /// Records that step `step` of `txn` completed, synced: for steps whose
    /// completion recovery cannot tell from the world afterwards.
    pub fn step_done_synced(&self, txn: TxnId, step: u32) -> Result<()> {
        let mut batch = RawBatch::default();
        let mut g = self.lock_inner()?;
        self.prepare(&mut g, Event::StepDone { txn, step }, &mut batch)?;
        let ticket = self.enqueue(batch, true)?;
        drop(g);
        self.durable(ticket)
    }

    /// Passes the commit point: applies `changes` to the projection and
    /// writes the synced `Committed` record, in one batch.
    pub fn commit(&self, txn: TxnId, changes: Vec<StateChange>) -> Result<()> {
        self.append(Event::Committed { txn, changes })
    }

    /// Starts undoing a transaction that failed before its commit point.
    pub fn aborting(&self, txn: TxnId, reason: impl Into<String>) -> Result<()> {
        self.append(Event::Aborting {
            txn,
            reason: reason.into(),
        })
    }

    /// Records that step `step` of `txn` was undone (unsynced).
    pub fn step_undone(&self, txn: TxnId, step: u32) -> Result<()> {
        self.append(Event::StepUndone { txn, step })
    }

    /// Closes an aborted transaction (synced).
    pub fn aborted(&self, txn: TxnId, reason: impl Into<String>) -> Result<()> {
        self.append(Event::Aborted {
            txn,
            reason: reason.into(),
        })
    }

    /// Closes a transaction whose steps all ran (synced).
    pub fn finish(&self, txn: TxnId) -> Result<()> {
        self.append(Event::Finished { txn })
    }

    /// Appends a lifecycle event of an open transaction (the sync policy
    /// follows [`Event::is_synced`]).
    pub fn append(&self, event: Event) -> Result<()> {
        let ticket = self.append_queued(event)?;
        self.durable(ticket)
    }

    /// Prepares and queues a lifecycle event; the caller then waits for the
    /// ticket (blocking or async).
    pub(crate) fn append_queued(&self, event: Event) -> Result<Ticket> {
        if matches!(event, Event::TxnBegun { .. }) {
            return Err(JournalError::Protocol {
                txn: event.txn(),
                what: "transactions are begun with Journal::begin".into(),
            });
        }
        let sync = event.is_synced();
        let mut batch = RawBatch::default();
        let mut g = self.lock_inner()?;
        self.prepare(&mut g, event, &mut batch)?;
        let ticket = self.enqueue(batch, sync)?;
        drop(g);
        Ok(ticket)
    }

    /// Checks `event` against the open-transaction index, applies it in
    /// memory and adds every record it implies to `batch`.
    pub(super) fn prepare(&self, g: &mut Inner, event: Event, batch: &mut RawBatch) -> Result<()> {
        self.writable()?;
        let txn = event.txn();
        let at_ms = now_ms();
        let protocol = |what: &str| JournalError::Protocol {
            txn,
            what: what.to_string(),
        };
        // Validate first, so a refused event changes nothing.
        match g.open.get(&txn) {
            None if matches!(event, Event::TxnBegun { .. }) => {}
            None => return Err(JournalError::NotOpen(txn)),
            Some(o) => o
                .phase
                .accepts(&event, o.plan.steps.len())
                .map_err(|w| protocol(&w))?,
        }
        let seq = g.next_seq;
        g.next_seq += 1;
        let record = EventRecord { seq, at_ms, event };
        batch.put_cf(self.ids.events, seq_key(seq), encode(RecordKind::Event, &record)?);
        let event = record.event;
        match event {
            Event::TxnBegun {
                txn,
                domain,
                intent,
                plan,
                prior,
                actor,
            } => {
                // No history entry yet: an open transaction's is derived
                // from the open index (see `history`) and written when it
                // closes.
                let open = OpenTxn {
                    txn,
                    domain: domain.clone(),
                    intent,
                    plan,
                    prior,
                    actor,
                    began_ms: at_ms,
                    phase: TxnPhase::Running,
                    done: BTreeSet::new(),
                    undone: BTreeSet::new(),
                    abort_reason: None,
                };
                batch.put_cf(self.ids.open, txn_key(txn), encode(RecordKind::OpenTxn, &open)?);
                g.busy.insert(domain, txn);
                g.open.insert(txn, open);
            }
            Event::StepDone { step, .. } => self.update_open(g, txn, batch, |o| {
                o.done.insert(step);
            })?,
            Event::StepUndone { step, .. } => self.update_open(g, txn, batch, |o| {
                o.undone.insert(step);
            })?,
            Event::Aborting { reason, .. } => self.update_open(g, txn, batch, |o| {
                o.phase = TxnPhase::Aborting;
                o.abort_reason = Some(reason);
            })?,
            Event::Committed { changes, .. } => {
                self.update_open(g, txn, batch, |o| o.phase = TxnPhase::Committed)?;
                let mut touched = BTreeSet::new();
                for c in &changes {
                    g.state.apply(c, &mut touched);
                    self.put_document(&g.state, c, batch)?;
                }
                for t in touched {
                    self.put_projection(&g.state, &t, batch)?;
                }
            }
            Event::Aborted { reason, .. } => self.close(g, txn, batch, at_ms, Outcome::Aborted { reason })?,
            Event::Finished { .. } => self.close(g, txn, batch, at_ms, Outcome::Finished)?,
        }
        Ok(())
    }
}
