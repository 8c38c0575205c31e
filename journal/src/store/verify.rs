//! Record verification, and the raw hooks tests and tooling use to damage
//! or inspect records.

#[allow(unused_imports)]
use super::*;

impl Journal {
    /// Decodes every stored record and reports each one that fails (I9).
    pub fn verify_records(&self) -> Result<Vec<JournalError>> {
        let mut bad = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_EVENTS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            if let Err(e) = decode::<EventRecord>(RecordKind::Event, &v, RecordName::Event { seq }, None) {
                bad.push(e);
            }
        }
        let before_open = bad.len();
        for item in self.db.iterator_cf(self.cf(CF_OPEN), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let txn = open_key_txn(&k);
            let name = RecordName::OpenTxn { txn };
            let checked = if k.len() == 8 {
                decode::<OpenTxn>(RecordKind::OpenTxn, &v, name, Some(txn)).map(drop)
            } else {
                decode::<OpenProgress>(RecordKind::OpenProgress, &v, name, Some(txn)).map(drop)
            };
            if let Err(e) = checked {
                bad.push(e);
            }
        }
        // The index as a whole (a progress record without its transaction's
        // record), unless a record of it was already reported.
        if bad.len() == before_open {
            if let Err(e) = self.read_open_index() {
                bad.push(e);
            }
        }
        if let Err(e) = self.stored_projection() {
            bad.push(e);
        }
        for item in self.db.iterator_cf(
            self.cf(CF_STATE),
            IteratorMode::From(DOC_PREFIX.as_bytes(), Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            if let Err(e) = decode::<String>(RecordKind::Document, &v, RecordName::Projection { key }, None) {
                bad.push(e);
            }
        }
        for item in self.db.iterator_cf(self.cf(CF_HISTORY), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = String::from_utf8_lossy(&k).replace('\0', "/");
            if let Err(e) = decode::<HistoryEntry>(RecordKind::History, &v, RecordName::History { key }, None)
            {
                bad.push(e);
            }
        }
        if let Err(e) = self.checkpoint() {
            bad.push(e);
        }
        Ok(bad)
    }

    /// Test and tooling hook: overwrites the raw value of an event record
    /// (to simulate on-disk corruption).
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn raw_put_event(&self, seq: u64, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_EVENTS), seq_key(seq), bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: the raw value of an event record.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn raw_get_event(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_EVENTS), seq_key(seq))
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: overwrites the raw value of a projection record.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn raw_put_projection(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_STATE), key.as_bytes(), bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: the raw value of an open-transaction record.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn raw_put_open(&self, txn: TxnId, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_OPEN), txn_key(txn), bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: removes the historic `<domain>` of a
    /// snapshot (what a damaged journal may lack).
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn raw_delete_snapshot_document(&self, domain: &str, name: &str) -> Result<()> {
        self.db
            .delete_cf(self.cf(CF_STATE), document_key(DOC_SNAPSHOT, domain, name))
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: the raw value of an open transaction's
    /// progress record.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn raw_get_open_progress(&self, txn: TxnId) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_OPEN), progress_key(txn))
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: sets the raw value of an open transaction's
    /// progress record.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn raw_put_open_progress(&self, txn: TxnId, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_OPEN), progress_key(txn), bytes)
            .map_err(|e| self.db_err(e))
    }
}
