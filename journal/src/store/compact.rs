//! Compaction (events folded into a checkpoint, old history dropped) and
//! the per-domain audit history.

#[allow(unused_imports)]
use super::*;

impl Journal {
    pub(super) fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        match self
            .db
            .get_cf(self.cf(CF_META), META_CHECKPOINT)
            .map_err(|e| self.db_err(e))?
        {
            Some(v) => Ok(Some(decode(
                RecordKind::Meta,
                &v,
                RecordName::Meta {
                    key: META_CHECKPOINT.into(),
                },
                None,
            )?)),
            None => Ok(None),
        }
    }

    /// The history of `domain`, oldest first.
    pub fn history(&self, domain: &str) -> Result<Vec<HistoryEntry>> {
        let mut prefix = domain.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_HISTORY),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let key = String::from_utf8_lossy(&k).replace('\0', "/");
            out.push(decode(
                RecordKind::History,
                &v,
                RecordName::History { key },
                None,
            )?);
        }
        // Open transactions have no entry until they close (journals of
        // earlier builds wrote one at begin: the open index replaces it).
        let g = self.lock_inner()?;
        for o in g.open.values().filter(|o| o.domain == domain) {
            out.retain(|h: &HistoryEntry| h.txn != o.txn);
            out.push(o.history_entry(None));
        }
        out.sort_by_key(|h| h.txn);
        Ok(out)
    }

    /// One transaction's history entry, open or closed (`None`: never
    /// begun here, or closed and its history dropped by compaction). A
    /// closed one is found by a scan of the history (for `journal show`
    /// and `journal wait`, not for hot paths).
    pub fn transaction(&self, txn: TxnId) -> Result<Option<HistoryEntry>> {
        if let Some(o) = self.lock_inner()?.open.get(&txn) {
            return Ok(Some(o.history_entry(None)));
        }
        for item in self.db.iterator_cf(self.cf(CF_HISTORY), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = String::from_utf8_lossy(&k).replace('\0', "/");
            let entry: HistoryEntry = decode(RecordKind::History, &v, RecordName::History { key }, None)?;
            if entry.txn == txn {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Folds every event older than `older_than_ms` (ms since the epoch)
    /// into the compaction checkpoint and drops those events; drops history
    /// entries of closed transactions that ended before `history_before_ms`.
    /// Open transactions are untouched (recovery reads them from the index).
    pub fn compact(&self, older_than_ms: u64, history_before_ms: u64) -> Result<CompactionReport> {
        self.writable()?;
        // Hold the lock so no event is appended while the checkpoint is cut.
        let g = self.lock_inner()?;
        let mut cp = self.checkpoint()?.unwrap_or(Checkpoint {
            upto_seq: 0,
            state: State::default(),
        });
        let mut touched = BTreeSet::new();
        let mut report = CompactionReport::default();
        let mut last = None;
        for item in self.db.iterator_cf(self.cf(CF_EVENTS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let r: EventRecord = decode(RecordKind::Event, &v, RecordName::Event { seq }, None)?;
            if r.at_ms >= older_than_ms {
                break;
            }
            if let Event::Committed { changes, .. } = &r.event {
                for c in changes {
                    cp.state.apply(c, &mut touched);
                }
            }
            cp.upto_seq = seq;
            last = Some(seq);
            report.events_folded += 1;
        }
        let mut batch = RawBatch::default();
        if let Some(last) = last {
            batch.put_cf(self.ids.meta, META_CHECKPOINT, encode(RecordKind::Meta, &cp)?);
            batch.delete_range_cf(self.ids.events, seq_key(0), seq_key(last + 1));
        }
        for item in self.db.iterator_cf(self.cf(CF_HISTORY), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = String::from_utf8_lossy(&k).replace('\0', "/");
            let h: HistoryEntry = decode(RecordKind::History, &v, RecordName::History { key }, None)?;
            if matches!(h.ended_ms, Some(t) if t < history_before_ms) {
                batch.delete_cf(self.ids.history, &k);
                report.history_dropped += 1;
            }
        }
        let ticket = self.enqueue(batch, true)?;
        drop(g);
        self.durable(ticket)?;
        Ok(report)
    }
}
