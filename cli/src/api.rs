//! The local API: what a client sends to `snapjournal serve` and what it
//! gets back, as JSON lines over the server's unix socket. docs/API.md is
//! the same contract for people and for clients in other languages.
//!
//! One request per line ([`Request`]); the server answers with frames, one
//! per line ([`Frame`]), the last of which is [`Frame::Done`]. A connection
//! may carry any number of requests, one after another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::commands::Cmd;

/// The protocol version this build speaks (`v` of every request).
pub const PROTOCOL_VERSION: u32 = 1;

/// The socket's name in the state directory.
pub const SOCKET_NAME: &str = "snapjournal.sock";

/// The longest request line accepted (documents travel inside it).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// One request: a command, as the CLI's verbs name it, and the documents it
/// reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The command, e.g. `{"snapshot": {"create": {"domain": "a", "name": "s1"}}}`.
    pub cmd: Cmd,
    /// Output as the CLI prints it with `--json` (the reply's `result` is
    /// there either way).
    #[serde(default)]
    pub json: bool,
    /// The documents the command reads, by the path it names them with
    /// (the client reads them; the server never opens a client's path).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Reply as soon as the operation's transaction has begun (`done`
    /// with `result: {"txn", "what", "detached": true}`); the operation
    /// runs on (`journal wait` follows it). A request that begins no
    /// transaction is answered as usual.
    #[serde(default)]
    pub detach: bool,
}

/// What the server sends back, one JSON object per line, tagged by `event`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Frame {
    /// Text the CLI would print on stdout.
    Stdout { text: String },
    /// Text the CLI would print on stderr.
    Stderr { text: String },
    /// A transaction began: its id and what it does. A client that loses
    /// the server after this frame knows which transaction recovery will
    /// finish.
    Began { txn: String, what: String },
    /// A block job's progress (`job`, `disk`, `kind`, `current`, `total`,
    /// `status`).
    Progress { progress: Value },
    /// The request is finished: the CLI's exit code, the result (the JSON
    /// the CLI prints with `--json`) or the error.
    Done {
        code: i32,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<ApiError>,
    },
}

/// What kind of failure a request met; a client matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request was refused while planning (a name that does not exist,
    /// a state that does not allow it, bad arguments): nothing was changed.
    Invalid,
    /// Another request holds the domain (or the whole state directory):
    /// nothing was changed; `txn` names what runs when known.
    Busy,
    /// A step failed and every completed step was undone: nothing was changed.
    RolledBack,
    /// The transaction stays open; recovery will finish it.
    Incomplete,
    /// A document was refused: nothing was changed.
    Xml,
    /// A qemu-img call failed while planning: nothing was changed.
    Image,
    /// A running QEMU refused a command or a block job failed.
    Live,
    /// The journal could not be read or written.
    Journal,
    /// The peer may not do this (a read-only client asked for a change).
    Forbidden,
    /// The request could not be read: malformed, too large, an unknown
    /// version or command, a document not sent.
    BadRequest,
    /// The server is stopping and takes no new requests.
    Stopping,
    /// Anything else.
    Other,
}

/// A typed error: kind, message, where, and whether anything changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// The message the CLI prints.
    pub message: String,
    #[serde(default)]
    pub domain: Option<String>,
    /// The transaction concerned (`txn-N`), when there is one.
    #[serde(default)]
    pub txn: Option<String>,
    /// `Some(false)`: nothing was changed; `Some(true)`: something changed
    /// and recovery finishes it; `None`: not known.
    #[serde(default)]
    pub changed: Option<bool>,
    /// Why planning refused the request (`kind: invalid` only): a stable
    /// name a client can match on — `not-defined`, `no-such-snapshot`,
    /// `no-such-checkpoint`, `snapshot-exists`, `checkpoint-exists`,
    /// `not-running`, `already-running`, `chain-differs`, `refused`.
    #[serde(default)]
    pub reason: Option<String>,
}

impl ApiError {
    /// An error of `kind` with nothing changed.
    pub fn unchanged(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            domain: None,
            txn: None,
            changed: Some(false),
            reason: None,
        }
    }

    /// Classifies an error a command returned.
    pub fn classify(e: &anyhow::Error, domain: Option<&str>) -> ApiError {
        use executor::ExecError;
        use journal::JournalError;
        let mut out = ApiError {
            kind: ErrorKind::Other,
            message: format!("{e:#}"),
            domain: domain.map(str::to_string),
            txn: None,
            changed: None,
            reason: None,
        };
        let journal_kind = |j: &JournalError, out: &mut ApiError| match j {
            JournalError::DomainBusy { domain, txn } => {
                out.kind = ErrorKind::Busy;
                out.domain = Some(domain.clone());
                out.txn = Some(txn.to_string());
                out.changed = Some(false);
            }
            JournalError::StateDirLocked { .. } => {
                out.kind = ErrorKind::Busy;
                out.changed = Some(false);
            }
            _ => out.kind = ErrorKind::Journal,
        };
        if let Some(x) = e.downcast_ref::<ExecError>() {
            match x {
                ExecError::Invalid(p) => {
                    out.reason = Some(p.kind().to_string());
                    out.kind = ErrorKind::Invalid;
                    out.changed = Some(false);
                }
                ExecError::RolledBack { txn, .. } => {
                    out.kind = ErrorKind::RolledBack;
                    out.txn = Some(txn.to_string());
                    out.changed = Some(false);
                }
                ExecError::UndoFailed { txn, .. } | ExecError::ForwardIncomplete { txn, .. } => {
                    out.kind = ErrorKind::Incomplete;
                    out.txn = Some(txn.to_string());
                    out.changed = Some(true);
                }
                ExecError::Journal(j) => journal_kind(j, &mut out),
                ExecError::Image(_) => {
                    out.kind = ErrorKind::Image;
                    out.changed = Some(false);
                }
                ExecError::Xml(_) => {
                    out.kind = ErrorKind::Xml;
                    out.changed = Some(false);
                }
                ExecError::Live(_) => out.kind = ErrorKind::Live,
                ExecError::Metadata { .. } => out.kind = ErrorKind::Other,
            }
        } else if let Some(j) = e.downcast_ref::<JournalError>() {
            journal_kind(j, &mut out);
        } else if e.is::<recovery::RecoveryError>() {
            // Recovery's own errors stay `other`, whatever their wording.
        } else if out.message.ends_with("nothing was changed") || out.message.contains("is not defined") {
            // The CLI's own refusals (anyhow messages) change nothing.
            out.kind = ErrorKind::Invalid;
            out.changed = Some(false);
        }
        out
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON a Python client writes parses, with every optional field
    /// left out.
    #[test]
    fn minimal_requests_parse() {
        let r: Request =
            serde_json::from_str(r#"{"v":1,"cmd":{"snapshot":{"create":{"domain":"a","name":"s1"}}}}"#)
                .unwrap();
        assert!(matches!(r.cmd, Cmd::Snapshot(_)));
        let r: Request =
            serde_json::from_str(r#"{"v":1,"cmd":{"snapshot":{"list":{"domain":"a"}}},"json":true}"#)
                .unwrap();
        assert!(r.json);
        let r: Request = serde_json::from_str(r#"{"v":1,"cmd":{"domain":"list"}}"#).unwrap();
        assert!(matches!(r.cmd, Cmd::Domain(_)));
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"cmd":{"snapshot":{"explode":{}}}}"#).is_err());
    }

    /// Frames are tagged by `event`, in kebab case.
    #[test]
    fn frames_are_tagged() {
        let f = Frame::Done {
            code: 1,
            result: None,
            error: Some(ApiError::unchanged(ErrorKind::BadRequest, "x")),
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["event"], "done");
        assert_eq!(v["error"]["kind"], "bad-request");
        assert_eq!(v["error"]["changed"], false);
    }
}
