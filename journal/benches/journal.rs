//! Journal benchmarks (a bench binary with its own timing, because the
//! targets are percentiles and throughput ratios):
//!
//!     cargo bench --workspace --bench journal [-- --quick | --group-only | --tasks N | --listing-only]
//!
//! Prints every figure docs/BENCHMARKS.md records. The journal lives in
//! `$SNAPJOURNAL_BENCH_DIR` (default: a temp dir under /var/tmp, the same
//! disk as the state directory would be).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use journal::{Intent, Journal, JournalOptions, Plan, StateChange, Step};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("SNAPJOURNAL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    tempfile::Builder::new()
        .prefix("sj-bench-")
        .tempdir_in(base)
        .expect("temp dir")
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn show(name: &str, v: &mut [Duration]) {
    let p50 = pct(v, 0.50);
    let p99 = pct(v, 0.99);
    println!("{name:<48} n={:<6} p50={:>9.1?} p99={:>9.1?}", v.len(), p50, p99);
}

fn intent(d: &str) -> Intent {
    Intent::Other {
        domain: d.into(),
        what: "bench".into(),
    }
}

fn plan(d: &str) -> Plan {
    Plan {
        steps: vec![
            Step::SyncXml { domain: d.into() },
            Step::SyncXml { domain: d.into() },
        ],
        commit_index: 1,
        changes: vec![],
    }
}

fn open(dir: &std::path::Path, sync: bool) -> Journal {
    Journal::open(
        dir,
        JournalOptions {
            actor: "bench".into(),
            sync,
            read_only: false,
        },
    )
    .expect("open")
}

/// The floor: write 64 bytes and fdatasync, in a loop.
fn fdatasync_floor(n: usize) {
    let dir = bench_dir();
    let mut f = std::fs::File::create(dir.path().join("floor")).unwrap();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&[7u8; 64]).unwrap();
        f.sync_data().unwrap();
        v.push(t.elapsed());
    }
    show("bare write+fdatasync (the floor)", &mut v);
}

/// One synced append: the intent record of a transaction.
fn synced_append(n: usize) {
    let dir = bench_dir();
    let j = open(dir.path(), true);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let d = format!("d{i}");
        let t = Instant::now();
        j.begin(intent(&d), plan(&d), None).unwrap();
        v.push(t.elapsed());
    }
    show("one synced append (TxnBegun)", &mut v);
}

fn one_txn(j: &Journal, d: &str) {
    let t = j.begin(intent(d), plan(d), None).unwrap();
    j.step_done(t, 0).unwrap();
    j.commit(
        t,
        vec![StateChange::CurrentSnapshotSet {
            domain: d.into(),
            snapshot: None,
        }],
    )
    .unwrap();
    j.step_done(t, 1).unwrap();
    j.finish(t).unwrap();
}

/// A whole transaction: begin, two steps, commit, finish.
fn whole_txn(n: usize) {
    let dir = bench_dir();
    let j = open(dir.path(), true);
    let before = j.events().unwrap().len();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one_txn(&j, "d");
        v.push(t.elapsed());
    }
    let events = j.events().unwrap();
    let synced = events[before..].iter().filter(|e| e.event.is_synced()).count();
    show("whole transaction (begin, 2 steps, commit, finish)", &mut v);
    println!("  synced writes per transaction: {}", synced as f64 / n as f64);
}

/// Group commit: `streams` threads, each running transactions on its own
/// domain for `secs`.
fn group_commit(streams: usize, secs: f64, sync: bool) -> f64 {
    let dir = bench_dir();
    let j = Arc::new(open(dir.path(), sync));
    let done = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(streams + 1));
    let deadline = Duration::from_secs_f64(secs);
    let mut hs = Vec::new();
    for s in 0..streams {
        let (j, done, barrier) = (j.clone(), done.clone(), barrier.clone());
        hs.push(std::thread::spawn(move || {
            let d = format!("stream{s}");
            barrier.wait();
            let t = Instant::now();
            while t.elapsed() < deadline {
                one_txn(&j, &d);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    barrier.wait();
    let t = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    println!(
        "group commit: {streams:>2} streams: {rate:>9.0} transactions/s{}",
        if sync { "" } else { " (fsync off: the CPU ceiling)" }
    );
    rate
}

/// Group commit through the async API (how an agent runs many domains):
/// `streams` tasks on a two-thread tokio runtime (this machine's cores),
/// each running transactions on its own domain for `secs`.
fn group_commit_async(streams: usize, secs: f64) -> f64 {
    let dir = bench_dir();
    let j = journal::AsyncJournal::new(Arc::new(open(dir.path(), true)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let deadline = Duration::from_secs_f64(secs);
    let (rate, _) = rt.block_on(async move {
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|s| {
                let (j, done) = (j.clone(), done.clone());
                tokio::spawn(async move {
                    let d = format!("stream{s}");
                    while t.elapsed() < deadline {
                        let txn = j.begin(intent(&d), plan(&d), None).await.unwrap();
                        j.step_done(txn, 0).await.unwrap();
                        let change = StateChange::CurrentSnapshotSet {
                            domain: d.clone(),
                            snapshot: None,
                        };
                        j.commit(txn, vec![change]).await.unwrap();
                        j.step_done(txn, 1).await.unwrap();
                        j.finish(txn).await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        (
            done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64(),
            (),
        )
    });
    println!("group commit, async API: {streams:>2} tasks: {rate:>9.0} transactions/s");
    rate
}

/// Listing open transactions with `finished` closed and `open` open.
fn listing(finished: usize, open_n: usize) {
    let dir = bench_dir();
    {
        let j = open(dir.path(), false);
        let t = Instant::now();
        for i in 0..finished {
            one_txn(&j, &format!("d{}", i % 1000));
        }
        for i in 0..open_n {
            let d = format!("open{i}");
            j.begin(intent(&d), plan(&d), None).unwrap();
        }
        println!(
            "  setup: {finished} finished + {open_n} open transactions in {:.1?}",
            t.elapsed()
        );
    }
    let t = Instant::now();
    let j = open(dir.path(), true);
    println!("open the journal (loads the open index): {:>9.1?}", t.elapsed());
    let mut v = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let l = j.open_transactions().unwrap();
        v.push(t.elapsed());
        assert_eq!(l.len(), open_n);
    }
    show("list open transactions (index in memory)", &mut v);
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = j.stored_open_transactions().unwrap();
        v.push(t.elapsed());
        assert_eq!(l.len(), open_n);
    }
    show("list open transactions (read from RocksDB)", &mut v);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--group-only`: the group-commit figures alone (for profiling).
    let group_only = std::env::args().any(|a| a == "--group-only");
    let n = if quick { 100 } else { 1000 };
    // `--tasks N`: only the async group commit with N tasks (profiling).
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = args
        .iter()
        .position(|a| a == "--tasks")
        .and_then(|i| args.get(i + 1))
    {
        group_commit_async(n.parse().unwrap_or(64), 3.0);
        return;
    }
    if args.iter().any(|a| a == "--listing-only") {
        listing(if quick { 20_000 } else { 1_000_000 }, 1000);
        return;
    }
    if group_only {
        let secs = if quick { 1.0 } else { 3.0 };
        let one = group_commit_async(1, secs);
        group_commit_async(8, secs);
        let many = group_commit_async(64, secs);
        println!("  async: 64 tasks / 1 task = {:.1}x", many / one);
        let one = group_commit(1, secs, true);
        let many = group_commit(64, secs, true);
        println!("  threads: 64 streams / 1 stream = {:.1}x", many / one);
        return;
    }
    fdatasync_floor(n);
    synced_append(n);
    whole_txn(n / 2);
    let secs = if quick { 1.0 } else { 3.0 };
    let one = group_commit(1, secs, true);
    group_commit(8, secs, true);
    let many = group_commit(64, secs, true);
    group_commit(1, secs, false);
    group_commit(64, secs, false);
    println!("  threads: 64 streams / 1 stream = {:.1}x", many / one);
    let one_task = group_commit_async(1, secs);
    group_commit_async(8, secs);
    let many_tasks = group_commit_async(64, secs);
    println!(
        "  async API: 64 tasks / 1 task = {:.1}x; 64 tasks / 1 thread stream = {:.1}x",
        many_tasks / one_task,
        many_tasks / one
    );
    listing(if quick { 20_000 } else { 1_000_000 }, 1000);
}
