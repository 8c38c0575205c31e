//! Typed errors of the executor.

use journal::{JournalError, TxnId};

/// Errors of the executor. Each says what failed, where, and in what state
/// things were left.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request was refused while planning: nothing was written.
    #[error("{0}; nothing was changed")]
    Invalid(PlanError),
    /// A step failed before the commit point and every completed step was
    /// undone.
    #[error(
        "transaction {txn} ({what}) failed: {cause}; the completed steps were undone and nothing was changed"
    )]
    RolledBack { txn: TxnId, what: String, cause: String },
    /// A step failed before the commit point and undo failed too: the
    /// transaction stays open for recovery.
    #[error("transaction {txn} ({what}) failed: {cause}; undoing it failed too ({undo}); the transaction stays open and `snapjournal recover` will finish it")]
    UndoFailed {
        txn: TxnId,
        what: String,
        cause: String,
        undo: String,
    },
    /// A step after the commit point failed: the operation is committed and
    /// recovery will finish it.
    #[error("transaction {txn} ({what}) is committed but a later step failed: {cause}; `snapjournal recover` will finish it")]
    ForwardIncomplete { txn: TxnId, what: String, cause: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A qemu-img call made while planning failed. (Not a `#[source]`:
    /// the message already holds it, and a chain printer would repeat it.)
    #[error("{0}; nothing was changed")]
    Image(ImageError),
    /// An XML document was refused.
    #[error("{0}; nothing was changed")]
    Xml(XmlError),
    /// A running QEMU refused a command, did not answer, or a block job
    /// failed.
    #[error("live operation: {0}")]
    Live(String),
    #[error("metadata file {path}: {message}")]
    Metadata { path: String, message: String },
}

impl ExecError {
    /// A refusal while planning that has no variant of its own (the
    /// message says what and where).
    pub fn refused(message: impl Into<String>) -> ExecError {
        ExecError::Invalid(PlanError::Refused(message.into()))
    }

    /// The planning refusal, when this is one.
    pub fn plan_error(&self) -> Option<&PlanError> {
        match self {
            ExecError::Invalid(p) => Some(p),
            _ => None,
        }
    }
}

/// Why a request was refused while planning (nothing was written). A
/// client matches on [`PlanError::kind`] (`--json` reports it as
/// `reason`); the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("domain {domain} is not defined")]
    DomainNotDefined { domain: String },
    #[error("domain {domain} has no snapshot called {snapshot}")]
    NoSuchSnapshot { domain: String, snapshot: String },
    #[error("domain {domain} has no checkpoint called {checkpoint}")]
    NoSuchCheckpoint { domain: String, checkpoint: String },
    #[error("domain {domain} already has a snapshot called {snapshot}")]
    SnapshotExists { domain: String, snapshot: String },
    #[error("domain {domain} already has a checkpoint called {checkpoint}")]
    CheckpointExists { domain: String, checkpoint: String },
    #[error("domain {domain} is not running")]
    NotRunning { domain: String },
    #[error("domain {domain} is already running{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    AlreadyRunning { domain: String, detail: Option<String> },
    /// The chain the world shows (`seen_by`: the image headers on disk, or
    /// QEMU) is not the journal's: fsck must look first.
    #[error("domain {domain}, disk {disk}: {} ({}) differs from the journal's ({}); run `snapjournal fsck`", seen_by.describe(), found.join(" -> "), journal.join(" -> "))]
    ChainDiffers {
        domain: String,
        disk: String,
        seen_by: ChainSource,
        found: Vec<String>,
        journal: Vec<String>,
    },
    /// Any other refusal: bad arguments, a state that does not allow it.
    #[error("{0}")]
    Refused(String),
}

/// Who shows a chain that differs from the journal's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainSource {
    /// The image headers on disk.
    Disk,
    /// The running QEMU's block graph.
    Qemu,
}

impl ChainSource {
    fn describe(self) -> &'static str {
        match self {
            ChainSource::Disk => "the image chain on disk",
            ChainSource::Qemu => "QEMU's chain",
        }
    }
}

impl PlanError {
    /// A stable name of the refusal for clients (`not-defined`,
    /// `no-such-snapshot`, …, `refused`).
    pub fn kind(&self) -> &'static str {
        match self {
            PlanError::DomainNotDefined { .. } => "not-defined",
            PlanError::NoSuchSnapshot { .. } => "no-such-snapshot",
            PlanError::NoSuchCheckpoint { .. } => "no-such-checkpoint",
            PlanError::SnapshotExists { .. } => "snapshot-exists",
            PlanError::CheckpointExists { .. } => "checkpoint-exists",
            PlanError::NotRunning { .. } => "not-running",
            PlanError::AlreadyRunning { .. } => "already-running",
            PlanError::ChainDiffers { .. } => "chain-differs",
            PlanError::Refused(_) => "refused",
        }
    }
}

impl From<PlanError> for ExecError {
    fn from(e: PlanError) -> Self {
        ExecError::Invalid(e)
    }
}

impl From<ImageError> for ExecError {
    fn from(e: ImageError) -> Self {
        ExecError::Image(e)
    }
}

impl From<XmlError> for ExecError {
    fn from(e: XmlError) -> Self {
        ExecError::Xml(e)
    }
}

/// A qemu-img call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("qemu-img {action} on {path}: {message}")]
pub struct ImageError {
    pub action: String,
    pub path: String,
    pub message: String,
}

/// Malformed or unacceptable XML.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {message}")]
pub struct XmlError {
    /// Which document (a file name or a kind of document).
    pub what: String,
    pub message: String,
}

/// Result alias of the executor.
pub type Result<T, E = ExecError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A typed refusal reads as the message it replaced and names its kind.
    #[test]
    fn plan_errors_say_what_and_where_and_name_their_kind() {
        let e = ExecError::from(PlanError::ChainDiffers {
            domain: "vm".into(),
            disk: "vda".into(),
            seen_by: ChainSource::Disk,
            found: vec!["/i/b".into(), "/i/a".into()],
            journal: vec!["/i/c".into(), "/i/a".into()],
        });
        assert_eq!(
            e.to_string(),
            "domain vm, disk vda: the image chain on disk (/i/b -> /i/a) differs from the journal's (/i/c -> /i/a); run `snapjournal fsck`; nothing was changed"
        );
        assert_eq!(e.plan_error().map(PlanError::kind), Some("chain-differs"));
        let e = ExecError::from(PlanError::AlreadyRunning {
            domain: "vm".into(),
            detail: Some("QMP socket /run/q".into()),
        });
        assert_eq!(
            e.to_string(),
            "domain vm is already running (QMP socket /run/q); nothing was changed"
        );
        assert_eq!(
            ExecError::refused("bad").plan_error().map(PlanError::kind),
            Some("refused")
        );
        assert!(ExecError::Live("x".into()).plan_error().is_none());
    }

    /// An error printed with its chain (`{:#}`, as the CLI does) says each
    /// thing once.
    #[test]
    fn chained_messages_are_not_repeated() {
        let e = anyhow::Error::from(ExecError::from(XmlError {
            what: "s1.xml".into(),
            message: "malformed".into(),
        }));
        assert_eq!(format!("{e:#}"), "s1.xml: malformed; nothing was changed");
        let e = anyhow::Error::from(ExecError::from(ImageError {
            action: "info".into(),
            path: "/i/a".into(),
            message: "gone".into(),
        }));
        assert_eq!(
            format!("{e:#}"),
            "qemu-img info on /i/a: gone; nothing was changed"
        );
    }
}
