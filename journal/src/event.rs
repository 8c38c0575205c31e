//! Events: the transaction lifecycle and the state changes a commit applies.

use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::state::{ChainImage, CheckpointRecord, DomainCore, ImageRecord, Runtime, SnapshotRecord};

/// A transaction id, allocated in increasing order by the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId(pub u64);

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "txn-{}", self.0)
    }
}

impl std::str::FromStr for TxnId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("txn-").unwrap_or(s);
        digits
            .parse::<u64>()
            .map(TxnId)
            .map_err(|_| format!("{s:?} is not a transaction id (expected txn-N)"))
    }
}

/// What a transaction was asked to do, in the caller's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    DomainDefine {
        domain: String,
    },
    DomainUndefine {
        domain: String,
    },
    SnapshotCreate {
        domain: String,
        snapshot: String,
    },
    SnapshotRevert {
        domain: String,
        snapshot: String,
    },
    SnapshotDelete {
        domain: String,
        snapshot: String,
        children: bool,
        metadata_only: bool,
    },
    /// A free-form intent, for tests and tools built on the journal.
    Other {
        domain: String,
        what: String,
    },
    /// Start QEMU for a defined domain.
    DomainStart {
        domain: String,
        paused: bool,
    },
    /// Stop the domain's QEMU (`crashed`: it was found gone and the state
    /// catches up).
    DomainStop {
        domain: String,
        crashed: bool,
    },
    /// Record a QEMU someone else started as the domain's runtime.
    DomainAttach {
        domain: String,
        qmp_socket: String,
    },
    /// Define many snapshots from their full XML, all or nothing.
    SnapshotRedefine {
        domain: String,
        count: u32,
    },
    /// Take a checkpoint (a persistent dirty bitmap per disk).
    CheckpointCreate {
        domain: String,
        checkpoint: String,
    },
    /// Delete a checkpoint, merging its bitmaps into its parent's.
    CheckpointDelete {
        domain: String,
        checkpoint: String,
        metadata_only: bool,
    },
    /// Define many checkpoints from their full XML, all or nothing.
    CheckpointRedefine {
        domain: String,
        count: u32,
    },
    /// A redefine session's snapshots and checkpoints, all or nothing.
    SessionRedefine {
        domain: String,
        snapshots: u32,
        checkpoints: u32,
    },
    /// Take over a domain libvirt runs: its definition, snapshots and
    /// checkpoints recorded, libvirt's overlays made the journal's.
    DomainAdopt {
        domain: String,
        uri: String,
        snapshots: u32,
        checkpoints: u32,
    },
    /// Forget the domain's QEMU without stopping it (`domain detach`).
    DomainDetach {
        domain: String,
    },
    /// `fsck --repair`: remove images the journal created that nothing
    /// references any more.
    OrphanImagesRemove {
        domain: String,
        count: u32,
    },
}

impl Intent {
    /// The domain the intent acts on.
    pub fn domain(&self) -> &str {
        match self {
            Intent::DomainDefine { domain }
            | Intent::DomainUndefine { domain }
            | Intent::SnapshotCreate { domain, .. }
            | Intent::SnapshotRevert { domain, .. }
            | Intent::SnapshotDelete { domain, .. }
            | Intent::Other { domain, .. }
            | Intent::DomainStart { domain, .. }
            | Intent::DomainStop { domain, .. }
            | Intent::DomainAttach { domain, .. }
            | Intent::SnapshotRedefine { domain, .. }
            | Intent::CheckpointCreate { domain, .. }
            | Intent::CheckpointDelete { domain, .. }
            | Intent::CheckpointRedefine { domain, .. }
            | Intent::SessionRedefine { domain, .. }
            | Intent::DomainAdopt { domain, .. }
            | Intent::DomainDetach { domain }
            | Intent::OrphanImagesRemove { domain, .. } => domain,
        }
    }

    /// One line a person can read.
    pub fn describe(&self) -> String {
        match self {
            Intent::DomainDefine { domain } => format!("define domain {domain}"),
            Intent::DomainUndefine { domain } => format!("undefine domain {domain}"),
            Intent::SnapshotCreate { domain, snapshot } => {
                format!("create snapshot {snapshot} of domain {domain}")
            }
            Intent::SnapshotRevert { domain, snapshot } => {
                format!("revert domain {domain} to snapshot {snapshot}")
            }
            Intent::SnapshotDelete {
                domain,
                snapshot,
                children,
                metadata_only,
            } => format!(
                "delete snapshot {snapshot}{}{} of domain {domain}",
                if *children { " and its children" } else { "" },
                if *metadata_only { " (metadata only)" } else { "" }
            ),
            Intent::Other { domain, what } => format!("{what} on domain {domain}"),
            Intent::DomainDetach { domain } => format!("detach domain {domain} from its QEMU"),
            Intent::OrphanImagesRemove { domain, count } => {
                format!("remove {count} orphan image(s) of domain {domain} (fsck --repair)")
            }
            Intent::DomainStart { domain, paused } => {
                format!("start domain {domain}{}", if *paused { " paused" } else { "" })
            }
            Intent::DomainStop {
                domain,
                crashed: false,
            } => format!("stop domain {domain}"),
            Intent::DomainStop {
                domain,
                crashed: true,
            } => {
                format!("record that the QEMU of domain {domain} is gone")
            }
            Intent::SnapshotRedefine { domain, count } => {
                format!("redefine {count} snapshot(s) of domain {domain}")
            }
            Intent::DomainAttach { domain, qmp_socket } => {
                format!("attach domain {domain} to the QEMU at {qmp_socket}")
            }
            Intent::CheckpointCreate { domain, checkpoint } => {
                format!("create checkpoint {checkpoint} of domain {domain}")
            }
            Intent::CheckpointDelete {
                domain,
                checkpoint,
                metadata_only,
            } => format!(
                "delete checkpoint {checkpoint}{} of domain {domain}",
                if *metadata_only { " (metadata only)" } else { "" }
            ),
            Intent::CheckpointRedefine { domain, count } => {
                format!("redefine {count} checkpoint(s) of domain {domain}")
            }
            Intent::SessionRedefine {
                domain,
                snapshots,
                checkpoints,
            } => format!(
                "redefine {snapshots} snapshot(s) and {checkpoints} checkpoint(s) of domain {domain} (session)"
            ),
            Intent::DomainAdopt {
                domain,
                uri,
                snapshots,
                checkpoints,
            } => format!(
                "adopt domain {domain} from libvirt at {uri} with {snapshots} snapshot(s) and {checkpoints} checkpoint(s)"
            ),
        }
    }
}

/// A change to the state projection. Commits carry a list of them, applied
/// atomically with the `Committed` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateChange {
    /// A domain was defined (or its definition replaced as a whole).
    DomainDefined { core: DomainCore },
    /// A domain and all its snapshots and checkpoints were forgotten.
    DomainUndefined { domain: String },
    /// The domain definition XML changed.
    DomainXmlSet { domain: String, xml: String },
    /// A disk's backing chain changed (or the disk was added).
    DiskChainChanged {
        domain: String,
        disk: String,
        chain: Vec<ChainImage>,
    },
    /// A disk left the domain definition.
    DiskRemoved { domain: String, disk: String },
    /// A snapshot was recorded (or replaced), with the `<domain>` as it was
    /// when the snapshot was taken.
    SnapshotRecorded {
        domain: String,
        snapshot: SnapshotRecord,
        domain_xml: String,
    },
    /// A snapshot's metadata was removed.
    SnapshotRemoved { domain: String, snapshot: String },
    /// A snapshot's parent changed (its parent was deleted).
    SnapshotReparented {
        domain: String,
        snapshot: String,
        parent: Option<String>,
    },
    /// A checkpoint was recorded (or replaced), with its historic `<domain>`.
    CheckpointRecorded {
        domain: String,
        checkpoint: CheckpointRecord,
        domain_xml: String,
    },
    /// A checkpoint was removed.
    CheckpointRemoved { domain: String, checkpoint: String },
    /// The current snapshot marker moved.
    CurrentSnapshotSet {
        domain: String,
        snapshot: Option<String>,
    },
    /// An image file became the journal's: it created the file, or the
    /// file is the disk a domain was first defined on (the domain's own).
    ImageCreated { image: ImageRecord },
    /// An image file the journal created is no longer in use and is removed.
    ImageRemoved { path: String },
    /// The domain started or stopped running (live operations).
    RuntimeSet {
        domain: String,
        runtime: Option<Runtime>,
    },
    /// The parts of a redefined snapshot document the record does not
    /// model (libvirt elements kept as written for the round trip: inside a
    /// disk's `<source>` and `<driver>`, entries of disks the record leaves
    /// out, `<inactiveDomain>`, `<cookie>`), as one `<extras>` document
    /// kept beside the historic `<domain>` (removed with the snapshot).
    SnapshotExtrasRecorded {
        domain: String,
        snapshot: String,
        xml: String,
    },
    /// The domain's QEMU is run by libvirt at `uri` (`None`: no longer):
    /// snapjournal operates it through libvirt's API and keeps libvirt's
    /// definition and snapshot/checkpoint metadata a projection of the
    /// journal. Kept as a document beside the projection (the libvirt
    /// domain has the journal's domain name).
    LibvirtBound { domain: String, uri: Option<String> },
}

impl StateChange {
    /// The domain a change belongs to, when it belongs to one.
    pub fn domain(&self) -> Option<&str> {
        match self {
            StateChange::DomainDefined { core } => Some(&core.name),
            StateChange::DomainUndefined { domain }
            | StateChange::DomainXmlSet { domain, .. }
            | StateChange::DiskChainChanged { domain, .. }
            | StateChange::DiskRemoved { domain, .. }
            | StateChange::SnapshotRecorded { domain, .. }
            | StateChange::SnapshotRemoved { domain, .. }
            | StateChange::SnapshotReparented { domain, .. }
            | StateChange::CheckpointRecorded { domain, .. }
            | StateChange::CheckpointRemoved { domain, .. }
            | StateChange::CurrentSnapshotSet { domain, .. }
            | StateChange::RuntimeSet { domain, .. }
            | StateChange::SnapshotExtrasRecorded { domain, .. }
            | StateChange::LibvirtBound { domain, .. } => Some(domain),
            StateChange::ImageCreated { image } => Some(&image.domain),
            StateChange::ImageRemoved { .. } => None,
        }
    }
}

/// One entry of the transaction lifecycle.
// Events are built once per journal write; boxing the intent record would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The intent record: written and synced before the world changes.
    TxnBegun {
        txn: TxnId,
        domain: String,
        intent: Intent,
        plan: Plan,
        /// The domain as it was before, for undo and for checking I6.
        prior: Option<DomainCore>,
        actor: String,
    },
    /// A step of the plan completed (may be unsynced).
    StepDone { txn: TxnId, step: u32 },
    /// The commit point passed; `changes` were applied to the projection.
    Committed { txn: TxnId, changes: Vec<StateChange> },
    /// A failure before the commit point; undo starts.
    Aborting { txn: TxnId, reason: String },
    /// A completed step was undone.
    StepUndone { txn: TxnId, step: u32 },
    /// Every completed step was undone; the transaction is closed.
    Aborted { txn: TxnId, reason: String },
    /// Every step ran; the transaction is closed.
    Finished { txn: TxnId },
}

impl Event {
    /// The transaction the event belongs to.
    pub fn txn(&self) -> TxnId {
        match self {
            Event::TxnBegun { txn, .. }
            | Event::StepDone { txn, .. }
            | Event::Committed { txn, .. }
            | Event::Aborting { txn, .. }
            | Event::StepUndone { txn, .. }
            | Event::Aborted { txn, .. }
            | Event::Finished { txn } => *txn,
        }
    }

    /// Whether the journal syncs this event to disk before returning: the
    /// intent (before the world changes) and the commit (before the caller
    /// is told). The closing records ride unsynced: lost in a power cut,
    /// the transaction is found open again and recovery, whose probes
    /// judge every step from the world, finishes it the same way (a
    /// committed one forward, an uncommitted one back, both idempotent);
    /// the next synced record of any transaction makes them durable too.
    /// The power-cut suite (`snapjournal-chaos --mode power-cut`) cuts
    /// right after them and at every sync.
    pub fn is_synced(&self) -> bool {
        matches!(self, Event::TxnBegun { .. } | Event::Committed { .. })
    }
}

/// An event as stored: its global sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub event: Event,
}
