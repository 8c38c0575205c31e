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
pub use fsck::{fsck, Finding, FsckReport};
pub use recover::{recover, recover_all, RecoveryReport};

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

/// Opens a state directory without recovering (for `recover --dry-run` and
/// for fsck of a broken directory).
pub fn open_without_recovery(dir: &Path) -> Result<Executor> {
    journal::crashpoint::init();
    let journal = Journal::open(dir, JournalOptions::default())?;
    Ok(Executor::new(Arc::new(journal)))
}
