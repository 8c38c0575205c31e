//! Typed errors of the executor.

use journal::{JournalError, TxnId};

/// Errors of the executor. Each says what failed, where, and in what state
/// things were left.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request was refused while planning: nothing was written.
    #[error("{0}; nothing was changed")]
    Invalid(String),
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
