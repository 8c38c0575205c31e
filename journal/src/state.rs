//! The state projection: domains, disks and their image chains, snapshot
//! and checkpoint trees, and the image files the journal created. It is the
//! fold of all committed [`StateChange`]s.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::StateChange;

/// The ordered map the projection keeps its domains, snapshots,
/// checkpoints and images in: persistent (a copy shares every node with
/// the original until one of them changes), so a planner's copy of the
/// state costs O(1) whatever the number of snapshots, and comparing a copy
/// with the state it came from is a pointer comparison.
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// One image of a backing chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainImage {
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: String,
}

impl ChainImage {
    /// A qcow2 image at `path`.
    pub fn qcow2(path: impl Into<String>) -> Self {
        ChainImage {
            path: path.into(),
            format: "qcow2".into(),
        }
    }
}

/// A disk and its backing chain, active image first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    /// Target device name (`vda`).
    pub target: String,
    pub chain: Vec<ChainImage>,
}

impl DiskState {
    /// The image the disk writes to.
    pub fn active(&self) -> Option<&ChainImage> {
        self.chain.first()
    }
}

/// How a running domain is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub qmp_socket: String,
    /// The QEMU process, when known.
    pub pid: Option<u32>,
    /// Where QEMU writes its pid (managed QEMUs), read when `pid` is unset.
    pub pidfile: Option<String>,
    /// Whether snapjournal started the QEMU process itself.
    pub managed: bool,
}

impl Runtime {
    /// The QEMU process id: the recorded one, else the pidfile's.
    pub fn process(&self) -> Option<u32> {
        self.pid.or_else(|| {
            let text = std::fs::read_to_string(self.pidfile.as_ref()?).ok()?;
            text.trim().parse().ok()
        })
    }
}

/// A domain without its snapshots and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainCore {
    pub name: String,
    /// The libvirt `<domain>` definition, disk sources equal to the active images.
    pub xml: String,
    pub disks: BTreeMap<String, DiskState>,
    pub current_snapshot: Option<String>,
    pub runtime: Option<Runtime>,
}

/// How a snapshot treats a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskSnapshotMode {
    External,
    No,
}

/// One disk of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    pub disk: String,
    pub mode: DiskSnapshotMode,
    /// The overlay the snapshot created (external disks).
    pub overlay: Option<String>,
    /// The image holding the snapshot's point-in-time content: the active
    /// image when the snapshot was taken (external disks).
    pub frozen: Option<ChainImage>,
}

/// A snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    pub description: Option<String>,
    /// Seconds since the Unix epoch.
    pub creation_time: i64,
    /// libvirt's snapshot state (`disk-snapshot`, `shutoff`, `running`).
    pub state: String,
    pub parent: Option<String>,
    pub disks: Vec<SnapshotDisk>,
    // The `<domain>` as it was when the snapshot was taken is a document of
    // its own, read on demand (`Journal::snapshot_domain_xml`): commands
    // that list 10,000 snapshots do not load 10,000 domain definitions.
}

/// A checkpoint's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub name: String,
    pub description: Option<String>,
    pub creation_time: i64,
    pub parent: Option<String>,
    /// (disk, bitmap name) pairs; an empty bitmap name is a disk the
    /// checkpoint leaves out (`checkpoint='no'`).
    pub disks: Vec<(String, String)>,
    // The historic `<domain>`: `Journal::checkpoint_domain_xml`.
}

impl CheckpointRecord {
    /// The disks the checkpoint keeps a bitmap on, with the bitmap's name.
    pub fn bitmaps(&self) -> impl Iterator<Item = (&str, &str)> {
        self.disks
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(d, b)| (d.as_str(), b.as_str()))
    }

    /// The bitmap the checkpoint keeps on `disk`, if it covers the disk.
    pub fn bitmap_on(&self, disk: &str) -> Option<&str> {
        self.disks
            .iter()
            .find(|(d, b)| d == disk && !b.is_empty())
            .map(|(_, b)| b.as_str())
    }
}

/// An image file the journal created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub path: String,
    pub domain: String,
}

/// A domain with its snapshots and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    pub core: DomainCore,
    pub snapshots: Map<String, SnapshotRecord>,
    pub checkpoints: Map<String, CheckpointRecord>,
}

impl DomainState {
    /// The snapshots whose parent is `parent` (`None`: the roots).
    pub fn snapshot_children(&self, parent: Option<&str>) -> Vec<&SnapshotRecord> {
        self.snapshots
            .values()
            .filter(|s| s.parent.as_deref() == parent)
            .collect()
    }

    /// How many ancestors a checkpoint has (a parent cycle, which only a
    /// corrupt state could hold, stops the count).
    fn checkpoint_depth(&self, name: &str) -> usize {
        let mut depth = 0;
        let mut at = self.checkpoints.get(name).and_then(|c| c.parent.as_deref());
        while let Some(p) = at {
            depth += 1;
            if depth > self.checkpoints.len() {
                break;
            }
            at = self.checkpoints.get(p).and_then(|c| c.parent.as_deref());
        }
        depth
    }

    /// The disk whose active (writable) layer is the image at `path`.
    pub fn disk_writing_into(&self, path: &str) -> Option<&DiskState> {
        self.core
            .disks
            .values()
            .find(|d| d.chain.first().is_some_and(|c| c.path == path))
    }

    /// The newest checkpoint covering `disk` (`None`: any disk): the one
    /// whose bitmap on the disk records writes now. Newest means the latest
    /// creation time, then the deepest in the tree, then the name.
    pub fn newest_checkpoint(&self, disk: Option<&str>) -> Option<&CheckpointRecord> {
        self.checkpoints
            .values()
            .filter(|c| disk.is_none_or(|d| c.bitmap_on(d).is_some()))
            .max_by_key(|c| (c.creation_time, self.checkpoint_depth(&c.name), c.name.clone()))
    }

    /// The nearest ancestor of checkpoint `name` that covers `disk`: where
    /// the checkpoint's changes on the disk go when it is deleted.
    pub fn checkpoint_ancestor_on(&self, name: &str, disk: &str) -> Option<&CheckpointRecord> {
        let mut seen = 0;
        let mut at = self.checkpoints.get(name).and_then(|c| c.parent.as_deref());
        while let Some(p) = at {
            let c = self.checkpoints.get(p)?;
            if c.bitmap_on(disk).is_some() {
                return Some(c);
            }
            seen += 1;
            if seen > self.checkpoints.len() {
                return None;
            }
            at = c.parent.as_deref();
        }
        None
    }

    /// Every image path the domain still needs: the present chains and the
    /// chains below every snapshot's frozen image.
    pub fn referenced_images(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for disk in self.core.disks.values() {
            out.extend(disk.chain.iter().map(|i| i.path.clone()));
        }
        for snap in self.snapshots.values() {
            for d in &snap.disks {
                if let Some(f) = &d.frozen {
                    out.insert(f.path.clone());
                }
            }
        }
        out
    }
}

/// The whole projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub domains: Map<String, DomainState>,
    /// Images the journal created, by path.
    pub images: Map<String, ImageRecord>,
}

/// A projection entry that a change touched; the store rewrites (or deletes)
/// exactly these keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    Domain(String),
    Snapshot(String, String),
    Checkpoint(String, String),
    Image(String),
}

impl State {
    /// Applies one change, recording the projection entries it touched.
    /// Changes that name a missing domain or item are no-ops: the state
    /// stays a pure fold of the log whatever the log holds.
    pub fn apply(&mut self, change: &StateChange, touched: &mut BTreeSet<Touched>) {
        match change {
            StateChange::DomainDefined { core } => {
                let name = core.name.clone();
                match self.domains.get_mut(&name) {
                    Some(d) => d.core = core.clone(),
                    None => {
                        self.domains.insert(
                            name.clone(),
                            DomainState {
                                core: core.clone(),
                                snapshots: Map::new(),
                                checkpoints: Map::new(),
                            },
                        );
                    }
                }
                touched.insert(Touched::Domain(name));
            }
            StateChange::DomainUndefined { domain } => {
                if let Some(d) = self.domains.remove(domain) {
                    for s in d.snapshots.keys() {
                        touched.insert(Touched::Snapshot(domain.clone(), s.clone()));
                    }
                    for c in d.checkpoints.keys() {
                        touched.insert(Touched::Checkpoint(domain.clone(), c.clone()));
                    }
                }
                touched.insert(Touched::Domain(domain.clone()));
            }
            StateChange::DomainXmlSet { domain, xml } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    d.core.xml = xml.clone();
                    touched.insert(Touched::Domain(domain.clone()));
                }
            }
            StateChange::DiskChainChanged { domain, disk, chain } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    d.core.disks.insert(
                        disk.clone(),
                        DiskState {
                            target: disk.clone(),
                            chain: chain.clone(),
                        },
                    );
                    touched.insert(Touched::Domain(domain.clone()));
                }
            }
            StateChange::DiskRemoved { domain, disk } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    d.core.disks.remove(disk);
                    touched.insert(Touched::Domain(domain.clone()));
                }
            }
            StateChange::SnapshotRecorded { domain, snapshot, .. } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    d.snapshots.insert(snapshot.name.clone(), snapshot.clone());
                    touched.insert(Touched::Snapshot(domain.clone(), snapshot.name.clone()));
                }
            }
            // Kept by the journal as a document beside the record: only
            // the rendered XML changes.
            StateChange::SnapshotExtrasRecorded { domain, snapshot, .. } => {
                if self
                    .domains
                    .get(domain)
                    .is_some_and(|d| d.snapshots.contains_key(snapshot))
                {
                    touched.insert(Touched::Snapshot(domain.clone(), snapshot.clone()));
                }
            }
            StateChange::SnapshotRemoved { domain, snapshot } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    if d.snapshots.remove(snapshot).is_some() {
                        touched.insert(Touched::Snapshot(domain.clone(), snapshot.clone()));
                    }
                }
            }
            StateChange::SnapshotReparented {
                domain,
                snapshot,
                parent,
            } => {
                if let Some(s) = self
                    .domains
                    .get_mut(domain)
                    .and_then(|d| d.snapshots.get_mut(snapshot))
                {
                    s.parent = parent.clone();
                    touched.insert(Touched::Snapshot(domain.clone(), snapshot.clone()));
                }
            }
            StateChange::CheckpointRecorded {
                domain, checkpoint, ..
            } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    d.checkpoints.insert(checkpoint.name.clone(), checkpoint.clone());
                    touched.insert(Touched::Checkpoint(domain.clone(), checkpoint.name.clone()));
                }
            }
            StateChange::CheckpointRemoved { domain, checkpoint } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    if d.checkpoints.remove(checkpoint).is_some() {
                        touched.insert(Touched::Checkpoint(domain.clone(), checkpoint.clone()));
                    }
                }
            }
            StateChange::CurrentSnapshotSet { domain, snapshot } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    d.core.current_snapshot = snapshot.clone();
                    touched.insert(Touched::Domain(domain.clone()));
                }
            }
            StateChange::ImageCreated { image } => {
                self.images.insert(image.path.clone(), image.clone());
                touched.insert(Touched::Image(image.path.clone()));
            }
            StateChange::ImageRemoved { path } => {
                if self.images.remove(path).is_some() {
                    touched.insert(Touched::Image(path.clone()));
                }
            }
            // A document beside the projection (`Journal::libvirt_uri`).
            StateChange::LibvirtBound { .. } => {}
            StateChange::RuntimeSet { domain, runtime } => {
                if let Some(d) = self.domains.get_mut(domain) {
                    d.core.runtime = runtime.clone();
                    touched.insert(Touched::Domain(domain.clone()));
                }
            }
        }
    }

    /// Images the journal created for `domain`.
    pub fn images_of<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a ImageRecord> + 'a {
        self.images.values().filter(move |i| i.domain == domain)
    }
}
