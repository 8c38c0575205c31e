//! The behaviour of each plan [`Step`]: apply (idempotent), probe (does the
//! world show it done?) and undo (idempotent), by step family: `files.rs`,
//! `bitmaps.rs`, `block.rs` (a running QEMU's block graph), `process.rs`
//! (the QEMU process); each step's apply, probe and undo sit together.

use std::path::Path;

use journal::crashpoint::crash_point;
use journal::{BitmapAction, BitmapOp, Journal, LiveMerge, Runtime, Step, TxnId};
use serde_json::json;

use crate::error::{ExecError, ImageError, Result};
use crate::images::QemuImg;
use crate::live::graph::{file_node, BlockGraph};
use crate::live::qmp::{Cmd, Qmp, QmpError};
use crate::live::{bitmaps as live_bitmaps, jobs, qemu, Live};
use crate::metadata::MetadataStore;

mod bitmaps;
mod block;
mod files;
mod libvirt;
mod process;

/// What steps act on.
pub struct World<'a> {
    pub journal: &'a Journal,
    pub images: &'a QemuImg,
    pub metadata: &'a MetadataStore,
    pub live: &'a Live,
    pub libvirt: &'a crate::libvirt::Libvirt,
}

/// Whether a metadata sync looks for the temp files a crashed writer left
/// in the domain's own directories (a listing of every snapshot's file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strays {
    /// The transaction may follow a crash: sweep them.
    MayBeLeft,
    /// The transaction ran in this process from its beginning, after
    /// recovery had swept every earlier crash's: there are none.
    NoneLeft,
}

/// Which step of which transaction is running (block job ids derive from it).
#[derive(Debug, Clone, Copy)]
pub struct StepCtx {
    pub txn: TxnId,
    pub index: u32,
}

fn qmp_err(e: QmpError) -> ExecError {
    ExecError::Live(e.to_string())
}

fn remove_file_if_exists(path: &str) -> Result<()> {
    // Checked first: unlink on a read-only file system fails with EROFS
    // even when there is nothing to remove.
    if Path::new(path).symlink_metadata().is_err() {
        return Ok(());
    }
    // The removal is made durable: a removed image must not come back
    // after a power cut as an untracked stray with old data.
    match crate::durable::remove_file(Path::new(path)) {
        Ok(_) => Ok(()),
        Err(e) => Err(ImageError {
            action: "remove".into(),
            path: path.into(),
            message: e.to_string(),
        }
        .into()),
    }
}

fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

/// The family a step belongs to (the file that holds its behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Files,
    Bitmaps,
    Block,
    Process,
    Libvirt,
}

fn family(step: &Step) -> Family {
    match step {
        Step::CreateOverlay { .. }
        | Step::CommitImage { .. }
        | Step::RebaseImage { .. }
        | Step::RemoveImage { .. }
        | Step::SyncXml { .. } => Family::Files,
        Step::Bitmap { .. } | Step::LiveBitmaps { .. } | Step::LiveBitmapCarry { .. } => Family::Bitmaps,
        Step::BlockdevAdd { .. }
        | Step::LiveSnapshot { .. }
        | Step::BlockJob { .. }
        | Step::BlockdevDel { .. } => Family::Block,
        Step::LaunchQemu { .. } | Step::ResumeGuest { .. } | Step::StopQemu { .. } => Family::Process,
        Step::LibvirtSnapshot { .. }
        | Step::LibvirtBlockJob { .. }
        | Step::LibvirtCheckpoint { .. }
        | Step::LibvirtCheckpointDelete { .. } => Family::Libvirt,
    }
}

/// A step handed to the wrong family (a bug, reported, never a panic).
fn not_in_family(step: &Step, family: &str) -> ExecError {
    ExecError::refused(format!("step \"{}\" is not a {family} step", step.describe()))
}

/// A step after the commit point has no undo.
fn cannot_undo(step: &Step) -> ExecError {
    ExecError::refused(format!(
        "step \"{}\" runs after the commit point and cannot be undone",
        step.describe()
    ))
}

impl World<'_> {
    /// Whether the world shows `step` done.
    pub fn probe(&self, step: &Step) -> Result<bool> {
        match family(step) {
            Family::Files => self.probe_files(step),
            Family::Bitmaps => self.probe_bitmaps(step),
            Family::Block => self.probe_block(step),
            Family::Process => self.probe_process(step),
            Family::Libvirt => self.probe_libvirt(step),
        }
    }

    /// Runs step `ctx.index` of transaction `ctx.txn`; running it again
    /// after success (or after a crash in the middle of it) is harmless.
    pub fn apply(&self, ctx: StepCtx, step: &Step) -> Result<()> {
        match family(step) {
            Family::Files => self.apply_files(step),
            Family::Bitmaps => self.apply_bitmaps(step),
            Family::Block => self.apply_block(ctx, step),
            Family::Process => self.apply_process(step),
            Family::Libvirt => self.apply_libvirt(step),
        }
    }

    /// Undoes `step` (whether or not it ran). Only steps before the commit
    /// point have an undo.
    pub fn undo(&self, step: &Step) -> Result<()> {
        match family(step) {
            Family::Files => self.undo_files(step),
            Family::Bitmaps => self.undo_bitmaps(step),
            Family::Block => self.undo_block(step),
            Family::Process => self.undo_process(step),
            Family::Libvirt => self.undo_libvirt(step),
        }
    }

    /// The runtime of a running domain, as the committed state records it.
    fn runtime(&self, domain: &str) -> Result<Option<Runtime>> {
        Ok(self.journal.domain(domain)?.and_then(|d| d.core.runtime))
    }

    /// The rule of every live step, written once: `live` runs on the
    /// domain's QEMU; when the domain has no QEMU or its QEMU is gone,
    /// `offline` does the same on the files.
    fn on_qemu_or_files<R>(
        &self,
        domain: &str,
        live: impl FnOnce(&mut Qmp) -> std::result::Result<R, QmpError>,
        offline: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        match self.on_qemu(domain, live)? {
            Some(r) => Ok(r),
            None => offline(),
        }
    }

    /// Runs `f` on the domain's QEMU; `None` when the domain has no QEMU
    /// or its QEMU is gone.
    fn on_qemu<R>(
        &self,
        domain: &str,
        f: impl FnOnce(&mut Qmp) -> std::result::Result<R, QmpError>,
    ) -> Result<Option<R>> {
        let Some(rt) = self.runtime(domain)? else {
            return Ok(None);
        };
        self.live.with_qemu(&rt, f).map_err(qmp_err)
    }
}
