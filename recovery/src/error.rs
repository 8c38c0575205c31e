//! Typed errors of recovery and fsck.

use journal::TxnId;

/// Errors of recovery and fsck.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Exec(#[from] executor::ExecError),
    #[error("transaction {txn}: probing \"{step}\" failed: {cause}; nothing was changed")]
    Probe { txn: TxnId, step: String, cause: String },
    #[error("recording domains whose QEMU is gone as stopped failed: {0}; `snapjournal recover` retries it")]
    Reap(String),
}

/// Result alias of recovery.
pub type Result<T, E = RecoveryError> = std::result::Result<T, E>;
