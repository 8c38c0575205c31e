//! [`Snapjournal`]: the one handle an agent holds on a state directory
//! (blocking), and [`AsyncSnapjournal`], the same for tokio.

use std::path::Path;
use std::sync::Arc;

use executor::{DiskRequest, Executor};
use journal::{DiskSnapshotMode, TxnId};

pub use executor::live::JobProgress;
pub use executor::{CheckpointReport, CreateReport, DeleteReport, MergeChoice, RedefineReport, RevertReport};
pub use journal::{HistoryEntry, Outcome};
pub use recovery::{FsckReport, RecoveryReport};

use crate::api::{ApiError, ErrorKind};

/// An error of the library: what kind, the message (what failed, where,
/// and what state things are in), the domain and transaction concerned,
/// and whether anything was changed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Error {
    inner: ApiError,
}

impl Error {
    fn from_any(e: anyhow::Error, domain: Option<&str>) -> Error {
        Error {
            inner: ApiError::classify(&e, domain),
        }
    }

    /// A refusal while planning: nothing was changed.
    fn invalid(domain: &str, message: String) -> Error {
        Error {
            inner: ApiError {
                kind: ErrorKind::Invalid,
                message,
                domain: Some(domain.into()),
                txn: None,
                changed: Some(false),
                reason: Some("refused".into()),
            },
        }
    }

    /// What kind of failure (the same kinds the server's API reports).
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The domain concerned, when known.
    pub fn domain(&self) -> Option<&str> {
        self.inner.domain.as_deref()
    }

    /// The transaction concerned (`txn-N`), when there is one.
    pub fn txn(&self) -> Option<&str> {
        self.inner.txn.as_deref()
    }

    /// `Some(false)`: nothing was changed; `Some(true)`: something changed
    /// and recovery finishes it; `None`: not known.
    pub fn changed(&self) -> Option<bool> {
        self.inner.changed
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl std::error::Error for Error {}

/// The library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn wrap<T, E: Into<anyhow::Error>>(r: std::result::Result<T, E>, domain: Option<&str>) -> Result<T> {
    r.map_err(|e| Error::from_any(e.into(), domain))
}

/// A snapshot to take: `CreateSnapshot::new("vm", "s1").description("…")`.
#[derive(Debug, Clone)]
pub struct CreateSnapshot {
    req: executor::CreateRequest,
}

impl CreateSnapshot {
    /// An external, disk-only snapshot of every disk, overlays named by
    /// default (`<image>.<name>`).
    pub fn new(domain: impl Into<String>, name: impl Into<String>) -> CreateSnapshot {
        CreateSnapshot {
            req: executor::CreateRequest {
                domain: domain.into(),
                name: name.into(),
                ..Default::default()
            },
        }
    }

    /// The snapshot's description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.req.description = Some(text.into());
        self
    }

    /// Leaves `disk` out of the snapshot (`snapshot='no'`).
    pub fn exclude_disk(mut self, disk: impl Into<String>) -> Self {
        let disk = disk.into();
        self.req.disks.retain(|d| d.disk != disk);
        self.req.disks.push(DiskRequest {
            disk,
            mode: DiskSnapshotMode::No,
            file: None,
        });
        self
    }

    /// Puts `disk`'s new overlay at `file`.
    pub fn overlay(mut self, disk: impl Into<String>, file: impl Into<String>) -> Self {
        let disk = disk.into();
        self.req.disks.retain(|d| d.disk != disk);
        self.req.disks.push(DiskRequest {
            disk,
            mode: DiskSnapshotMode::External,
            file: Some(file.into()),
        });
        self
    }

    /// Takes a checkpoint (a dirty bitmap on every disk) in the same
    /// transaction.
    pub fn with_checkpoint(mut self, name: impl Into<String>) -> Self {
        self.req.checkpoint = Some(name.into());
        self
    }
}

/// A snapshot to delete: `DeleteSnapshot::new("vm", "s1")`.
#[derive(Debug, Clone)]
pub struct DeleteSnapshot {
    req: executor::DeleteRequest,
}

impl DeleteSnapshot {
    /// Deletes the snapshot, merging its image into its neighbour.
    pub fn new(domain: impl Into<String>, name: impl Into<String>) -> DeleteSnapshot {
        DeleteSnapshot {
            req: executor::DeleteRequest {
                domain: domain.into(),
                snapshot: name.into(),
                ..Default::default()
            },
        }
    }

    /// Deletes its descendants too.
    pub fn children(mut self) -> Self {
        self.req.children = true;
        self
    }

    /// Drops the metadata only and keeps every image.
    pub fn metadata_only(mut self) -> Self {
        self.req.metadata_only = true;
        self
    }
}

/// A checkpoint to take: `CreateCheckpoint::new("vm", "c1")`.
#[derive(Debug, Clone)]
pub struct CreateCheckpoint {
    req: executor::CheckpointRequest,
}

impl CreateCheckpoint {
    /// A checkpoint with a bitmap on every disk.
    pub fn new(domain: impl Into<String>, name: impl Into<String>) -> CreateCheckpoint {
        CreateCheckpoint {
            req: executor::CheckpointRequest {
                domain: domain.into(),
                name: name.into(),
                description: None,
                disks: vec![],
            },
        }
    }

    /// The checkpoint's description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.req.description = Some(text.into());
        self
    }

    /// Leaves `disk` out (`checkpoint='no'`).
    pub fn exclude_disk(mut self, disk: impl Into<String>) -> Self {
        self.req.disks.push((disk.into(), false));
        self
    }
}

/// One snapshot, as `snapshot list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: Option<String>,
    pub description: Option<String>,
    /// Seconds since the Unix epoch.
    pub creation_time: i64,
    /// Whether it is the domain's current snapshot.
    pub current: bool,
    /// Per disk: the image the snapshot froze (`None`: the disk was left
    /// out).
    pub disks: Vec<(String, Option<String>)>,
}

/// One domain, as `domain list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DomainInfo {
    pub name: String,
    /// Per disk: the image it writes to.
    pub disks: Vec<(String, String)>,
    pub snapshots: usize,
    pub current_snapshot: Option<String>,
    /// Whether a QEMU runs it.
    pub running: bool,
}

/// A state directory, opened (and recovered) for an agent. Every
/// operation is a journaled transaction: after a crash at any moment,
/// opening the directory again finishes or undoes what was under way.
///
/// Operations on different domains may run at once from several threads
/// (`Snapjournal` is `Sync`); a second change to a domain that is being
/// changed fails with [`ErrorKind::Busy`].
pub struct Snapjournal {
    exec: Executor,
    recovered: RecoveryReport,
}

impl Snapjournal {
    /// Opens a state directory (creating it if needed) and recovers every
    /// transaction a crash left open; [`Snapjournal::recovered`] tells
    /// what that did. One process holds a state directory at a time: a
    /// second opener fails with [`ErrorKind::Busy`] naming the holder's
    /// PID (use the holder's server, see [`Snapjournal::into_server`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Snapjournal> {
        let (exec, recovered) = wrap(recovery::open(dir.as_ref()), None)?;
        Ok(Snapjournal { exec, recovered })
    }

    /// What recovery did when the directory was opened.
    pub fn recovered(&self) -> &RecoveryReport {
        &self.recovered
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        self.exec.journal().dir()
    }

    /// Calls `f` with the progress of every block job (live deletes).
    pub fn on_progress(&mut self, f: impl Fn(&JobProgress) + Send + Sync + 'static) {
        self.exec.set_progress(Box::new(f));
    }

    /// Defines (or redefines) a domain from libvirt `<domain>` XML; its
    /// disks' images must exist.
    pub fn define_domain(&self, xml: &str) -> Result<TxnId> {
        wrap(self.exec.define_domain(xml), None)
    }

    /// Forgets a domain (its images are never removed); with
    /// `snapshot_metadata`, also its snapshots' metadata.
    pub fn undefine_domain(&self, domain: &str, snapshot_metadata: bool) -> Result<TxnId> {
        wrap(self.exec.undefine_domain(domain, snapshot_metadata), Some(domain))
    }

    /// Every domain.
    pub fn domains(&self) -> Result<Vec<DomainInfo>> {
        wrap(
            self.exec.journal().with_state(|s| {
                s.domains
                    .values()
                    .map(|d| DomainInfo {
                        name: d.core.name.clone(),
                        disks: d
                            .core
                            .disks
                            .values()
                            .map(|x| {
                                (
                                    x.target.clone(),
                                    x.chain.first().map(|c| c.path.clone()).unwrap_or_default(),
                                )
                            })
                            .collect(),
                        snapshots: d.snapshots.len(),
                        current_snapshot: d.core.current_snapshot.clone(),
                        running: d.core.runtime.is_some(),
                    })
                    .collect()
            }),
            None,
        )
    }

    /// Starts QEMU as the domain's definition describes it (vCPUs paused
    /// with `paused`).
    pub fn domain_start(&self, domain: &str, paused: bool) -> Result<()> {
        wrap(self.exec.domain_start(domain, paused).map(|_| ()), Some(domain))
    }

    /// Stops the domain's QEMU (it flushes and closes its images).
    pub fn domain_stop(&self, domain: &str) -> Result<TxnId> {
        wrap(self.exec.domain_stop(domain), Some(domain))
    }

    /// Uses a QEMU started elsewhere, reached at its QMP socket.
    pub fn domain_attach(&self, domain: &str, qmp_socket: &str, pid: Option<u32>) -> Result<TxnId> {
        wrap(self.exec.domain_attach(domain, qmp_socket, pid), Some(domain))
    }

    /// Takes an external disk-only snapshot (of a running domain: every
    /// disk switches in one QMP transaction).
    pub fn snapshot_create(&self, req: &CreateSnapshot) -> Result<CreateReport> {
        wrap(self.exec.snapshot_create(&req.req), Some(&req.req.domain))
    }

    /// Reverts a domain to a snapshot (new overlays on its images; a
    /// running domain is stopped and started again as it was).
    pub fn snapshot_revert(&self, domain: &str, snapshot: &str) -> Result<RevertReport> {
        wrap(
            self.exec.snapshot_revert(&executor::RevertRequest {
                domain: domain.into(),
                snapshot: snapshot.into(),
                overlays: Default::default(),
            }),
            Some(domain),
        )
    }

    /// Deletes a snapshot, merging its image (block jobs on a running
    /// domain; their progress goes to [`Snapjournal::on_progress`]).
    pub fn snapshot_delete(&self, req: &DeleteSnapshot) -> Result<DeleteReport> {
        wrap(self.exec.snapshot_delete(&req.req), Some(&req.req.domain))
    }

    /// A domain's snapshots, oldest first.
    pub fn snapshots(&self, domain: &str) -> Result<Vec<SnapshotInfo>> {
        let list = wrap(
            self.exec.journal().with_state(|s| {
                s.domains.get(domain).map(|d| {
                    let mut v: Vec<SnapshotInfo> = d
                        .snapshots
                        .values()
                        .map(|s| SnapshotInfo {
                            name: s.name.clone(),
                            parent: s.parent.clone(),
                            description: s.description.clone(),
                            creation_time: s.creation_time,
                            current: d.core.current_snapshot.as_deref() == Some(s.name.as_str()),
                            disks: s
                                .disks
                                .iter()
                                .map(|x| (x.disk.clone(), x.frozen.as_ref().map(|i| i.path.clone())))
                                .collect(),
                        })
                        .collect();
                    v.sort_by(|a, b| (a.creation_time, &a.name).cmp(&(b.creation_time, &b.name)));
                    v
                })
            }),
            Some(domain),
        )?;
        list.ok_or_else(|| Error::invalid(domain, format!("domain {domain} is not defined")))
    }

    /// A snapshot's `<domainsnapshot>` XML, as libvirt writes it.
    pub fn snapshot_xml(&self, domain: &str, name: &str) -> Result<String> {
        let record = wrap(
            self.exec
                .journal()
                .with_state(|s| s.domains.get(domain).and_then(|d| d.snapshots.get(name).cloned())),
            Some(domain),
        )?
        .ok_or_else(|| Error::invalid(domain, format!("domain {domain} has no snapshot called {name}")))?;
        wrap(
            executor::metadata::render_snapshot_of(self.exec.journal(), domain, &record),
            Some(domain),
        )
    }

    /// Defines snapshots from full `<domainsnapshot>` documents (name,
    /// text), validated as a whole, all or nothing.
    pub fn snapshot_redefine(
        &self,
        domain: &str,
        documents: Vec<(String, String)>,
        current: Option<&str>,
    ) -> Result<RedefineReport> {
        wrap(
            self.exec.snapshot_redefine(&executor::RedefineRequest {
                domain: domain.into(),
                items: documents,
                current: current.map(str::to_string),
                adopt_images: false,
            }),
            Some(domain),
        )
    }

    /// Takes a checkpoint: a persistent dirty bitmap on each disk.
    pub fn checkpoint_create(&self, req: &CreateCheckpoint) -> Result<CheckpointReport> {
        wrap(self.exec.checkpoint_create(&req.req), Some(&req.req.domain))
    }

    /// Deletes a checkpoint (its bitmaps merge into its parent's); with
    /// `metadata_only` the bitmaps stay.
    pub fn checkpoint_delete(
        &self,
        domain: &str,
        name: &str,
        metadata_only: bool,
    ) -> Result<CheckpointReport> {
        wrap(
            self.exec.checkpoint_delete(domain, name, metadata_only),
            Some(domain),
        )
    }

    /// A domain's transactions: who did what, when, with what outcome.
    pub fn history(&self, domain: &str) -> Result<Vec<HistoryEntry>> {
        wrap(self.exec.journal().history(domain), Some(domain))
    }

    /// Finishes every open transaction (forward or back), as opening did.
    pub fn recover(&self) -> Result<RecoveryReport> {
        wrap(recovery::recover_all(&self.exec, false), None)
    }

    /// Checks every invariant (of one domain, or all).
    pub fn fsck(&self, domain: Option<&str>) -> Result<FsckReport> {
        wrap(recovery::fsck(&self.exec, domain, false), domain)
    }

    /// A server over this handle: it serves the CLI and every other client
    /// on a unix socket (see docs/API.md and [`crate::server`]).
    pub fn into_server(self) -> crate::server::Server {
        crate::server::Server::new(self.exec)
    }

    /// The same handle for async code.
    pub fn into_async(self) -> AsyncSnapjournal {
        AsyncSnapjournal {
            inner: Arc::new(self),
        }
    }
}

/// [`Snapjournal`] for tokio: each operation runs on the blocking pool
/// (they spawn qemu-img, talk QMP and wait for fsyncs), so the calling
/// task never blocks a runtime thread. Cheap to clone.
#[derive(Clone)]
pub struct AsyncSnapjournal {
    inner: Arc<Snapjournal>,
}

macro_rules! blocking {
    ($self:ident, |$h:ident| $body:expr) => {{
        let $h = $self.inner.clone();
        tokio::task::spawn_blocking(move || $body)
            .await
            .map_err(|e| Error {
                inner: ApiError::unchanged(ErrorKind::Other, format!("the operation's thread failed: {e}")),
            })?
    }};
}

impl AsyncSnapjournal {
    /// Opens (and recovers) a state directory.
    pub async fn open(dir: impl AsRef<Path>) -> Result<AsyncSnapjournal> {
        let dir = dir.as_ref().to_path_buf();
        let h = tokio::task::spawn_blocking(move || Snapjournal::open(dir))
            .await
            .map_err(|e| Error {
                inner: ApiError::unchanged(ErrorKind::Other, format!("the open's thread failed: {e}")),
            })??;
        Ok(h.into_async())
    }

    /// The blocking handle underneath.
    pub fn blocking(&self) -> &Snapjournal {
        &self.inner
    }

    /// [`Snapjournal::define_domain`].
    pub async fn define_domain(&self, xml: String) -> Result<TxnId> {
        blocking!(self, |h| h.define_domain(&xml))
    }

    /// [`Snapjournal::snapshot_create`].
    pub async fn snapshot_create(&self, req: CreateSnapshot) -> Result<CreateReport> {
        blocking!(self, |h| h.snapshot_create(&req))
    }

    /// [`Snapjournal::snapshot_delete`].
    pub async fn snapshot_delete(&self, req: DeleteSnapshot) -> Result<DeleteReport> {
        blocking!(self, |h| h.snapshot_delete(&req))
    }

    /// [`Snapjournal::snapshot_revert`].
    pub async fn snapshot_revert(&self, domain: String, snapshot: String) -> Result<RevertReport> {
        blocking!(self, |h| h.snapshot_revert(&domain, &snapshot))
    }

    /// [`Snapjournal::snapshots`].
    pub async fn snapshots(&self, domain: String) -> Result<Vec<SnapshotInfo>> {
        blocking!(self, |h| h.snapshots(&domain))
    }

    /// [`Snapjournal::checkpoint_create`].
    pub async fn checkpoint_create(&self, req: CreateCheckpoint) -> Result<CheckpointReport> {
        blocking!(self, |h| h.checkpoint_create(&req))
    }

    /// [`Snapjournal::checkpoint_delete`].
    pub async fn checkpoint_delete(
        &self,
        domain: String,
        name: String,
        metadata_only: bool,
    ) -> Result<CheckpointReport> {
        blocking!(self, |h| h.checkpoint_delete(&domain, &name, metadata_only))
    }

    /// [`Snapjournal::domain_start`].
    pub async fn domain_start(&self, domain: String, paused: bool) -> Result<()> {
        blocking!(self, |h| h.domain_start(&domain, paused))
    }

    /// [`Snapjournal::domain_stop`].
    pub async fn domain_stop(&self, domain: String) -> Result<TxnId> {
        blocking!(self, |h| h.domain_stop(&domain))
    }

    /// [`Snapjournal::recover`].
    pub async fn recover(&self) -> Result<RecoveryReport> {
        blocking!(self, |h| h.recover())
    }

    /// [`Snapjournal::fsck`].
    pub async fn fsck(&self, domain: Option<String>) -> Result<FsckReport> {
        blocking!(self, |h| h.fsck(domain.as_deref()))
    }

    /// [`Snapjournal::history`].
    pub async fn history(&self, domain: String) -> Result<Vec<HistoryEntry>> {
        blocking!(self, |h| h.history(&domain))
    }
}
