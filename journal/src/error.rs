//! Typed errors of the journal.

use std::path::PathBuf;

use crate::event::TxnId;

/// Names one stored record, so that an error can say exactly which one is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordName {
    /// An event in the global log, by sequence number.
    Event { seq: u64 },
    /// The open-transaction index entry of a transaction.
    OpenTxn { txn: TxnId },
    /// A projection entry (domain, snapshot, checkpoint or image), by key.
    Projection { key: String },
    /// A history entry, by key.
    History { key: String },
    /// A metadata entry, by key.
    Meta { key: String },
}

impl std::fmt::Display for RecordName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordName::Event { seq } => write!(f, "event #{seq}"),
            RecordName::OpenTxn { txn } => write!(f, "open-transaction record of {txn}"),
            RecordName::Projection { key } => write!(f, "projection record {key:?}"),
            RecordName::History { key } => write!(f, "history record {key:?}"),
            RecordName::Meta { key } => write!(f, "metadata record {key:?}"),
        }
    }
}

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptKind {
    #[error("record is {len} bytes, shorter than its {header}-byte header")]
    Truncated { len: usize, header: usize },
    #[error("unknown record format version {found} (this build reads version {supported})")]
    UnknownVersion { found: u8, supported: u8 },
    #[error("record kind {found} where kind {expected} was expected")]
    WrongKind { found: u8, expected: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Payload(String),
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "state directory {dir} is in use by another snapjournal process (pid {pid}); nothing was changed"
    )]
    StateDirLocked { dir: PathBuf, pid: String },
    #[error("domain {domain} is busy with transaction {txn}; nothing was changed")]
    DomainBusy { domain: String, txn: TxnId },
    #[error("corrupt journal record: {record}{}: {kind}", txn.map(|t| format!(" (transaction {t})")).unwrap_or_default())]
    Corrupt {
        record: RecordName,
        txn: Option<TxnId>,
        kind: CorruptKind,
    },
    #[error("transaction {0} is not open")]
    NotOpen(TxnId),
    #[error("transaction {txn}: {what}")]
    Protocol { txn: TxnId, what: String },
    #[error("journal I/O on {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("RocksDB error in {dir}: {message}")]
    Db { dir: PathBuf, message: String },
    #[error("the journal is unusable after an earlier failed write ({0}); reopen it so recovery can run")]
    Poisoned(String),
    #[error("encoding a record failed: {0}")]
    Encode(String),
    #[error("the journal in {dir} was opened read-only; nothing was changed")]
    ReadOnly { dir: PathBuf },
    #[error("journal background task failed: {0}")]
    Task(String),
}

/// Result alias of the journal.
pub type Result<T, E = JournalError> = std::result::Result<T, E>;
