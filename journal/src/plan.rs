//! Plans: the complete, ordered list of steps a transaction will run, with
//! every parameter (every file name) decided before the intent is written.

use serde::{Deserialize, Serialize};

use crate::event::StateChange;
use crate::state::ChainImage;

/// A step of a plan. The journal stores steps as data; the executor gives
/// each one its apply, probe and undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Create a qcow2 overlay `path` on top of `backing` (pre-commit;
    /// undone by removing the file).
    CreateOverlay {
        disk: String,
        path: String,
        backing: ChainImage,
    },
    /// Merge `top` into its backing file `base` (post-commit; `top` is kept
    /// intact so the step can be repeated).
    CommitImage { disk: String, top: String, base: String },
    /// Point `image` at a new backing file (`None`: standalone). `safe`
    /// copies the data that differs (a block-pull); unsafe only rewrites the
    /// header (the contents are already identical).
    RebaseImage {
        disk: String,
        image: String,
        backing: Option<ChainImage>,
        safe: bool,
    },
    /// Remove an image file the journal created (post-commit).
    RemoveImage { path: String },
    /// Make the domain's XML files equal the rendering of the state
    /// (post-commit).
    SyncXml { domain: String },
    /// Open `path` in the domain's running QEMU as format node `node`, with
    /// `backing: null` (pre-commit; undone by `blockdev-del`).
    BlockdevAdd {
        domain: String,
        disk: String,
        node: String,
        path: String,
    },
    /// The live commit point: ONE QMP `transaction` of `blockdev-snapshot`
    /// actions moves every disk onto its overlay at once, together with the
    /// dirty-bitmap actions of a checkpoint taken with it (or alone, with no
    /// disks). It is the last step before the commit point and has no undo:
    /// once QEMU switched, the guest may have written to the overlays, and
    /// its writes were tracked by the new bitmaps only.
    LiveSnapshot {
        domain: String,
        disks: Vec<LiveSwitch>,
        bitmaps: Vec<BitmapOp>,
    },
    /// A QMP block job that merges images of a running domain (post-commit):
    /// `block-commit` of `top` into `base`, or `block-stream` of `base`'s
    /// data into `top`. When QEMU is gone, the same merge runs through
    /// qemu-img. The job's id derives from the transaction and the step
    /// (`sj-<txn>-<step>`), so recovery finds the job again.
    BlockJob {
        domain: String,
        disk: String,
        merge: LiveMerge,
    },
    /// Remove a node QEMU no longer uses from its graph (post-commit;
    /// nothing to do when the node or QEMU is gone).
    BlockdevDel { domain: String, node: String },
    /// Launch QEMU for the domain (pre-commit; undone by killing it).
    LaunchQemu {
        domain: String,
        qmp_socket: String,
        pidfile: String,
        paused: bool,
    },
    /// Let the guest's vCPUs run again after a block job stopped them for
    /// its pivot (post-commit; nothing to do when QEMU is gone).
    ResumeGuest { domain: String },
    /// Stop the domain's QEMU (post-commit; done once the process is gone).
    StopQemu {
        domain: String,
        qmp_socket: String,
        pid: Option<u32>,
    },
    /// One persistent dirty-bitmap change in an image of a stopped domain,
    /// through `qemu-img bitmap`. Adding and disabling run before the commit
    /// point (undone by removing and enabling); merging and removing only
    /// after it.
    Bitmap { domain: String, op: BitmapOp },
    /// Dirty-bitmap changes in a running domain's QEMU, as ONE QMP
    /// `transaction` (post-commit, for checkpoint delete). When QEMU is
    /// gone, the same changes run through qemu-img.
    LiveBitmaps { domain: String, ops: Vec<BitmapOp> },
    /// After a block job folded image `from` out of a running domain's
    /// chain of disk `disk`: the checkpoints' bitmaps `from` held, carried
    /// into the device's active image as ONE QMP `transaction` (adds of the
    /// names it lacks, the recording one enabled, merges from `from`'s
    /// node) — post-commit, between the job and the `blockdev-del` of
    /// `from`'s node. Every action is idempotent (an add of a present
    /// bitmap is left out, a merge is an OR), so it is repeated until
    /// `from`'s node is gone; when QEMU is gone, the same through qemu-img.
    LiveBitmapCarry {
        domain: String,
        disk: String,
        from: String,
        ops: Vec<BitmapOp>,
    },
    /// The commit point of a snapshot of a domain libvirt runs: ONE
    /// `virDomainSnapshotCreateXML` (disk-only, reusing the overlays the
    /// journal created, atomic across disks, without libvirt metadata —
    /// that is written from the journal by `SyncXml`). `disks`: (disk,
    /// overlay); `excluded`: the domain's other disks (`snapshot='no'`).
    /// No undo, like [`Step::LiveSnapshot`]. When libvirt no longer runs
    /// the domain, nothing is to be done: the overlays stand on the active
    /// images and the definition libvirt gets names them.
    LibvirtSnapshot {
        domain: String,
        uri: String,
        disks: Vec<(String, String)>,
        excluded: Vec<String>,
    },
    /// A block job that merges images of a domain libvirt runs
    /// (post-commit): `virDomainBlockCommit` (an active commit pivoted by
    /// `virDomainBlockJobAbort(PIVOT)`) or `virDomainBlockRebase` into the
    /// active image. Done when the folded image has left libvirt's view of
    /// the disk's chain; when libvirt no longer runs the domain, the same
    /// merge runs through qemu-img.
    LibvirtBlockJob {
        domain: String,
        uri: String,
        disk: String,
        merge: LibvirtMerge,
    },
    /// The commit point of a checkpoint of a domain libvirt runs: ONE
    /// `virDomainCheckpointCreateXML` (libvirt adds the bitmaps in one QEMU
    /// transaction). Undone by `virDomainCheckpointDelete`.
    LibvirtCheckpoint {
        domain: String,
        uri: String,
        name: String,
        xml: String,
    },
    /// After a checkpoint's removal from the journal: `virDomainCheckpointDelete`
    /// removes its bitmaps from a domain libvirt runs (planned only when
    /// the parent's bitmaps record, so they cover what it held). Done when
    /// libvirt no longer lists it.
    LibvirtCheckpointDelete {
        domain: String,
        uri: String,
        name: String,
    },
}

/// What a [`Step::LibvirtBlockJob`] merges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LibvirtMerge {
    /// Commit `top` into its backing image `base`; `active`: `top` is the
    /// disk's active image (the job is pivoted).
    Commit {
        top: ChainImage,
        base: ChainImage,
        active: bool,
    },
    /// Pull the data of `dropped` into the active image `top`, which then
    /// stands on `below` (`None`: standalone).
    Pull {
        top: ChainImage,
        dropped: ChainImage,
        below: Option<ChainImage>,
    },
}

impl LibvirtMerge {
    /// The image the merge folds out of the disk's chain.
    pub fn folded(&self) -> &ChainImage {
        match self {
            LibvirtMerge::Commit { top, .. } => top,
            LibvirtMerge::Pull { dropped, .. } => dropped,
        }
    }
}

/// A change to one persistent dirty bitmap of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapOp {
    pub disk: String,
    /// The image holding the bitmap (its QEMU node derives from the path).
    pub image: String,
    pub action: BitmapAction,
}

/// What a [`BitmapOp`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BitmapAction {
    /// Add bitmap `name`, recording writes when `enabled`.
    Add { name: String, enabled: bool },
    /// Start recording writes in `name`.
    Enable { name: String },
    /// Stop recording writes in `name`.
    Disable { name: String },
    /// OR bitmap `source` into `target` (same image).
    Merge { source: String, target: String },
    /// Remove bitmap `name`.
    Remove { name: String },
    /// OR bitmap `source` of another image, `source_image`, into `target`
    /// (carries a checkpoint's bitmap through a snapshot merge).
    MergeFrom {
        source_image: String,
        source: String,
        target: String,
    },
}

impl BitmapOp {
    /// One line a person can read.
    pub fn describe(&self) -> String {
        let what = match &self.action {
            BitmapAction::Add { name, enabled } => {
                format!("add {}bitmap {name}", if *enabled { "" } else { "disabled " })
            }
            BitmapAction::Enable { name } => format!("enable bitmap {name}"),
            BitmapAction::Disable { name } => format!("disable bitmap {name}"),
            BitmapAction::Merge { source, target } => format!("merge bitmap {source} into {target}"),
            BitmapAction::Remove { name } => format!("remove bitmap {name}"),
            BitmapAction::MergeFrom {
                source_image,
                source,
                target,
            } => format!("merge bitmap {source} of {source_image} into {target}"),
        };
        format!("{what} in {} (disk {})", self.image, self.disk)
    }
}

/// One disk of a [`Step::LiveSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSwitch {
    pub disk: String,
    /// The node that is the disk's active layer now.
    pub top_node: String,
    /// The overlay's node, added by a [`Step::BlockdevAdd`].
    pub overlay_node: String,
}

/// How a [`Step::BlockJob`] merges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LiveMerge {
    /// `block-commit` of `top` into `base`. `active`: `top` is the disk's
    /// active layer (the job waits in ready and is completed; the guest is
    /// paused across the pivot so no write lands after it unrecorded).
    Commit {
        device_node: String,
        top: ChainImage,
        top_node: String,
        base: ChainImage,
        base_node: String,
        active: bool,
    },
    /// `block-stream` of everything between `top` and `below` into `top`,
    /// which then stands on `below` (`None`: standalone).
    Stream {
        top: ChainImage,
        top_node: String,
        /// The image the stream drops from the chain (its data goes into
        /// `top`); kept until a later step removes it.
        dropped: ChainImage,
        below: Option<ChainImage>,
        below_node: Option<String>,
    },
}

impl Step {
    /// One line a person can read.
    pub fn describe(&self) -> String {
        match self {
            Step::CreateOverlay { disk, path, backing } => {
                format!("create overlay {path} on {} for disk {disk}", backing.path)
            }
            Step::CommitImage { disk, top, base } => {
                format!("merge {top} into {base} (block-commit) for disk {disk}")
            }
            Step::RebaseImage {
                disk,
                image,
                backing,
                safe,
            } => format!(
                "{} {image} onto {} for disk {disk}",
                if *safe { "pull data into" } else { "rebase" },
                backing
                    .as_ref()
                    .map(|b| b.path.as_str())
                    .unwrap_or("nothing (standalone)")
            ),
            Step::RemoveImage { path } => format!("remove unreferenced image {path}"),
            Step::SyncXml { domain } => format!("render the XML files of domain {domain}"),
            Step::BlockdevAdd {
                domain,
                disk,
                node,
                path,
            } => {
                format!("open {path} as node {node} in the QEMU of domain {domain} for disk {disk}")
            }
            Step::LiveSnapshot {
                domain,
                disks,
                bitmaps,
            } if disks.is_empty() => format!(
                "{} in running domain {domain} (one QMP transaction)",
                bitmaps
                    .iter()
                    .map(BitmapOp::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Step::LiveSnapshot {
                domain,
                disks,
                bitmaps,
            } => format!(
                "switch disk{} {} of running domain {domain} onto their overlays{} (one QMP transaction)",
                if disks.len() == 1 { "" } else { "s" },
                disks
                    .iter()
                    .map(|d| d.disk.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if bitmaps.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", with {}",
                        bitmaps
                            .iter()
                            .map(BitmapOp::describe)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            ),
            Step::BlockJob { domain, disk, merge } => match merge {
                LiveMerge::Commit {
                    top, base, active, ..
                } => format!(
                    "{}block-commit {} into {} for disk {disk} of running domain {domain}",
                    if *active { "active " } else { "" },
                    top.path,
                    base.path
                ),
                LiveMerge::Stream { top, below, .. } => format!(
                    "block-stream into {} down to {} for disk {disk} of running domain {domain}",
                    top.path,
                    below
                        .as_ref()
                        .map(|b| b.path.as_str())
                        .unwrap_or("nothing (standalone)")
                ),
            },
            Step::BlockdevDel { domain, node } => {
                format!("remove node {node} from the QEMU of domain {domain}")
            }
            Step::LaunchQemu { domain, paused, .. } => {
                format!(
                    "start QEMU for domain {domain}{}",
                    if *paused { " (paused)" } else { "" }
                )
            }
            Step::StopQemu { domain, .. } => format!("stop the QEMU of domain {domain}"),
            Step::ResumeGuest { domain } => format!("resume the vCPUs of domain {domain}"),
            Step::Bitmap { domain, op } => format!("{} of domain {domain}", op.describe()),
            Step::LiveBitmaps { domain, ops } => format!(
                "{} in running domain {domain} (one QMP transaction)",
                ops.iter().map(BitmapOp::describe).collect::<Vec<_>>().join("; ")
            ),
            Step::LiveBitmapCarry {
                domain, disk, from, ops,
            } => format!(
                "carry the bitmaps of {from} on disk {disk} of running domain {domain}: {} (one QMP transaction)",
                ops.iter().map(BitmapOp::describe).collect::<Vec<_>>().join("; ")
            ),
            Step::LibvirtSnapshot { domain, disks, .. } => format!(
                "switch disk{} {} of domain {domain} onto their overlays through libvirt (one atomic disk-only snapshot)",
                if disks.len() == 1 { "" } else { "s" },
                disks.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>().join(", ")
            ),
            Step::LibvirtBlockJob {
                domain, disk, merge, ..
            } => match merge {
                LibvirtMerge::Commit { top, base, active } => format!(
                    "{}block commit of {} into {} for disk {disk} of domain {domain} through libvirt",
                    if *active { "active " } else { "" },
                    top.path,
                    base.path
                ),
                LibvirtMerge::Pull { top, dropped, .. } => format!(
                    "block pull of {} into {} for disk {disk} of domain {domain} through libvirt",
                    dropped.path, top.path
                ),
            },
            Step::LibvirtCheckpoint { domain, name, .. } => {
                format!("take checkpoint {name} of domain {domain} through libvirt (its bitmaps in one transaction)")
            }
            Step::LibvirtCheckpointDelete { domain, name, .. } => {
                format!("remove the bitmaps of checkpoint {name} of domain {domain} through libvirt")
            }
        }
    }

    /// Whether the step's completion must be durable before the next step
    /// runs: recovery could not tell from the world that an active commit
    /// pivoted, and the next step lets the guest write again.
    pub fn completion_must_sync(&self) -> bool {
        matches!(
            self,
            Step::BlockJob {
                merge: LiveMerge::Commit { active: true, .. },
                ..
            }
        )
    }
}

/// A transaction's plan: `steps[..commit_index]` run before the commit point
/// and can be undone; `changes` are applied at the commit point;
/// `steps[commit_index..]` run after it and only roll forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub commit_index: u32,
    pub changes: Vec<StateChange>,
}

impl Plan {
    /// Whether step `i` is before the commit point.
    pub fn is_pre_commit(&self, i: u32) -> bool {
        i < self.commit_index
    }
}
