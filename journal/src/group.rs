//! Group commit in two overlapping lanes.
//!
//! Records are queued in the order they were prepared, in one buffer
//! ([`RawBatch`]). The **write lane** writes the whole queue as one group:
//! one unsynced RocksDB write (atomic, in order, one WAL append). The **sync
//! lane** syncs the WAL up to the last written group (one `fdatasync`).
//! The lanes run at the same time: while one sync is on the disk, the next
//! group is written, so under load each fsync covers everything written
//! while the previous one ran, and the fsync latency no longer adds to the
//! time a group takes to write.
//!
//! No thread of our own runs the lanes. A caller that needs an idle lane
//! runs it: an async caller on tokio's blocking pool, as long as the lane
//! has work; a blocking caller on its own thread, one round — and when it
//! needs a sync and both lanes are idle, one synced write (the classic
//! group-commit leader: with many threads, the groups grow while it waits
//! on the disk; a blocking thread per lane round would hand the lanes from
//! thread to thread for groups of one record). Callers that find their
//! lane busy wait, each woken alone: when its record is durable (or
//! written, for an unsynced record), or when an idle lane needs someone to
//! run it. Nothing wakes every waiter at once.
//!
//! A lane claimed by an async caller runs on a task spawned on the
//! blocking pool. A runtime shutting down may drop that task unrun; the
//! lane then stays claimed and callers still waiting on that journal wait
//! for ever (its drop still writes what is queued).

use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::WriteBatch;

use crate::crashpoint::crash_point;
use crate::error::{JournalError, Result};
use crate::rawbatch::RawBatch;

/// Where the group commit writes: the journal's RocksDB (or, in unit
/// tests, a double that records what reached it).
pub(crate) trait GroupLog: Send + Sync + 'static {
    /// The group-commit state of this log.
    fn group(&self) -> &GroupCommit;
    /// Writes one batch unsynced (in the OS's cache once this returns).
    fn write_unsynced(&self, batch: WriteBatch) -> Result<()>;
    /// Writes one batch and makes it, and everything before it, durable.
    fn write_synced(&self, batch: WriteBatch) -> Result<()>;
    /// Makes everything written so far durable.
    fn sync(&self) -> Result<()>;
    /// Marks the journal unusable after a failed write or sync.
    fn poison(&self);
}

/// What a prepared record waits for before its caller may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// Nothing: an unsynced record in a group another waiting caller will
    /// get written. Recovery probes the step after the last recorded one,
    /// so losing it in a crash is harmless.
    Nothing,
    /// Its group written (an unsynced record).
    Written(u64),
    /// Its group synced.
    Durable(u64),
}

/// What a caller must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Done,
    Write,
    Sync,
    Wait,
}

/// How a waiting caller is woken.
enum Wake {
    Thread(std::thread::Thread),
    Task(tokio::sync::oneshot::Sender<()>),
}

impl Wake {
    /// Wakes the caller; false if it is gone (a dropped async caller).
    fn wake(self) -> bool {
        match self {
            Wake::Thread(t) => {
                t.unpark();
                true
            }
            Wake::Task(tx) => tx.send(()).is_ok(),
        }
    }
}

struct Waiter {
    id: u64,
    ticket: Ticket,
    wake: Wake,
}

#[derive(Default)]
struct Lanes {
    /// The queued group: every queued record, in order.
    queue: RawBatch,
    /// The buffer of the last written group, kept for the next.
    spare: Option<RawBatch>,
    /// The queued group holds a synced record.
    queue_needs_sync: bool,
    /// A caller holding a ticket for the queued group will see it written.
    queue_owned: bool,
    /// The number the queued group will have.
    next_group: u64,
    /// The last group written (every group up to it, in order).
    written: u64,
    /// The last written group that holds a synced record.
    sync_pending: u64,
    /// The last group known durable.
    durable: u64,
    writing: bool,
    syncing: bool,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    failed: Option<String>,
}

impl Lanes {
    fn role(&self, ticket: Ticket) -> Role {
        let (group, sync) = match ticket {
            Ticket::Nothing => return Role::Done,
            Ticket::Written(n) => (n, false),
            Ticket::Durable(n) => (n, true),
        };
        if self.written < group {
            return if self.writing { Role::Wait } else { Role::Write };
        }
        if !sync || self.durable >= group {
            return Role::Done;
        }
        if self.sync_may_start() {
            Role::Sync
        } else {
            Role::Wait
        }
    }

    /// Whether a sync should start now: a written group needs one and
    /// none runs.
    fn sync_may_start(&self) -> bool {
        !self.syncing && self.sync_pending > self.durable
    }

    fn register(&mut self, ticket: Ticket, wake: Wake) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push(Waiter { id, ticket, wake });
        id
    }

    fn is_registered(&self, id: u64) -> bool {
        self.waiters.iter().any(|w| w.id == id)
    }

    fn unregister(&mut self, id: u64) {
        self.waiters.retain(|w| w.id != id);
    }

    /// Wakes every waiter that is done (or must see the failure), and one
    /// waiter for each idle lane that has work its group needs.
    fn wake_waiters(&mut self) {
        let mut write_taken = self.writing;
        let mut sync_taken = self.syncing;
        let failed = self.failed.is_some();
        let mut i = 0;
        while i < self.waiters.len() {
            let role = self.role(self.waiters[i].ticket);
            let takes = match role {
                _ if failed => None,
                Role::Write if !write_taken => Some(&mut write_taken),
                Role::Sync if !sync_taken => Some(&mut sync_taken),
                Role::Done => None,
                _ => {
                    i += 1;
                    continue;
                }
            };
            // Order among waiters does not matter: each is woken for what
            // it waits for, whatever its place.
            let w = self.waiters.swap_remove(i);
            // A dropped async caller cannot take a lane: the next one will.
            if w.wake.wake() {
                if let Some(taken) = takes {
                    *taken = true;
                }
            }
        }
    }
}

/// The group-commit state of one journal.
pub(crate) struct GroupCommit {
    lanes: Mutex<Lanes>,
    /// Synced records are only written, never synced (tests, benchmarks'
    /// CPU ceiling).
    sync: bool,
}

fn poisoned<T>(_: T) -> JournalError {
    JournalError::Poisoned("group-commit lock poisoned".into())
}

impl GroupCommit {
    /// A fresh group commit; `sync: false` turns syncs off.
    pub(crate) fn new(sync: bool) -> Self {
        GroupCommit {
            lanes: Mutex::new(Lanes {
                next_group: 1,
                ..Lanes::default()
            }),
            sync,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Lanes>> {
        self.lanes.lock().map_err(poisoned)
    }

    /// Queues `batch` (synced when `sync`). The caller holds the journal's
    /// state lock, so batches are queued in the order they were prepared
    /// (a later transaction's record never lands before an earlier one's).
    pub(crate) fn enqueue(&self, batch: &RawBatch, sync: bool) -> Result<Ticket> {
        crash_point("journal.append.before");
        let mut l = self.lock()?;
        if let Some(e) = &l.failed {
            return Err(JournalError::Poisoned(e.clone()));
        }
        l.queue.append(batch);
        let group = l.next_group;
        if sync && self.sync {
            l.queue_needs_sync = true;
            l.queue_owned = true;
            return Ok(Ticket::Durable(group));
        }
        // While a group is being written, a queued group with an owner is
        // certain to follow it: an unsynced record need not wait.
        if l.writing && l.queue_owned {
            return Ok(Ticket::Nothing);
        }
        l.queue_owned = true;
        Ok(Ticket::Written(group))
    }

    /// Writes the queued group as one write (the caller claimed the write
    /// lane, which is idle again on return). With `synced` (the caller
    /// claimed the sync lane too, idle again on return) the write syncs
    /// the WAL itself: one call instead of a write and a sync.
    fn write_round<'a, L: GroupLog>(
        log: &'a L,
        mut l: MutexGuard<'a, Lanes>,
        synced: bool,
    ) -> Result<MutexGuard<'a, Lanes>> {
        let empty = l.spare.take().unwrap_or_default();
        let mut records = std::mem::replace(&mut l.queue, empty);
        let needs_sync = std::mem::replace(&mut l.queue_needs_sync, false);
        l.queue_owned = false;
        let number = l.next_group;
        l.next_group += 1;
        drop(l);
        let batch = records.as_write_batch();
        let result = if synced {
            log.write_synced(batch)
        } else {
            log.write_unsynced(batch)
        };
        records.clear();
        let mut l = log.group().lock()?;
        l.spare = Some(records);
        match result {
            Ok(()) if synced => {
                l.written = number;
                l.durable = number;
            }
            Ok(()) => {
                l.written = number;
                if needs_sync {
                    l.sync_pending = number;
                }
            }
            Err(e) => Self::fail(log, &mut l, e),
        }
        l.writing = false;
        if synced {
            l.syncing = false;
        }
        Ok(l)
    }

    /// Syncs every written group (the caller claimed the sync lane, which
    /// is idle again on return).
    fn sync_round<'a, L: GroupLog>(log: &'a L, l: MutexGuard<'a, Lanes>) -> Result<MutexGuard<'a, Lanes>> {
        let target = l.written;
        drop(l);
        let result = log.sync();
        let mut l = log.group().lock()?;
        match result {
            Ok(()) => l.durable = l.durable.max(target),
            Err(e) => Self::fail(log, &mut l, e),
        }
        l.syncing = false;
        Ok(l)
    }

    fn fail<L: GroupLog>(log: &L, l: &mut Lanes, e: JournalError) {
        log.poison();
        l.failed = Some(e.to_string());
    }

    /// Waits until the ticket is done, running an idle lane it needs (one
    /// round: a blocking caller does not write other callers' groups for
    /// ever).
    pub(crate) fn wait<L: GroupLog>(log: &L, ticket: Ticket) -> Result<()> {
        if ticket == Ticket::Nothing {
            crash_point("journal.append.after");
            return Ok(());
        }
        let mut l = log.group().lock()?;
        let mut registered: Option<u64> = None;
        loop {
            if let Some(e) = &l.failed {
                let e = e.clone();
                if let Some(id) = registered {
                    l.unregister(id);
                }
                return Err(JournalError::Poisoned(e));
            }
            match l.role(ticket) {
                Role::Done => break,
                Role::Write => {
                    // A blocking caller that needs its group synced and
                    // finds the sync lane idle writes it synced, in one
                    // call, as a classic group-commit leader: the callers
                    // queueing meanwhile make the next group.
                    let synced = matches!(ticket, Ticket::Durable(_)) && !l.syncing;
                    l.writing = true;
                    l.syncing |= synced;
                    l = Self::write_round(log, l, synced)?;
                    // If the sync lane was busy, sync its own group as soon
                    // as it is idle rather than wake another caller to.
                    if l.role(ticket) == Role::Sync {
                        l.syncing = true;
                        l.wake_waiters();
                        l = Self::sync_round(log, l)?;
                    }
                    l.wake_waiters();
                }
                Role::Sync => {
                    l.syncing = true;
                    l = Self::sync_round(log, l)?;
                    l.wake_waiters();
                }
                Role::Wait => {
                    if !registered.is_some_and(|id| l.is_registered(id)) {
                        registered = Some(l.register(ticket, Wake::Thread(std::thread::current())));
                    }
                    drop(l);
                    std::thread::park();
                    l = log.group().lock()?;
                }
            }
        }
        if let Some(id) = registered {
            l.unregister(id);
        }
        drop(l);
        crash_point("journal.append.after");
        Ok(())
    }

    /// [`GroupCommit::wait`] for async callers: waits without holding a
    /// thread; an idle lane it needs runs on tokio's blocking pool for as
    /// long as the lane has work, while the caller waits like the others.
    pub(crate) async fn wait_async<L: GroupLog>(log: &Arc<L>, ticket: Ticket) -> Result<()> {
        if ticket == Ticket::Nothing {
            crash_point("journal.append.after");
            return Ok(());
        }
        loop {
            let rx = {
                let mut l = log.group().lock()?;
                if let Some(e) = &l.failed {
                    return Err(JournalError::Poisoned(e.clone()));
                }
                match l.role(ticket) {
                    Role::Done => break,
                    Role::Write => {
                        l.writing = true;
                        Self::spawn_lane(log, Role::Write);
                        continue;
                    }
                    Role::Sync => {
                        l.syncing = true;
                        Self::spawn_lane(log, Role::Sync);
                        continue;
                    }
                    Role::Wait => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        l.register(ticket, Wake::Task(tx));
                        rx
                    }
                }
            };
            // Woken (or the sender dropped): look again.
            let _ = rx.await;
        }
        crash_point("journal.append.after");
        Ok(())
    }

    /// Runs a lane the caller claimed on tokio's blocking pool, detached,
    /// for as long as it has work: the write lane while groups are queued
    /// (starting the sync lane when a written group needs it and it is
    /// idle, or, once nothing is queued, running it itself), the sync lane
    /// while written groups need a sync. A failure poisons the journal and
    /// reaches every waiter.
    fn spawn_lane<L: GroupLog>(log: &Arc<L>, lane: Role) {
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = Self::drive_lane(&log, lane) {
                tracing::error!("journal group commit: {e}");
            }
        });
    }

    fn drive_lane<L: GroupLog>(log: &Arc<L>, mut lane: Role) -> Result<()> {
        let mut l = log.group().lock()?;
        loop {
            l = match lane {
                Role::Write => Self::write_round(&**log, l, false)?,
                _ => Self::sync_round(&**log, l)?,
            };
            let healthy = l.failed.is_none();
            let more = healthy
                && match lane {
                    Role::Write => !l.queue.is_empty(),
                    _ => l.sync_may_start(),
                };
            match lane {
                Role::Write => l.writing = more,
                _ => l.syncing = more,
            }
            if lane == Role::Write && healthy && l.sync_may_start() {
                l.syncing = true;
                if !more {
                    // The write lane is done: this thread runs the sync
                    // lane itself (one thread hop less for a lone caller).
                    lane = Role::Sync;
                    l.wake_waiters();
                    continue;
                }
                Self::spawn_lane(log, Role::Sync);
            }
            l.wake_waiters();
            if !more {
                return Ok(());
            }
        }
    }

    /// The records still queued (for the journal's drop, which writes them
    /// unsynced); nothing after a failure.
    pub(crate) fn take_queue(&mut self) -> RawBatch {
        match self.lanes.get_mut() {
            Ok(l) if l.failed.is_none() => std::mem::take(&mut l.queue),
            _ => RawBatch::default(),
        }
    }

    /// Writes records at once, unsynced (the journal's drop).
    pub(crate) fn write_now<L: GroupLog>(log: &L, mut records: RawBatch) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        log.write_unsynced(records.as_write_batch())
    }
}

#[cfg(test)]
mod tests {
    //! The lanes against a log double: what reached the "disk" and when,
    //! with a sync that the test can hold on the disk.

    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Condvar;
    use std::time::Duration;

    #[derive(Default)]
    struct Disk {
        /// Keys in the order they were written.
        written: Vec<u64>,
        /// How many of `written` the last finished sync covered.
        durable: usize,
        syncs: usize,
        syncing: bool,
        /// While set, a sync waits on the disk.
        hold_syncs: bool,
    }

    struct FakeLog {
        group: GroupCommit,
        disk: Mutex<Disk>,
        changed: Condvar,
        fail_writes: AtomicBool,
        poisoned: AtomicBool,
        writes: AtomicUsize,
        synced_writes: AtomicUsize,
    }

    impl FakeLog {
        fn new() -> Arc<Self> {
            Arc::new(FakeLog {
                group: GroupCommit::new(true),
                disk: Mutex::new(Disk::default()),
                changed: Condvar::new(),
                fail_writes: AtomicBool::new(false),
                poisoned: AtomicBool::new(false),
                writes: AtomicUsize::new(0),
                synced_writes: AtomicUsize::new(0),
            })
        }

        fn disk(&self) -> MutexGuard<'_, Disk> {
            self.disk.lock().unwrap()
        }

        fn hold_syncs(&self, hold: bool) {
            self.disk().hold_syncs = hold;
            self.changed.notify_all();
        }

        /// Waits until `f` holds for the disk (at most 10 s).
        fn until(&self, f: impl Fn(&Disk) -> bool) {
            let d = self.disk();
            let (d, timeout) = self
                .changed
                .wait_timeout_while(d, Duration::from_secs(10), |d| !f(d))
                .unwrap();
            assert!(
                !timeout.timed_out(),
                "disk never reached the state: {:?}",
                d.written
            );
        }
    }

    struct Keys(Vec<u64>);

    impl rocksdb::WriteBatchIteratorCf for Keys {
        fn put_cf(&mut self, _: u32, key: &[u8], _: &[u8]) {
            self.0.push(u64::from_be_bytes(key.try_into().unwrap()));
        }
        fn delete_cf(&mut self, _: u32, _: &[u8]) {}
        fn merge_cf(&mut self, _: u32, _: &[u8], _: &[u8]) {}
    }

    impl GroupLog for FakeLog {
        fn group(&self) -> &GroupCommit {
            &self.group
        }

        fn write_unsynced(&self, batch: WriteBatch) -> Result<()> {
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err(JournalError::Task("the disk is gone".into()));
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            let mut keys = Keys(Vec::new());
            batch.iterate_cf(&mut keys);
            self.disk().written.extend(keys.0);
            self.changed.notify_all();
            Ok(())
        }

        fn write_synced(&self, batch: WriteBatch) -> Result<()> {
            self.synced_writes.fetch_add(1, Ordering::SeqCst);
            self.write_unsynced(batch)?;
            self.sync()
        }

        fn sync(&self) -> Result<()> {
            let mut d = self.disk();
            let covers = d.written.len();
            d.syncing = true;
            self.changed.notify_all();
            let mut d = self.changed.wait_while(d, |d| d.hold_syncs).unwrap();
            d.durable = d.durable.max(covers);
            d.syncs += 1;
            d.syncing = false;
            self.changed.notify_all();
            Ok(())
        }

        fn poison(&self) {
            self.poisoned.store(true, Ordering::SeqCst);
        }
    }

    fn batch(key: u64) -> RawBatch {
        let mut b = RawBatch::default();
        b.put_cf(crate::rawbatch::CfId(1), key.to_be_bytes(), b"v");
        b
    }

    /// The state lock of the journal: enqueueing in key order.
    fn enqueue(log: &FakeLog, order: &Mutex<u64>, sync: bool) -> (u64, Ticket) {
        try_enqueue(log, order, sync).unwrap()
    }

    fn try_enqueue(log: &FakeLog, order: &Mutex<u64>, sync: bool) -> Result<(u64, Ticket)> {
        let mut next = order.lock().unwrap();
        let ticket = log.group.enqueue(&batch(*next + 1), sync)?;
        *next += 1;
        Ok((*next, ticket))
    }

    /// A first synced record whose caller is inside a held sync.
    fn first_sync_held() -> (Arc<FakeLog>, Arc<Mutex<u64>>, std::thread::JoinHandle<Result<()>>) {
        let log = FakeLog::new();
        let order = Arc::new(Mutex::new(0));
        log.hold_syncs(true);
        let (_, first) = enqueue(&log, &order, true);
        // An async caller: its lanes run apart (a blocking caller would
        // write and sync in one call, holding both).
        let first_waiter = {
            let log = log.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(GroupCommit::wait_async(&log, first))
            })
        };
        log.until(|d| d.syncing);
        (log, order, first_waiter)
    }

    #[test]
    fn a_lone_blocking_caller_writes_and_syncs_in_one_call() {
        let log = FakeLog::new();
        let order = Mutex::new(0);
        let (_, ticket) = enqueue(&log, &order, true);
        GroupCommit::wait(&*log, ticket).unwrap();
        assert_eq!(log.synced_writes.load(Ordering::SeqCst), 1);
        let d = log.disk();
        assert_eq!((d.written.len(), d.durable), (1, 1));
    }

    #[test]
    fn a_group_is_written_while_the_previous_one_syncs() {
        let (log, order, first_waiter) = first_sync_held();
        // The sync of the first group is on the disk: an unsynced record
        // is written meanwhile, and its caller goes on.
        let (second_key, second) = enqueue(&log, &order, false);
        assert!(matches!(second, Ticket::Written(_)));
        GroupCommit::wait(&*log, second).unwrap();
        assert!(log.disk().written.contains(&second_key));
        assert!(log.disk().syncing, "the first sync is still held");
        // A synced record is written meanwhile too, and waits for a sync
        // that starts after it was written.
        let (third_key, third) = enqueue(&log, &order, true);
        let third_waiter = {
            let log = log.clone();
            std::thread::spawn(move || GroupCommit::wait(&*log, third))
        };
        log.until(|d| d.written.contains(&third_key));
        assert!(!first_waiter.is_finished() && !third_waiter.is_finished());
        log.hold_syncs(false);
        first_waiter.join().unwrap().unwrap();
        third_waiter.join().unwrap().unwrap();
        let d = log.disk();
        assert_eq!(d.written, vec![1, 2, 3]);
        assert_eq!(d.durable, 3);
        assert_eq!(d.syncs, 2, "the first sync covered the first group only");
    }

    #[test]
    fn an_unsynced_record_behind_an_owned_group_does_not_wait() {
        let log = FakeLog::new();
        let order = Mutex::new(0);
        log.hold_syncs(true);
        // Hold the write lane busy: the first caller writes, then syncs.
        let (_, first) = enqueue(&log, &order, true);
        {
            let mut l = log.group.lock().unwrap();
            assert_eq!(l.role(first), Role::Write);
            l.writing = true;
        }
        let (_, owner) = enqueue(&log, &order, true);
        let (_, free) = enqueue(&log, &order, false);
        assert_eq!(
            free,
            Ticket::Nothing,
            "the owner of the queued group sees it written"
        );
        log.group.lock().unwrap().writing = false;
        log.hold_syncs(false);
        GroupCommit::wait(&*log, first).unwrap();
        GroupCommit::wait(&*log, owner).unwrap();
        let d = log.disk();
        assert_eq!(d.written, vec![1, 2, 3]);
        assert_eq!(d.durable, 3);
    }

    /// When its caller goes on, a synced record is covered by a sync and
    /// an unsynced one (unless it waited for nothing) is written.
    fn check_returned(log: &FakeLog, key: u64, ticket: Ticket) {
        let d = log.disk();
        let at = d.written.iter().position(|k| *k == key);
        match ticket {
            Ticket::Durable(_) => assert!(
                at.is_some_and(|at| at < d.durable),
                "{key} returned before its sync"
            ),
            Ticket::Written(_) => assert!(at.is_some(), "{key} returned before it was written"),
            Ticket::Nothing => {}
        }
    }

    /// Every record is written once and in the order it was queued.
    fn check_disk(log: &FakeLog, total: u64) {
        let d = log.disk();
        assert_eq!(d.written, (1..=total).collect::<Vec<_>>());
    }

    #[test]
    fn many_threads_lose_nothing_and_never_return_early() {
        let log = FakeLog::new();
        let order = Arc::new(Mutex::new(0));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (log, order) = (log.clone(), order.clone());
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let sync = (i + t) % 3 != 0;
                        let (key, ticket) = enqueue(&log, &order, sync);
                        GroupCommit::wait(&*log, ticket).unwrap();
                        check_returned(&log, key, ticket);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        check_disk(&log, 16 * 200);
        assert!(log.writes.load(Ordering::SeqCst) < 16 * 200, "groups were shared");
    }

    #[test]
    fn many_tasks_lose_nothing_and_never_return_early() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let log = FakeLog::new();
        let order = Arc::new(Mutex::new(0));
        rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|t| {
                    let (log, order) = (log.clone(), order.clone());
                    tokio::spawn(async move {
                        for i in 0..50u64 {
                            let sync = (i + t) % 3 != 0;
                            let (key, ticket) = enqueue(&log, &order, sync);
                            GroupCommit::wait_async(&log, ticket).await.unwrap();
                            check_returned(&log, key, ticket);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        // The last lanes may still be winding down on the blocking pool.
        drop(rt);
        check_disk(&log, 64 * 50);
    }

    #[test]
    fn a_failed_write_reaches_every_waiter_and_refuses_more() {
        let (log, order, first_waiter) = first_sync_held();
        log.fail_writes.store(true, Ordering::SeqCst);
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (log, order) = (log.clone(), order.clone());
                std::thread::spawn(move || {
                    let (_, ticket) = try_enqueue(&log, &order, true)?;
                    GroupCommit::wait(&*log, ticket)
                })
            })
            .collect();
        for w in waiters {
            assert!(matches!(w.join().unwrap(), Err(JournalError::Poisoned(_))));
        }
        log.hold_syncs(false);
        assert!(matches!(
            first_waiter.join().unwrap(),
            Err(JournalError::Poisoned(_))
        ));
        assert!(log.poisoned.load(Ordering::SeqCst));
        assert!(matches!(
            log.group.enqueue(&batch(99), false),
            Err(JournalError::Poisoned(_))
        ));
    }
}
