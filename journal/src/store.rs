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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn txn_key(txn: TxnId) -> [u8; 8] {
    txn.0.to_be_bytes()
}

/// The progress record of an open transaction, stored right after its
/// open record (`txn_key` + `p`).
fn progress_key(txn: TxnId) -> [u8; 9] {
    let mut k = [b'p'; 9];
    k[..8].copy_from_slice(&txn_key(txn));
    k
}

/// The transaction an `open` key (`txn_key`, or `progress_key`) belongs to.
fn open_key_txn(key: &[u8]) -> TxnId {
    TxnId(u64::from_be_bytes(
        key.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]),
    ))
}

/// What changes in an open transaction after its begin.
#[derive(Deserialize)]
struct OpenProgress {
    phase: TxnPhase,
    done: BTreeSet<u32>,
    undone: BTreeSet<u32>,
    abort_reason: Option<String>,
}

/// [`OpenProgress`] borrowed from an [`OpenTxn`], for writing.
#[derive(Serialize)]
struct ProgressRef<'a> {
    phase: &'a TxnPhase,
    done: &'a BTreeSet<u32>,
    undone: &'a BTreeSet<u32>,
    abort_reason: &'a Option<String>,
}

fn history_key(domain: &str, txn: TxnId) -> Vec<u8> {
    let mut k = domain.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&txn.0.to_be_bytes());
    k
}

/// Historic `<domain>` documents sort after every other projection key
/// (`x\0s\0dom\0snap`, `x\0c\0dom\0cp`), so the projection is read whole
/// without them.
const DOC_PREFIX: &str = "x";
const DOC_SNAPSHOT: char = 's';
const DOC_CHECKPOINT: char = 'c';
const DOC_SNAPSHOT_EXTRAS: char = 'e';

fn document_key(kind: char, domain: &str, name: &str) -> Vec<u8> {
    format!("{DOC_PREFIX}\0{kind}\0{domain}\0{name}").into_bytes()
}

/// The key range of one domain's documents of one kind.
fn document_range(kind: char, domain: &str) -> (Vec<u8>, Vec<u8>) {
    let from = format!("{DOC_PREFIX}\0{kind}\0{domain}\0").into_bytes();
    let mut to = from.clone();
    if let Some(last) = to.last_mut() {
        *last = 1;
    }
    (from, to)
}

fn projection_key(t: &Touched) -> String {
    match t {
        Touched::Domain(d) => format!("d\0{d}"),
        Touched::Snapshot(d, s) => format!("s\0{d}\0{s}"),
        Touched::Checkpoint(d, c) => format!("c\0{d}\0{c}"),
        Touched::Image(p) => format!("i\0{p}"),
    }
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

    /// Begins a transaction: checks the domain is free, allocates an id and
    /// writes the synced intent record.
    pub fn begin(&self, intent: Intent, plan: Plan, prior: Option<DomainCore>) -> Result<TxnId> {
        let (txn, ticket) = self.begin_queued(intent, plan, prior)?;
        self.durable(ticket)?;
        Ok(txn)
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
    fn prepare(&self, g: &mut Inner, event: Event, batch: &mut RawBatch) -> Result<()> {
        self.writable()?;
        let txn = event.txn();
        let at_ms = now_ms();
        let protocol = |what: &str| JournalError::Protocol {
            txn,
            what: what.to_string(),
        };
        // Validate first, so a refused event changes nothing.
        match (&event, g.open.get(&txn)) {
            (Event::TxnBegun { .. }, None) => {}
            (Event::TxnBegun { .. }, Some(_)) => return Err(protocol("already begun")),
            (_, None) => return Err(JournalError::NotOpen(txn)),
            (Event::StepDone { step, .. }, Some(o)) => {
                if *step as usize >= o.plan.steps.len() {
                    return Err(protocol(&format!("step {step} is not in the plan")));
                }
                if o.phase == TxnPhase::Aborting {
                    return Err(protocol("cannot run steps while aborting"));
                }
            }
            (Event::Committed { .. }, Some(o)) if o.phase != TxnPhase::Running => {
                return Err(protocol("commit after the commit point or during abort"))
            }
            (Event::Aborting { .. }, Some(o)) if o.phase == TxnPhase::Committed => {
                return Err(protocol("cannot abort after the commit point"))
            }
            (Event::StepUndone { .. } | Event::Aborted { .. }, Some(o)) if o.phase == TxnPhase::Committed => {
                return Err(protocol("cannot undo after the commit point"))
            }
            _ => {}
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

    fn update_open(
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
    fn read_open_index(&self) -> Result<Vec<OpenTxn>> {
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

    fn close(
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

    fn put_projection(&self, state: &State, t: &Touched, batch: &mut RawBatch) -> Result<()> {
        let key = projection_key(t);
        let cf = self.ids.state;
        let value = match t {
            Touched::Domain(d) => state
                .domains
                .get(d)
                .map(|s| encode(RecordKind::Domain, &s.core))
                .transpose()?,
            Touched::Snapshot(d, s) => state
                .domains
                .get(d)
                .and_then(|x| x.snapshots.get(s))
                .map(|s| encode(RecordKind::Snapshot, s))
                .transpose()?,
            Touched::Checkpoint(d, c) => state
                .domains
                .get(d)
                .and_then(|x| x.checkpoints.get(c))
                .map(|c| encode(RecordKind::Checkpoint, c))
                .transpose()?,
            Touched::Image(p) => state
                .images
                .get(p)
                .map(|i| encode(RecordKind::Image, i))
                .transpose()?,
        };
        match value {
            Some(v) => batch.put_cf(cf, key.as_bytes(), v),
            None => batch.delete_cf(cf, key.as_bytes()),
        }
        Ok(())
    }

    /// Stores or removes the historic `<domain>` documents a change implies
    /// (after the change was applied to `state`).
    fn put_document(&self, state: &State, change: &StateChange, batch: &mut RawBatch) -> Result<()> {
        let cf = self.ids.state;
        match change {
            // Stored only when the record was (its domain is defined).
            StateChange::SnapshotRecorded {
                domain,
                snapshot,
                domain_xml,
            } if state
                .domains
                .get(domain)
                .is_some_and(|d| d.snapshots.contains_key(&snapshot.name)) =>
            {
                let value = encode(RecordKind::Document, domain_xml)?;
                batch.put_cf(cf, document_key(DOC_SNAPSHOT, domain, &snapshot.name), value);
            }
            StateChange::CheckpointRecorded {
                domain,
                checkpoint,
                domain_xml,
            } if state
                .domains
                .get(domain)
                .is_some_and(|d| d.checkpoints.contains_key(&checkpoint.name)) =>
            {
                let value = encode(RecordKind::Document, domain_xml)?;
                batch.put_cf(cf, document_key(DOC_CHECKPOINT, domain, &checkpoint.name), value);
            }
            StateChange::SnapshotExtrasRecorded {
                domain,
                snapshot,
                xml,
            } if state
                .domains
                .get(domain)
                .is_some_and(|d| d.snapshots.contains_key(snapshot)) =>
            {
                let value = encode(RecordKind::Document, xml)?;
                batch.put_cf(cf, document_key(DOC_SNAPSHOT_EXTRAS, domain, snapshot), value);
            }
            StateChange::SnapshotRemoved { domain, snapshot } => {
                batch.delete_cf(cf, document_key(DOC_SNAPSHOT, domain, snapshot));
                batch.delete_cf(cf, document_key(DOC_SNAPSHOT_EXTRAS, domain, snapshot));
            }
            StateChange::CheckpointRemoved { domain, checkpoint } => {
                batch.delete_cf(cf, document_key(DOC_CHECKPOINT, domain, checkpoint));
            }
            StateChange::DomainUndefined { domain } => {
                for kind in [DOC_SNAPSHOT, DOC_CHECKPOINT, DOC_SNAPSHOT_EXTRAS] {
                    let (from, to) = document_range(kind, domain);
                    batch.delete_range_cf(cf, from, to);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn document(&self, kind: char, domain: &str, name: &str) -> Result<Option<String>> {
        let key = document_key(kind, domain, name);
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_STATE), &key)
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        let record = RecordName::Projection {
            key: String::from_utf8_lossy(&key).into_owned(),
        };
        Ok(Some(decode(RecordKind::Document, &v, record, None)?))
    }

    fn documents(&self, kind: char, domain: &str) -> Result<BTreeMap<String, String>> {
        let (from, to) = document_range(kind, domain);
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(to);
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf_opt(
            self.cf(CF_STATE),
            read,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let record = RecordName::Projection {
                key: String::from_utf8_lossy(&k).into_owned(),
            };
            let name = String::from_utf8_lossy(&k[from.len()..]).into_owned();
            out.insert(name, decode(RecordKind::Document, &v, record, None)?);
        }
        Ok(out)
    }

    /// The `<domain>` as it was when snapshot `name` of `domain` was taken
    /// (`None`: no such snapshot).
    pub fn snapshot_domain_xml(&self, domain: &str, name: &str) -> Result<Option<String>> {
        self.document(DOC_SNAPSHOT, domain, name)
    }

    /// The historic `<domain>` of checkpoint `name` of `domain`.
    pub fn checkpoint_domain_xml(&self, domain: &str, name: &str) -> Result<Option<String>> {
        self.document(DOC_CHECKPOINT, domain, name)
    }

    /// The `<extras>` document of snapshot `name` of `domain`: the parts of
    /// a redefined document its record does not model (`None`: none).
    pub fn snapshot_extras(&self, domain: &str, name: &str) -> Result<Option<String>> {
        self.document(DOC_SNAPSHOT_EXTRAS, domain, name)
    }

    /// The `<extras>` documents of `domain`'s snapshots, by name.
    pub fn snapshot_extras_all(&self, domain: &str) -> Result<BTreeMap<String, String>> {
        self.documents(DOC_SNAPSHOT_EXTRAS, domain)
    }

    /// The historic `<domain>` of every snapshot of `domain`, by name.
    pub fn snapshot_domain_xmls(&self, domain: &str) -> Result<BTreeMap<String, String>> {
        self.documents(DOC_SNAPSHOT, domain)
    }

    /// The historic `<domain>` of every checkpoint of `domain`, by name.
    pub fn checkpoint_domain_xmls(&self, domain: &str) -> Result<BTreeMap<String, String>> {
        self.documents(DOC_CHECKPOINT, domain)
    }

    /// Runs `f` on the current state projection.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R> {
        let g = self.lock_inner()?;
        Ok(f(&g.state))
    }

    /// A copy of the current state projection.
    pub fn state(&self) -> Result<State> {
        self.with_state(|s| s.clone())
    }

    /// A copy of one domain's state.
    pub fn domain(&self, name: &str) -> Result<Option<DomainState>> {
        self.with_state(|s| s.domains.get(name).cloned())
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

    fn checkpoint(&self) -> Result<Option<Checkpoint>> {
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

    /// Every stored event after the compaction checkpoint, in order. A
    /// record that does not decode is an error naming it.
    pub fn events(&self) -> Result<Vec<EventRecord>> {
        let mut out = Vec::new();
        self.for_each_event(|r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    fn for_each_event(&self, mut f: impl FnMut(EventRecord) -> Result<()>) -> Result<()> {
        for item in self
            .db
            .iterator_cf(self.cf(CF_EVENTS), IteratorMode::From(&[], Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            f(decode(RecordKind::Event, &v, RecordName::Event { seq }, None)?)?;
        }
        Ok(())
    }

    /// The projection folded from the compaction checkpoint and every event
    /// after it: must equal [`Journal::state`].
    pub fn fold_events(&self) -> Result<State> {
        let mut state = self.checkpoint()?.map(|c| c.state).unwrap_or_default();
        let mut touched = BTreeSet::new();
        self.for_each_event(|r| {
            if let Event::Committed { changes, .. } = &r.event {
                for c in changes {
                    state.apply(c, &mut touched);
                }
            }
            Ok(())
        })?;
        Ok(state)
    }

    /// The projection as stored in the `state` column family.
    pub fn stored_projection(&self) -> Result<State> {
        // Read every entry, then decode on every core: with 10,000
        // snapshots, decoding is most of the time a command needs to open
        // the journal.
        let mut raw: Vec<RawEntry> = Vec::new();
        // One sequential pass: read ahead, keep the blocks out of the cache
        // (read once), and skip RocksDB's block checksums (every value
        // carries its own CRC32C, checked when it is decoded).
        let mut read = rocksdb::ReadOptions::default();
        read.set_readahead_size(4 << 20);
        read.fill_cache(false);
        read.set_verify_checksums(false);
        read.set_iterate_upper_bound(DOC_PREFIX.as_bytes());
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_STATE), read, IteratorMode::Start)
        {
            raw.push(item.map_err(|e| self.db_err(e))?);
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let chunk = raw.len().div_ceil(threads).max(1024);
        let parts: Vec<Result<ProjectionPart>> = std::thread::scope(|scope| {
            let handles: Vec<_> = raw
                .chunks(chunk)
                .map(|c| scope.spawn(move || decode_projection(c)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(JournalError::Poisoned("a decoding thread panicked".into())))
                })
                .collect()
        });
        let mut state = State::default();
        let mut snapshots = Vec::new();
        let mut checkpoints = Vec::new();
        for part in parts {
            let part = part?;
            for (d, core) in part.domains {
                state.domains.insert(
                    d,
                    DomainState {
                        core,
                        snapshots: BTreeMap::new(),
                        checkpoints: BTreeMap::new(),
                    },
                );
            }
            snapshots.extend(part.snapshots);
            checkpoints.extend(part.checkpoints);
            state
                .images
                .extend(part.images.into_iter().map(|i| (i.path.clone(), i)));
        }
        // Keys are stored sorted (`s\0dom\0name`), so each domain's records
        // arrive together and in name order: each map is built in bulk.
        for (d, records) in group_by_domain(snapshots) {
            if let Some(dom) = state.domains.get_mut(&d) {
                fill(&mut dom.snapshots, records, |s| s.name.clone());
            }
        }
        for (d, records) in group_by_domain(checkpoints) {
            if let Some(dom) = state.domains.get_mut(&d) {
                fill(&mut dom.checkpoints, records, |c| c.name.clone());
            }
        }
        Ok(state)
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
    pub fn raw_put_event(&self, seq: u64, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_EVENTS), seq_key(seq), bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: the raw value of an event record.
    #[doc(hidden)]
    pub fn raw_get_event(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_EVENTS), seq_key(seq))
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: overwrites the raw value of a projection record.
    #[doc(hidden)]
    pub fn raw_put_projection(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_STATE), key.as_bytes(), bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: the raw value of an open-transaction record.
    #[doc(hidden)]
    pub fn raw_put_open(&self, txn: TxnId, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_OPEN), txn_key(txn), bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: removes the historic `<domain>` of a
    /// snapshot (what a damaged journal may lack).
    #[doc(hidden)]
    pub fn raw_delete_snapshot_document(&self, domain: &str, name: &str) -> Result<()> {
        self.db
            .delete_cf(self.cf(CF_STATE), document_key(DOC_SNAPSHOT, domain, name))
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: the raw value of an open transaction's
    /// progress record.
    #[doc(hidden)]
    pub fn raw_get_open_progress(&self, txn: TxnId) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_OPEN), progress_key(txn))
            .map_err(|e| self.db_err(e))
    }

    /// Test and tooling hook: sets the raw value of an open transaction's
    /// progress record.
    #[doc(hidden)]
    pub fn raw_put_open_progress(&self, txn: TxnId, bytes: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_OPEN), progress_key(txn), bytes)
            .map_err(|e| self.db_err(e))
    }
}

/// Adds records to a map keyed by name; an empty map is built in bulk
/// (records arrive sorted by name), which is much cheaper than inserting.
fn fill<T>(map: &mut BTreeMap<String, T>, records: Vec<T>, key: impl Fn(&T) -> String) {
    let entries = records.into_iter().map(|r| (key(&r), r));
    if map.is_empty() {
        *map = entries.collect();
    } else {
        map.extend(entries);
    }
}

/// Splits (domain, record) pairs into runs of one domain, keeping order.
fn group_by_domain<T>(items: Vec<(String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (d, item) in items {
        match out.last_mut() {
            Some((last, run)) if *last == d => run.push(item),
            _ => out.push((d, vec![item])),
        }
    }
    out
}

/// A stored (key, value) pair as RocksDB returns it.
type RawEntry = (Box<[u8]>, Box<[u8]>);

/// What one slice of the `state` column family decodes to.
#[derive(Default)]
struct ProjectionPart {
    domains: Vec<(String, DomainCore)>,
    snapshots: Vec<(String, SnapshotRecord)>,
    checkpoints: Vec<(String, CheckpointRecord)>,
    images: Vec<ImageRecord>,
}

/// Decodes projection entries (`d\0dom`, `s\0dom\0snap`, `c\0dom\0cp`,
/// `i\0path`); an entry that does not decode is an error naming its key.
fn decode_projection(entries: &[RawEntry]) -> Result<ProjectionPart> {
    let mut part = ProjectionPart::default();
    for (k, v) in entries {
        let key = String::from_utf8_lossy(k);
        let name = || RecordName::Projection { key: key.to_string() };
        let mut parts = key.splitn(3, '\0');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("d"), Some(d), None) => part
                .domains
                .push((d.to_string(), decode(RecordKind::Domain, v, name(), None)?)),
            (Some("s"), Some(d), Some(_)) => part
                .snapshots
                .push((d.to_string(), decode(RecordKind::Snapshot, v, name(), None)?)),
            (Some("c"), Some(d), Some(_)) => part
                .checkpoints
                .push((d.to_string(), decode(RecordKind::Checkpoint, v, name(), None)?)),
            (Some("i"), Some(_), None) => part.images.push(decode(RecordKind::Image, v, name(), None)?),
            _ => {
                return Err(JournalError::Corrupt {
                    record: name(),
                    txn: None,
                    kind: crate::error::CorruptKind::Payload("unknown projection key".into()),
                })
            }
        }
    }
    Ok(part)
}
