//! # snapjournal
//!
//! Crash-safe, journaled snapshot transactions for QEMU virtual machines:
//! external qcow2 snapshots (create, revert, delete with merges),
//! checkpoints (persistent dirty bitmaps) and bulk redefine, offline and on
//! a running QEMU. Every operation is a transaction whose intent is durable
//! before anything changes; after a crash at any moment, opening the state
//! directory again rolls each unfinished transaction forward or back, so
//! the images, the journal and the rendered libvirt XML always agree.
//!
//! One handle, [`Snapjournal`] (and [`AsyncSnapjournal`] for tokio):
//!
//! ```
//! use snapjournal::{CreateSnapshot, DeleteSnapshot, Snapjournal};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let base = dir.path().join("vda.qcow2");
//! # let ok = std::process::Command::new("qemu-img")
//! #     .args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("16M").status()?;
//! # assert!(ok.success());
//! // A state directory (created on first use). Opening it finishes
//! // whatever a crash left half done; `recovered()` says what that was.
//! let sj = Snapjournal::open(dir.path().join("state"))?;
//! assert!(sj.recovered().transactions.is_empty());
//!
//! // A domain, from libvirt XML (its images must exist).
//! sj.define_domain(&format!(
//!     "<domain type='qemu'><name>vm</name><memory unit='MiB'>64</memory>
//!        <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
//!          <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
//!     base.display()
//! ))?;
//!
//! // Snapshots: each one a transaction (the report names it).
//! let s1 = sj.snapshot_create(&CreateSnapshot::new("vm", "s1").description("before upgrade"))?;
//! println!("s1 is {}; vda now writes to {}", s1.txn, s1.overlays[0].1);
//! sj.snapshot_create(&CreateSnapshot::new("vm", "s2"))?;
//! let names: Vec<String> = sj.snapshots("vm")?.into_iter().map(|s| s.name).collect();
//! assert_eq!(names, ["s1", "s2"]);
//!
//! // Delete merges the snapshot's image (block jobs on a running domain,
//! // whose progress goes to `on_progress`).
//! let deleted = sj.snapshot_delete(&DeleteSnapshot::new("vm", "s1"))?;
//! assert_eq!(deleted.deleted, ["s1"]);
//!
//! // Errors are typed: the kind, the domain, the transaction, and whether
//! // anything changed.
//! let e = sj.snapshot_delete(&DeleteSnapshot::new("vm", "nope")).unwrap_err();
//! assert_eq!(e.kind(), snapjournal::ErrorKind::Invalid);
//! assert_eq!(e.changed(), Some(false));
//!
//! // Every invariant holds.
//! assert!(sj.fsck(None)?.findings.is_empty());
//! # Ok(()) }
//! ```
//!
//! **After a crash**: there is nothing to call. The next
//! [`Snapjournal::open`] (or any `snapjournal` command) finds the open
//! transactions and finishes them: forward once the commit point passed
//! (or QEMU already switched to the new overlays: guest writes are never
//! thrown away), back otherwise. `examples/agent_loop.rs` is an agent that
//! can be killed at any moment and simply started again.
//!
//! **Serving**: one process holds a state directory. An agent that embeds
//! this library can serve it to the CLI and to other clients with
//! [`Snapjournal::into_server`] ([`server::Server`]); `snapjournal serve`
//! is the same server as a daemon, and docs/API.md the protocol.
//!
//! The stable surface is what this page re-exports at the crate root plus
//! [`server`], [`client`] and [`api`]; [`commands`] and [`output`] are the
//! CLI's own.

pub mod api;
pub mod client;
// The commands' doc comments are clap's help text, which prints XML
// element names as they are.
#[doc(hidden)]
#[allow(rustdoc::invalid_html_tags)]
pub mod commands;
#[doc(hidden)]
pub mod demo;
#[doc(hidden)]
pub mod engine_exec;
mod handle;
#[doc(hidden)]
pub mod output;
#[doc(hidden)]
pub mod progress;
pub mod server;

pub use api::ErrorKind;
pub use handle::{
    AsyncSnapjournal, CheckpointReport, CreateCheckpoint, CreateReport, CreateSnapshot, DeleteReport,
    DeleteSnapshot, DomainInfo, Error, FsckReport, HistoryEntry, JobProgress, MergeChoice, Outcome,
    RecoveryReport, RedefineReport, Result, RevertReport, Snapjournal, SnapshotInfo,
};
pub use journal::TxnId;
pub use server::{Server, ServerOptions};
