//! The open-transaction index: one record per open transaction (and its
//! progress), kept in memory and in the `open` column family.

#[allow(unused_imports)]
use super::*;

/// What changes in an open transaction after its begin.
#[derive(Deserialize)]
pub(super) struct OpenProgress {
    phase: TxnPhase,
    done: BTreeSet<u32>,
    undone: BTreeSet<u32>,
    abort_reason: Option<String>,
}

/// [`OpenProgress`] borrowed from an [`OpenTxn`], for writing.
#[derive(Serialize)]
pub(super) struct ProgressRef<'a> {
    phase: &'a TxnPhase,
    done: &'a BTreeSet<u32>,
    undone: &'a BTreeSet<u32>,
    abort_reason: &'a Option<String>,
}

impl Journal {
    pub(super) fn update_open(
        &self,
        g: &mut Inner,
        txn: TxnId,
        batch: &mut RawBatch,
        f: impl FnOnce(&mut OpenTxn),
    ) -> Result<()> {
        let o = g.open.get_mut(&txn).ok_or(JournalError::NotOpen(txn))?;
        f(o);
        // The progress alone: the intent and plan (large for a bulk
        // redefine) were written once, at begin.
        let progress = ProgressRef {
            phase: &o.phase,
            done: &o.done,
            undone: &o.undone,
            abort_reason: &o.abort_reason,
        };
        batch.put_cf(
            self.ids.open,
            progress_key(txn),
            encode(RecordKind::OpenProgress, &progress)?,
        );
        Ok(())
    }

    /// The open-transaction index as stored: each record (written at
    /// begin) with its latest progress record applied.
    pub(super) fn read_open_index(&self) -> Result<Vec<OpenTxn>> {
        let mut out: Vec<OpenTxn> = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_OPEN), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let txn = open_key_txn(&k);
            let name = || RecordName::OpenTxn { txn };
            if k.len() == 8 {
                out.push(decode(RecordKind::OpenTxn, &v, name(), Some(txn))?);
                continue;
            }
            let p: OpenProgress = decode(RecordKind::OpenProgress, &v, name(), Some(txn))?;
            match out.last_mut() {
                Some(o) if o.txn == txn => {
                    o.phase = p.phase;
                    o.done = p.done;
                    o.undone = p.undone;
                    o.abort_reason = p.abort_reason;
                }
                _ => {
                    return Err(JournalError::Corrupt {
                        record: name(),
                        txn: Some(txn),
                        kind: crate::error::CorruptKind::Payload(
                            "progress of a transaction whose open record is missing".into(),
                        ),
                    })
                }
            }
        }
        Ok(out)
    }

    pub(super) fn close(
        &self,
        g: &mut Inner,
        txn: TxnId,
        batch: &mut RawBatch,
        at_ms: u64,
        outcome: Outcome,
    ) -> Result<()> {
        let o = g.open.remove(&txn).ok_or(JournalError::NotOpen(txn))?;
        g.busy.remove(&o.domain);
        batch.delete_cf(self.ids.open, txn_key(txn));
        batch.delete_cf(self.ids.open, progress_key(txn));
        let hist = o.history_entry(Some((at_ms, outcome)));
        batch.put_cf(
            self.ids.history,
            history_key(&o.domain, txn),
            encode(RecordKind::History, &hist)?,
        );
        Ok(())
    }

    /// The open transactions, oldest first. Served from the in-memory index
    /// (loaded from the `open` column family at start): the cost is the
    /// number of open transactions, never the size of the history.
    pub fn open_transactions(&self) -> Result<Vec<OpenTxn>> {
        let g = self.lock_inner()?;
        Ok(g.open.values().cloned().collect())
    }

    /// One open transaction.
    pub fn open_transaction(&self, txn: TxnId) -> Result<Option<OpenTxn>> {
        let g = self.lock_inner()?;
        Ok(g.open.get(&txn).cloned())
    }

    /// The transaction holding `domain`, if any.
    pub fn busy_with(&self, domain: &str) -> Result<Option<TxnId>> {
        let g = self.lock_inner()?;
        Ok(g.busy.get(domain).copied())
    }

    /// Reads the open-transaction index from disk (not from memory); used by
    /// fsck and benchmarks to check the stored index.
    pub fn stored_open_transactions(&self) -> Result<Vec<OpenTxn>> {
        self.read_open_index()
    }
}
