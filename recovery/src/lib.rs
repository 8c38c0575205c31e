//! The snapjournal recovery engine and fsck.
//!
//! [`open`] is how a process starts on a state directory: it opens the
//! journal and recovers every open transaction before anything else runs.

pub mod decide;
pub mod error;
pub mod fsck;
pub mod recover;

use std::path::Path;
use std::sync::Arc;

use executor::Executor;
use journal::{Journal, JournalOptions};

pub use decide::{decide, Decision, Direction, Probe};
pub use error::{RecoveryError, Result};
pub use fsck::{fsck, Finding, FindingKind, FsckReport};
pub use recover::{recover, recover_all, recover_txn, RecoveryReport, TxnOutcome};

/// Opens a state directory and recovers every open transaction, returning
/// the executor and what recovery did.
pub fn open(dir: &Path) -> Result<(Executor, RecoveryReport)> {
    let exec = open_without_recovery(dir)?;
    let mut report = recover(&exec, false)?;
    // Another command of a looping agent may follow: only sessions idle
    // for long are abandoned.
    report.sessions_removed = exec.reap_sessions(false)?;
    Ok((exec, report))
}

/// Write-ahead log above which a reading command opens read-write: a
/// read-only open would replay it on every run, a read-write open moves it
/// into table files once.
const READ_ONLY_LOG_LIMIT: u64 = 1 << 20;

/// Opens a state directory for a command that only reads. When nothing
/// needs recovering (no open transaction, no running domain whose QEMU is
/// gone) and little log is waiting to be replayed, the journal is opened
/// read-only: nothing is written and the open costs a fraction. Otherwise,
/// and for a state directory that does not exist yet, this is [`open`],
/// with its recovery.
pub fn open_for_reading(dir: &Path) -> Result<(Executor, RecoveryReport)> {
    journal::crashpoint::init();
    if Journal::log_bytes(dir) > READ_ONLY_LOG_LIMIT {
        return open(dir);
    }
    let options = JournalOptions {
        read_only: true,
        ..JournalOptions::default()
    };
    // A failed read-only open (no journal yet, the directory locked, a
    // damaged journal) is left to the normal open, which reports it.
    if let Ok(journal) = Journal::open(dir, options) {
        let exec = Executor::new(Arc::new(journal));
        if exec.journal().open_transactions()?.is_empty()
            && recover::gone_domains(&exec)?.is_empty()
            && executor::resume::ResumeNote::all(dir).is_empty()
        {
            let sessions_removed = exec.reap_sessions(false)?;
            let report = RecoveryReport {
                dry_run: false,
                transactions: Vec::new(),
                gone: Vec::new(),
                sessions_removed,
                resumed: Vec::new(),
            };
            return Ok((exec, report));
        }
    }
    open(dir)
}

/// Opens a state directory without recovering (for `recover --dry-run` and
/// for fsck of a broken directory).
pub fn open_without_recovery(dir: &Path) -> Result<Executor> {
    journal::crashpoint::init();
    let journal = Journal::open(dir, JournalOptions::default())?;
    Ok(Executor::new(Arc::new(journal)))
}
