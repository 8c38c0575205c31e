//! The snapjournal journal: an event-sourced transaction log on RocksDB.
//!
//! Every snapshot operation is a transaction whose lifecycle
//! ([`Event`]) is appended here before the world changes; committing a
//! transaction applies its [`StateChange`]s to the state projection
//! ([`State`]) in the same atomic write. See docs/ARCHITECTURE.md.

pub mod asyncapi;
pub mod codec;
pub mod crashpoint;
pub mod error;
pub mod event;
mod group;
pub mod lock;
pub mod plan;
mod rawbatch;
pub mod state;
pub mod store;

pub use asyncapi::AsyncJournal;
pub use error::{CorruptKind, JournalError, RecordName, Result};
pub use event::{Event, EventRecord, Intent, StateChange, TxnId};
pub use plan::{BitmapAction, BitmapOp, LibvirtMerge, LiveMerge, LiveSwitch, Plan, Step};
pub use state::{
    ChainImage, CheckpointRecord, DiskSnapshotMode, DiskState, DomainCore, DomainState, ImageRecord, Map,
    Runtime, SnapshotDisk, SnapshotRecord, State,
};
pub use store::{CompactionReport, HistoryEntry, Journal, JournalOptions, OpenTxn, Outcome, TxnPhase};
