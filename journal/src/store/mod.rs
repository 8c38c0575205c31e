//! The journal store on RocksDB.
//!
//! Column families:
//! - `events`: every [`EventRecord`], keyed by its global sequence number;
//! - `open`: one [`OpenTxn`] per open transaction, keyed by transaction id;
//! - `state`: the projection, one entry per domain, snapshot, checkpoint and
//!   created image;
//! - `history`: one [`HistoryEntry`] per closed transaction, keyed by
//!   domain (an open one's is derived from the open index);
//! - `meta`: counters and the compaction checkpoint.
//!
//! An event, the open-transaction record, the history entry and the
//! projection entries it implies are written in one batch (a
//! `RawBatch`, written through the group commit of `group.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, RecordKind};
use crate::error::{JournalError, RecordName, Result};
use crate::event::{Event, EventRecord, Intent, StateChange, TxnId};
use crate::group::{GroupCommit, GroupLog, Ticket};
use crate::lock::DirLock;
use crate::plan::Plan;
use crate::rawbatch::{CfId, RawBatch};
use crate::state::{CheckpointRecord, DomainCore, DomainState, ImageRecord, SnapshotRecord, State, Touched};

mod compact;
mod keys;
mod lifecycle;
mod open_index;
mod projection;
mod verify;

use keys::*;
use open_index::*;

const CF_EVENTS: &str = "events";
const CF_OPEN: &str = "open";
const CF_STATE: &str = "state";
const CF_HISTORY: &str = "history";
const CF_META: &str = "meta";
const META_NEXT_TXN: &str = "next_txn";
const META_CHECKPOINT: &str = "checkpoint";

/// Where an open transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnPhase {
    /// Intent written; steps before the commit point may be running.
    Running,
    /// The commit point passed; the rest only rolls forward.
    Committed,
    /// A failure before the commit point; undo is in progress.
    Aborting,
}

impl TxnPhase {
    /// Whether a transaction in this phase, whose plan has `steps` steps,
    /// may record `event` next; `Err` says why not. Pure: the protocol of
    /// DESIGN.md as one table (see the test), checked before anything is
    /// written. A transaction is begun only once, steps run only before an
    /// abort, the commit point is passed once and only while running, and
    /// nothing is undone after it.
    pub fn accepts(self, event: &Event, steps: usize) -> std::result::Result<(), String> {
        use TxnPhase::*;
        match event {
            Event::TxnBegun { .. } => Err("already begun".into()),
            Event::StepDone { step, .. } if *step as usize >= steps => {
                Err(format!("step {step} is not in the plan"))
            }
            Event::StepDone { .. } if self == Aborting => Err("cannot run steps while aborting".into()),
            Event::Committed { .. } if self != Running => {
                Err("commit after the commit point or during abort".into())
            }
            Event::Aborting { .. } if self == Committed => Err("cannot abort after the commit point".into()),
            Event::StepUndone { .. } | Event::Aborted { .. } if self == Committed => {
                Err("cannot undo after the commit point".into())
            }
            _ => Ok(()),
        }
    }
}

/// An open transaction, as the open-transaction index holds it: all that
/// recovery needs, without reading the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTxn {
    pub txn: TxnId,
    pub domain: String,
    pub intent: Intent,
    pub plan: Plan,
    pub prior: Option<DomainCore>,
    pub actor: String,
    pub began_ms: u64,
    pub phase: TxnPhase,
    /// Steps recorded as done (the world may be ahead of this).
    pub done: BTreeSet<u32>,
    /// Steps recorded as undone.
    pub undone: BTreeSet<u32>,
    pub abort_reason: Option<String>,
}

impl OpenTxn {
    /// Its history entry: open (`ended`: `None`), or closed at a time with
    /// an outcome.
    fn history_entry(&self, ended: Option<(u64, Outcome)>) -> HistoryEntry {
        let (ended_ms, outcome) = match ended {
            Some((at_ms, outcome)) => (Some(at_ms), outcome),
            None => (None, Outcome::Open),
        };
        HistoryEntry {
            txn: self.txn,
            domain: self.domain.clone(),
            what: self.intent.describe(),
            actor: self.actor.clone(),
            began_ms: self.began_ms,
            ended_ms,
            outcome,
        }
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Open,
    Finished,
    Aborted { reason: String },
}

/// One line of a domain's audit history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub txn: TxnId,
    pub domain: String,
    pub what: String,
    pub actor: String,
    pub began_ms: u64,
    pub ended_ms: Option<u64>,
    pub outcome: Outcome,
}

/// The compaction checkpoint: the projection folded from every event up to
/// and including `upto_seq`, whose events were then dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    upto_seq: u64,
    state: State,
}

/// Tuning of the journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Who is writing (shown in the history).
    pub actor: String,
    /// Whether synced events really call fsync (tests of logic may turn it
    /// off; the product never does).
    pub sync: bool,
    /// Open without writing anything: no new log, manifest or options file
    /// (a third of the time a small command needs to open the journal).
    /// Every write is refused with [`JournalError::ReadOnly`]. The state
    /// directory is still locked, and must already exist.
    pub read_only: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            actor: format!("pid {}", std::process::id()),
            sync: true,
            read_only: false,
        }
    }
}

/// The numeric ids of the column families, for [`RawBatch`]es.
#[derive(Debug, Clone, Copy)]
struct CfIds {
    events: CfId,
    open: CfId,
    state: CfId,
    history: CfId,
    meta: CfId,
}

impl CfIds {
    fn of(db: &DB, dir: &Path) -> Result<CfIds> {
        let id = |name: &str| {
            db.cf_handle(name)
                .and_then(CfId::of)
                .ok_or_else(|| JournalError::Db {
                    dir: dir.to_path_buf(),
                    message: format!("cannot tell the id of column family {name}: nothing was written"),
                })
        };
        Ok(CfIds {
            events: id(CF_EVENTS)?,
            open: id(CF_OPEN)?,
            state: id(CF_STATE)?,
            history: id(CF_HISTORY)?,
            meta: id(CF_META)?,
        })
    }
}

struct Inner {
    state: State,
    open: BTreeMap<TxnId, OpenTxn>,
    busy: BTreeMap<String, TxnId>,
    next_seq: u64,
    next_txn: u64,
}

/// Counts of what [`Journal::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionReport {
    pub events_folded: u64,
    pub history_dropped: u64,
}

/// The journal: the event log, the open-transaction index and the state
/// projection of one state directory.
pub struct Journal {
    db: DB,
    dir: PathBuf,
    inner: Mutex<Inner>,
    poisoned: AtomicBool,
    group: GroupCommit,
    /// The column families as write batches name them.
    ids: CfIds,
    options: JournalOptions,
    _lock: DirLock,
}

impl GroupLog for Journal {
    fn group(&self) -> &GroupCommit {
        &self.group
    }

    fn write_unsynced(&self, batch: WriteBatch) -> Result<()> {
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| self.db_err(e))
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.db_err(e))
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| self.db_err(e))
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }
}

impl Drop for Journal {
    /// Writes unsynced records still queued behind a group commit.
    fn drop(&mut self) {
        let batches = self.group.take_queue();
        let _ = GroupCommit::write_now(self, batches);
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, taking the state
    /// directory lock.
    pub fn open(dir: &Path, options: JournalOptions) -> Result<Journal> {
        if !options.read_only && !dir.is_dir() {
            // A new state directory is made durable in its parent (RocksDB
            // syncs its own directory, not the one above it).
            std::fs::create_dir_all(dir)
                .and_then(|()| match dir.parent() {
                    Some(p) if !p.as_os_str().is_empty() => std::fs::File::open(p)?.sync_all(),
                    _ => Ok(()),
                })
                .map_err(|source| JournalError::Io {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        let lock = DirLock::acquire(dir)?;
        let db_dir = dir.join("journal");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        // Writers of different domains overlap: the WAL write of one group
        // proceeds while the previous group fills its memtables.
        opts.set_enable_pipelined_write(true);
        // Bound the WAL (and so the replay at the next open): memtables are
        // flushed once the logs hold 64 MiB.
        opts.set_max_total_wal_size(64 << 20);
        // Waiting writers block instead of spinning: spinning threads on a
        // small machine steal the cores the group leader needs.
        opts.set_enable_write_thread_adaptive_yield(false);
        // Every command opens the journal: skip reading every table file's
        // statistics at open, and keep RocksDB's own log to warnings.
        opts.set_skip_stats_update_on_db_open(true);
        opts.set_log_level(rocksdb::LogLevel::Warn);
        // Open table files on the calling thread: RocksDB would otherwise
        // start up to 16 threads per column family to open a handful of files.
        opts.set_max_file_opening_threads(1);
        // Required by the vector memtables below (one writer at a time
        // inserts anyway: the group-commit leader).
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = [CF_EVENTS, CF_OPEN, CF_STATE, CF_HISTORY, CF_META]
            .into_iter()
            .map(|n| {
                let mut cf = Options::default();
                cf.set_write_buffer_size(16 << 20);
                // The projection is read whole at every open: decompressing
                // it cost more than reading it uncompressed.
                if n == CF_STATE {
                    cf.set_compression_type(rocksdb::DBCompressionType::None);
                }
                // The log-like families are written far more than read
                // (events and the open index are read at open, history on
                // request): an append-only memtable inserts in O(1) where
                // the skip list searched on every key.
                if n == CF_EVENTS || n == CF_OPEN || n == CF_HISTORY {
                    cf.set_memtable_factory(rocksdb::MemtableFactory::Vector);
                }
                ColumnFamilyDescriptor::new(n, cf)
            });
        let fresh = !db_dir.exists();
        let db = if options.read_only {
            DB::open_cf_descriptors_read_only(&opts, &db_dir, cfs, false)
        } else {
            DB::open_cf_descriptors(&opts, &db_dir, cfs)
        }
        .map_err(|e| JournalError::Db {
            dir: db_dir.clone(),
            message: e.to_string(),
        })?;
        if fresh && !options.read_only {
            // RocksDB's directory entry, made durable in the state directory.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| JournalError::Io {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        let ids = CfIds::of(&db, &db_dir)?;
        let mut journal = Journal {
            ids,
            db,
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                state: State::default(),
                open: BTreeMap::new(),
                busy: BTreeMap::new(),
                next_seq: 1,
                next_txn: 1,
            }),
            poisoned: AtomicBool::new(false),
            group: GroupCommit::new(options.sync),
            options,
            _lock: lock,
        };
        journal.load()?;
        Ok(journal)
    }

    /// Bytes of write-ahead log in a state directory that a read-only open
    /// would replay into memory (a read-write open moves them into table
    /// files once, so later opens are quick). 0 when there is no journal.
    pub fn log_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir.join("journal"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Whether the journal was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.options.read_only
    }

    /// Refuses a write to a read-only journal before anything changes.
    fn writable(&self) -> Result<()> {
        if self.options.read_only {
            return Err(JournalError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn db_err(&self, e: rocksdb::Error) -> JournalError {
        JournalError::Db {
            dir: self.dir.join("journal"),
            message: e.to_string(),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn load(&mut self) -> Result<()> {
        let state = self.stored_projection()?;
        let open: BTreeMap<TxnId, OpenTxn> =
            self.read_open_index()?.into_iter().map(|o| (o.txn, o)).collect();
        let busy = open.values().map(|o| (o.domain.clone(), o.txn)).collect();
        let mut next_seq = self.checkpoint()?.map(|c| c.upto_seq + 1).unwrap_or(1);
        if let Some(item) = self.db.iterator_cf(self.cf(CF_EVENTS), IteratorMode::End).next() {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            let last = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            next_seq = next_seq.max(last + 1);
        }
        let mut next_txn = match self
            .db
            .get_cf(self.cf(CF_META), META_NEXT_TXN)
            .map_err(|e| self.db_err(e))?
        {
            Some(v) => decode::<u64>(
                RecordKind::Meta,
                &v,
                RecordName::Meta {
                    key: META_NEXT_TXN.into(),
                },
                None,
            )?,
            None => 1,
        };
        if let Some(max_open) = open.keys().next_back() {
            next_txn = next_txn.max(max_open.0 + 1);
        }
        let inner = self
            .inner
            .get_mut()
            .map_err(|_| JournalError::Poisoned("lock poisoned".into()))?;
        *inner = Inner {
            state,
            open,
            busy,
            next_seq,
            next_txn,
        };
        Ok(())
    }

    fn lock_inner(&self) -> Result<MutexGuard<'_, Inner>> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(JournalError::Poisoned("a write to RocksDB failed".into()));
        }
        self.inner
            .lock()
            .map_err(|_| JournalError::Poisoned("a journal thread panicked".into()))
    }

    /// Queues `batch` (synced when `sync`) for group commit. Called with the
    /// state lock held, so batches are written in the order they were
    /// prepared.
    fn enqueue(&self, batch: RawBatch, sync: bool) -> Result<Ticket> {
        self.group.enqueue(&batch, sync)
    }

    /// Waits until the ticket's record is written (synced if it must be).
    fn durable(&self, ticket: Ticket) -> Result<()> {
        GroupCommit::wait(self, ticket)
    }

    /// [`Journal::durable`] for async callers: waits without holding a
    /// thread.
    pub(crate) async fn durable_async(self: &Arc<Self>, ticket: Ticket) -> Result<()> {
        GroupCommit::wait_async(self, ticket).await
    }

    /// Prepares and queues the intent record; the caller then waits for
    /// the ticket.
    pub(crate) fn begin_queued(
        &self,
        intent: Intent,
        plan: Plan,
        prior: Option<DomainCore>,
    ) -> Result<(TxnId, Ticket)> {
        let domain = intent.domain().to_string();
        let mut g = self.lock_inner()?;
        if let Some(txn) = g.busy.get(&domain) {
            return Err(JournalError::DomainBusy { domain, txn: *txn });
        }
        let txn = TxnId(g.next_txn);
        g.next_txn += 1;
        let event = Event::TxnBegun {
            txn,
            domain: domain.clone(),
            intent,
            plan,
            prior,
            actor: self.options.actor.clone(),
        };
        let mut batch = RawBatch::default();
        batch.put_cf(
            self.ids.meta,
            META_NEXT_TXN,
            encode(RecordKind::Meta, &g.next_txn)?,
        );
        let prepared = self.prepare(&mut g, event, &mut batch);
        if prepared.is_err() {
            g.next_txn -= 1;
        }
        prepared?;
        let ticket = self.enqueue(batch, true)?;
        drop(g);
        Ok((txn, ticket))
    }
}

#[cfg(test)]
mod phase_tests {
    use super::*;
    use crate::event::{Intent, TxnId};
    use crate::plan::Plan;

    #[test]
    fn the_protocol_as_a_table() {
        let t = TxnId(1);
        let events = [
            (
                "begun",
                Event::TxnBegun {
                    txn: t,
                    domain: "d".into(),
                    intent: Intent::Other {
                        domain: "d".into(),
                        what: "x".into(),
                    },
                    plan: Plan {
                        steps: vec![],
                        commit_index: 0,
                        changes: vec![],
                    },
                    prior: None,
                    actor: String::new(),
                },
            ),
            ("step 0", Event::StepDone { txn: t, step: 0 }),
            ("step 5", Event::StepDone { txn: t, step: 5 }),
            (
                "committed",
                Event::Committed {
                    txn: t,
                    changes: vec![],
                },
            ),
            (
                "aborting",
                Event::Aborting {
                    txn: t,
                    reason: "r".into(),
                },
            ),
            ("undone", Event::StepUndone { txn: t, step: 0 }),
            (
                "aborted",
                Event::Aborted {
                    txn: t,
                    reason: "r".into(),
                },
            ),
            ("finished", Event::Finished { txn: t }),
        ];
        // Rows: phase; columns: the events above; true = accepted.
        use TxnPhase::*;
        let table = [
            (Running, [false, true, false, true, true, true, true, true]),
            (Committed, [false, true, false, false, false, false, false, true]),
            (Aborting, [false, false, false, false, true, true, true, true]),
        ];
        for (phase, row) in table {
            for ((name, e), want) in events.iter().zip(row) {
                assert_eq!(
                    phase.accepts(e, 3).is_ok(),
                    want,
                    "{phase:?} {name}: {:?}",
                    phase.accepts(e, 3)
                );
            }
        }
    }
}
