//! Named crash points for the chaos suite.
//!
//! A crash point is a named place where the world or the journal changes.
//! Unarmed (the normal case) a crash point costs one relaxed atomic load.
//! Armed through the environment of a child process, it ends that process
//! the way `kill -9` would: `SIGKILL` to itself, no destructors, no flushing.
//!
//! - `SNAPJOURNAL_CRASH_TRACE=FILE`: append the name of every crash point
//!   passed to FILE, one per line (the traced run of an enumeration).
//! - `SNAPJOURNAL_CRASH_AT=N`: die at the N-th crash point passed (1-based).
//! - `SNAPJOURNAL_CRASH_NAME=NAME`: only count crash points called NAME.
//! - `SNAPJOURNAL_PAUSE_AT=NAME:MS`: sleep MS milliseconds at every crash
//!   point called NAME (tests that need an operation to be running, such
//!   as a busy refusal of a server, hold it there).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

struct Armed {
    trace: Option<Mutex<std::fs::File>>,
    crash_at: Option<u64>,
    only: Option<String>,
    pause: Option<(String, u64)>,
}

static ARMED_FLAG: AtomicBool = AtomicBool::new(false);
static INIT: OnceLock<Option<Armed>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> &'static Option<Armed> {
    INIT.get_or_init(|| {
        let trace = std::env::var_os("SNAPJOURNAL_CRASH_TRACE").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        });
        let crash_at = std::env::var("SNAPJOURNAL_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok());
        let only = std::env::var("SNAPJOURNAL_CRASH_NAME").ok();
        let pause = std::env::var("SNAPJOURNAL_PAUSE_AT").ok().and_then(|v| {
            let (name, ms) = v.rsplit_once(':')?;
            Some((name.to_string(), ms.parse().ok()?))
        });
        if trace.is_none() && crash_at.is_none() && pause.is_none() {
            return None;
        }
        ARMED_FLAG.store(true, Ordering::Relaxed);
        Some(Armed {
            trace,
            crash_at,
            only,
            pause,
        })
    })
}

/// Reads the environment once; call early in `main` so that crash points
/// on hot paths only test a flag.
pub fn init() {
    let _ = armed();
}

/// A crash point called `name`.
#[inline]
pub fn crash_point(name: &str) {
    if !ARMED_FLAG.load(Ordering::Relaxed) && INIT.get().is_some() {
        return;
    }
    slow_path(name);
}

#[cold]
fn slow_path(name: &str) {
    let Some(a) = armed() else { return };
    if let Some((at, ms)) = &a.pause {
        if at == name {
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
    if let Some(only) = &a.only {
        if only != name {
            return;
        }
    }
    let n = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(t) = &a.trace {
        if let Ok(mut f) = t.lock() {
            let _ = writeln!(f, "{n}\t{name}");
        }
    }
    if a.crash_at == Some(n) {
        // SAFETY: kill(2) on our own pid; the process ends here.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // The signal ends every thread; this one waits for it rather than
        // going on (or aborting) in the moment before it lands.
        for _ in 0..1000 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::process::abort();
    }
}
