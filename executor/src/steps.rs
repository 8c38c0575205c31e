//! The behaviour of each plan [`Step`]: apply (idempotent), probe (does the
//! world show it done?) and undo (idempotent).

use std::path::Path;

use journal::crashpoint::crash_point;
use journal::{BitmapAction, BitmapOp, Journal, LiveMerge, Runtime, Step, TxnId};
use serde_json::json;

use crate::error::{ExecError, ImageError, Result};
use crate::images::QemuImg;
use crate::live::graph::{file_node, BlockGraph};
use crate::live::qmp::{Cmd, Qmp, QmpError};
use crate::live::{bitmaps, jobs, qemu, Live};
use crate::metadata::MetadataStore;

/// What steps act on.
pub struct World<'a> {
    pub journal: &'a Journal,
    pub images: &'a QemuImg,
    pub metadata: &'a MetadataStore,
    pub live: &'a Live,
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

impl World<'_> {
    /// Whether the world shows `step` done.
    pub fn probe(&self, step: &Step) -> Result<bool> {
        Ok(match step {
            // The header tells (read in-process: recovery probes every
            // crashed create's overlays).
            Step::CreateOverlay { path, backing, .. } => {
                exists(path)
                    && crate::images::read_header(path)
                        .map(|h| h.format == "qcow2" && h.backing.as_deref() == Some(backing.path.as_str()))
                        .unwrap_or(false)
                    // qemu-img writes the backing name last; the tables
                    // must read too.
                    && matches!(crate::images::qcow2_data_bytes(path), Ok(Some(_)))
            }
            // A merge leaves no mark we can read cheaply; it counts as done
            // once its top image is gone (removed by a later step).
            Step::CommitImage { top, .. } => !exists(top),
            Step::RebaseImage { image, backing, .. } => {
                exists(image)
                    && crate::images::read_header(image)
                        .map(|h| h.backing == backing.as_ref().map(|b| b.path.clone()))
                        .unwrap_or(false)
            }
            Step::RemoveImage { path } => !exists(path),
            Step::SyncXml { domain } => {
                let state = self.journal.state()?;
                self.metadata.in_sync(self.journal, &state, domain)?
            }
            // With QEMU gone, the nodes went with it: nothing is left to do
            // or undo in QEMU.
            Step::BlockdevAdd { domain, node, .. } => self
                .on_qemu(domain, |q| Ok(BlockGraph::read(q)?.has_node(node)))?
                .unwrap_or(true),
            Step::LiveSnapshot { .. } => self.switch_seen(step)?.unwrap_or(true),
            Step::Bitmap { op, .. } => self.bitmap_done_offline(op)?,
            Step::LiveBitmaps { domain, ops } => {
                match self.on_qemu(domain, |q| Ok(bitmaps::seen(&BlockGraph::read(q)?, ops)))? {
                    Some(done) => done,
                    None => {
                        let mut all = true;
                        for op in ops {
                            all &= self.bitmap_done_offline(op)?;
                        }
                        all
                    }
                }
            }
            // Repeated until the folded image's node is gone (the next
            // step deletes it): every action of a carry is idempotent.
            Step::LiveBitmapCarry {
                domain, from, ops, ..
            } => {
                match self.on_qemu(domain, |q| {
                    Ok(BlockGraph::read(q)?.format_node_of(from).is_none())
                })? {
                    Some(done) => done,
                    None => {
                        let mut all = true;
                        for op in ops {
                            all &= self.bitmap_done_offline(op)?;
                        }
                        all
                    }
                }
            }
            Step::BlockJob { domain, disk, merge } => {
                match self.on_qemu(domain, |q| {
                    Ok(jobs::merge_done(&BlockGraph::read(q)?, disk, merge))
                })? {
                    Some(done) => done,
                    None => self.offline_merge_done(merge)?,
                }
            }
            Step::BlockdevDel { domain, node } => !self
                .on_qemu(domain, |q| Ok(BlockGraph::read(q)?.has_node(node)))?
                .unwrap_or(false),
            Step::LaunchQemu {
                qmp_socket, pidfile, ..
            } => qemu::read_pidfile(Path::new(pidfile))
                .is_some_and(|pid| qemu::is_qemu_on(pid, Path::new(qmp_socket))),
            Step::ResumeGuest { domain } => self.on_qemu(domain, |q| q.running())?.unwrap_or(true),
            Step::StopQemu { qmp_socket, pid, .. } => {
                !pid.is_some_and(|p| qemu::is_qemu_on(p, Path::new(qmp_socket)))
                    && std::os::unix::net::UnixStream::connect(qmp_socket).is_err()
            }
        })
    }

    /// For a [`Step::LiveSnapshot`]: whether QEMU shows every disk switched
    /// onto its overlay (`None`: QEMU is gone and cannot tell).
    pub fn switch_seen(&self, step: &Step) -> Result<Option<bool>> {
        let Step::LiveSnapshot {
            domain,
            disks,
            bitmaps: ops,
        } = step
        else {
            return Ok(None);
        };
        self.on_qemu(domain, |q| {
            let graph = BlockGraph::read(q)?;
            // One transaction: the disks' switch tells, or the bitmaps when
            // there is no disk to switch.
            if disks.is_empty() {
                return Ok(bitmaps::seen(&graph, ops));
            }
            Ok(disks.iter().all(|d| {
                graph
                    .devices
                    .iter()
                    .any(|dev| dev.chain.first().map(|l| l.node.as_str()) == Some(d.overlay_node.as_str()))
            }))
        })
    }

    /// Whether the image shows a bitmap change done. A bitmap left in use by
    /// a QEMU that died cannot be enabled, disabled or merged any more:
    /// those count as done (the change tracking it held is lost either way).
    fn bitmap_done_offline(&self, op: &BitmapOp) -> Result<bool> {
        if !exists(&op.image) {
            return Ok(true);
        }
        let present = self.images.bitmaps(&op.image)?;
        let find = |n: &str| present.iter().find(|b| b.name == n);
        Ok(match &op.action {
            BitmapAction::Add { name, .. } => find(name).is_some(),
            BitmapAction::Enable { name } => find(name).is_none_or(|b| b.enabled || b.in_use),
            BitmapAction::Disable { name } => find(name).is_none_or(|b| !b.enabled || b.in_use),
            BitmapAction::Merge { source, target } => match (find(source), find(target)) {
                (None, _) => true,
                (Some(s), Some(t)) => s.in_use || t.in_use,
                (Some(_), None) => false,
            },
            BitmapAction::Remove { name } => find(name).is_none(),
            // Repeating an OR is harmless: done once the source is gone.
            BitmapAction::MergeFrom {
                source_image,
                source,
                target,
            } => {
                if !exists(source_image) {
                    return Ok(true);
                }
                let from = self.images.bitmaps(source_image)?;
                match (from.iter().find(|b| &b.name == source), find(target)) {
                    (None, _) => true,
                    (Some(s), Some(t)) => s.in_use || t.in_use,
                    (Some(_), None) => false,
                }
            }
        })
    }

    /// A bitmap change through qemu-img (the domain is stopped, or its QEMU
    /// is gone); idempotent.
    ///
    /// A merge whose target is missing is skipped: the plan checked that
    /// the target existed (or adds it in an earlier step), so it was lost
    /// since, as when a crash hits qemu-img or QEMU while they rewrite an
    /// image's bitmap directory (QEMU clears the directory, synced, before
    /// it writes it again). Its change tracking is gone; creating an empty
    /// bitmap in its place would claim tracking it does not have. fsck
    /// reports the checkpoint's missing bitmap; recovery finishes the rest
    /// of the transaction instead of stopping at it.
    fn apply_bitmap_offline(&self, op: &BitmapOp) -> Result<()> {
        if self.bitmap_done_offline(op)? {
            return Ok(());
        }
        if let BitmapAction::Merge { target, .. } | BitmapAction::MergeFrom { target, .. } = &op.action {
            if !self.images.bitmaps(&op.image)?.iter().any(|b| &b.name == target) {
                return Ok(());
            }
        }
        self.images.bitmap(&op.image, &op.action)?;
        Ok(())
    }

    /// The runtime of a running domain, as the committed state records it.
    fn runtime(&self, domain: &str) -> Result<Option<Runtime>> {
        Ok(self.journal.domain(domain)?.and_then(|d| d.core.runtime))
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

    fn offline_merge_done(&self, merge: &LiveMerge) -> Result<bool> {
        Ok(match merge {
            LiveMerge::Commit { top, .. } => !exists(&top.path),
            LiveMerge::Stream { top, below, .. } => self.probe(&Step::RebaseImage {
                disk: String::new(),
                image: top.path.clone(),
                backing: below.clone(),
                safe: true,
            })?,
        })
    }

    /// A block job's merge through qemu-img, for when QEMU is gone. Safe to
    /// repeat: a commit rewrites the same data into the base (no guest
    /// wrote to the base after a pivot the journal has not recorded: the
    /// vCPUs were stopped), a stream is redone from the dropped image.
    fn offline_merge(&self, merge: &LiveMerge) -> Result<()> {
        match merge {
            LiveMerge::Commit { top, base, .. } => {
                if exists(&top.path) {
                    self.images.commit(&top.path, &base.path)?;
                }
                Ok(())
            }
            LiveMerge::Stream {
                top, dropped, below, ..
            } => {
                // QEMU may have rewritten top's header (now on `below`)
                // while the data it copied was still in its metadata cache
                // when it died: put the dropped image back under top
                // (header only: the copied clusters equal its data) and
                // copy again. The dropped image is only removed later.
                if exists(&dropped.path) {
                    self.images.rebase(&top.path, Some(dropped), false)?;
                }
                self.apply_plain(&Step::RebaseImage {
                    disk: String::new(),
                    image: top.path.clone(),
                    backing: below.clone(),
                    safe: true,
                })
            }
        }
    }

    /// A safe [`Step::RebaseImage`] that the journal does not record done,
    /// run again from the image it was rebased from. qemu-img writes the
    /// new backing name into the header before its metadata cache reaches
    /// the disk: after a power cut the header can say "done" while the
    /// copied clusters are lost. So the header is put back on the old
    /// backing (header only: what was copied equals its data) and the copy
    /// is made again. The old backing is the image below `image` in the
    /// chain the plan was made from, or an image the plan removes whose
    /// own backing is the new one; when neither exists any more there is
    /// nothing to redo from (the copy had completed: the removal comes
    /// after it).
    pub fn apply_interrupted_rebase(
        &self,
        ctx: StepCtx,
        step: &Step,
        plan: &journal::Plan,
        prior: Option<&journal::DomainCore>,
    ) -> Result<()> {
        let Step::RebaseImage {
            disk,
            image,
            backing,
            safe: true,
        } = step
        else {
            return self.apply(ctx, step);
        };
        if !self.probe(step)? {
            return self.apply(ctx, step);
        }
        let new = backing.as_ref().map(|b| b.path.as_str());
        let from_chain = prior
            .and_then(|core| core.disks.get(disk))
            .and_then(|d| {
                let i = d.chain.iter().position(|c| &c.path == image)?;
                d.chain.get(i + 1).cloned()
            })
            .filter(|o| Some(o.path.as_str()) != new && exists(&o.path));
        let from_plan = || {
            plan.steps.iter().find_map(|s| match s {
                Step::RemoveImage { path }
                    if path != image
                        && exists(path)
                        && crate::images::read_header(path)
                            .map(|h| h.backing.as_deref() == new)
                            .unwrap_or(false) =>
                {
                    Some(journal::ChainImage::qcow2(path.clone()))
                }
                _ => None,
            })
        };
        let Some(old) = from_chain.or_else(from_plan) else {
            return Ok(());
        };
        crash_point("step.rebase.redo");
        self.images.rebase(image, Some(&old), false)?;
        self.images.rebase(image, backing.as_ref(), true)?;
        Ok(())
    }

    /// Runs step `ctx.index` of transaction `ctx.txn`; running it again
    /// after success (or after a crash in the middle of it) is harmless.
    pub fn apply(&self, ctx: StepCtx, step: &Step) -> Result<()> {
        match step {
            Step::BlockdevAdd {
                domain, node, path, ..
            } => {
                // Tried first, checked on refusal: a node left by an earlier
                // attempt makes QEMU refuse the duplicate name.
                self.on_qemu(domain, |q| {
                    let added = q.execute(
                        Cmd::BlockdevAdd,
                        json!({
                            "driver": "qcow2",
                            "node-name": node,
                            "file": { "driver": "file", "filename": path, "node-name": file_node(path) },
                            "backing": null,
                        }),
                    );
                    match added {
                        Ok(_) => Ok(()),
                        Err(e) if e.refused_with("Duplicate") && BlockGraph::read(q)?.has_node(node) => {
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                })?;
                Ok(())
            }
            Step::LiveSnapshot {
                domain,
                disks,
                bitmaps: ops,
            } => {
                crash_point("live.switch.before");
                let sent = self.on_qemu(domain, |q| {
                    // The bitmap actions come first: a checkpoint's new
                    // bitmaps exist on the overlays before the guest
                    // writes to them.
                    let mut actions = Vec::new();
                    if !ops.is_empty() {
                        match bitmaps::actions(&BlockGraph::read(q)?, ops) {
                            Ok(a) => actions = a,
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    actions.extend(disks.iter().map(|d| {
                        json!({
                            "type": "blockdev-snapshot",
                            "data": { "node": d.top_node, "overlay": d.overlay_node },
                        })
                    }));
                    // Sent first, checked on failure: a transaction that
                    // already ran (before a crash, or whose reply was lost)
                    // shows in the graph.
                    Ok(q.execute(Cmd::Transaction, json!({ "actions": actions }))
                        .map(|_| ())
                        .map_err(|e| e.to_string()))
                })?;
                if let Some(Err(e)) = sent {
                    if !self.switch_seen(step)?.unwrap_or(true) {
                        return Err(ExecError::Live(format!("domain {domain}: {e}")));
                    }
                }
                crash_point("live.switch.after");
                Ok(())
            }
            Step::LiveBitmaps { domain, ops } => {
                let sent = self.on_qemu(domain, |q| {
                    let graph = BlockGraph::read(q)?;
                    if bitmaps::seen(&graph, ops) {
                        return Ok(Ok(()));
                    }
                    let actions = match bitmaps::actions(&graph, ops) {
                        Ok(a) => a,
                        Err(e) => return Ok(Err(e)),
                    };
                    crash_point("live.bitmaps.before");
                    q.execute(Cmd::Transaction, json!({ "actions": actions }))?;
                    crash_point("live.bitmaps.after");
                    Ok(Ok(()))
                })?;
                match sent {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(ExecError::Live(format!("domain {domain}: {e}"))),
                    // QEMU is gone: the same changes on the files.
                    None => {
                        for op in ops {
                            self.apply_bitmap_offline(op)?;
                        }
                        Ok(())
                    }
                }
            }
            Step::LiveBitmapCarry {
                domain, from, ops, ..
            } => {
                let sent = self.on_qemu(domain, |q| {
                    let graph = BlockGraph::read(q)?;
                    if graph.format_node_of(from).is_none() {
                        return Ok(Ok(()));
                    }
                    let pending = bitmaps::carry_pending(&graph, ops);
                    let actions = match bitmaps::actions(&graph, &pending) {
                        Ok(a) => a,
                        Err(e) => return Ok(Err(e)),
                    };
                    if actions.is_empty() {
                        return Ok(Ok(()));
                    }
                    crash_point("live.bitmaps.before");
                    q.execute(Cmd::Transaction, json!({ "actions": actions }))?;
                    crash_point("live.bitmaps.after");
                    Ok(Ok(()))
                })?;
                match sent {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(ExecError::Live(format!("domain {domain}: {e}"))),
                    // QEMU is gone: the same changes on the files.
                    None => {
                        for op in ops {
                            self.apply_bitmap_offline(op)?;
                        }
                        Ok(())
                    }
                }
            }
            Step::Bitmap { op, .. } => self.apply_bitmap_offline(op),
            Step::BlockJob { domain, disk, merge } => {
                let Some(rt) = self.runtime(domain)? else {
                    return self.offline_merge(merge);
                };
                let id = jobs::job_id(ctx.txn, ctx.index);
                let ran = self
                    .live
                    .with_qemu(&rt, |q| Ok(jobs::run(self.live, q, domain, disk, &id, merge)));
                match ran.map_err(qmp_err)? {
                    None => self.offline_merge(merge),
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(ExecError::Live(format!("domain {domain}, disk {disk}: {e}"))),
                }
            }
            Step::BlockdevDel { domain, node } => {
                // Tried first: a node already gone is refused by name.
                self.on_qemu(domain, |q| {
                    match q.execute(Cmd::BlockdevDel, json!({ "node-name": node })) {
                        Ok(_) => Ok(()),
                        Err(e) if e.refused_with("Failed to find node") || e.refused_with("Cannot find") => {
                            if BlockGraph::read(q)?.has_node(node) {
                                Err(e)
                            } else {
                                Ok(())
                            }
                        }
                        Err(e) => Err(e),
                    }
                })?;
                Ok(())
            }
            Step::LaunchQemu {
                domain,
                qmp_socket,
                pidfile,
                ..
            } => {
                if self.probe(step)? {
                    return Ok(());
                }
                let dom = self
                    .journal
                    .domain(domain)?
                    .ok_or_else(|| ExecError::Invalid(format!("domain {domain} is not defined")))?;
                let pid = qemu::launch(&dom.core, Path::new(qmp_socket), Path::new(pidfile))
                    .map_err(|e| ExecError::Live(format!("domain {domain}: {e}")))?;
                crash_point("live.launched");
                // Wait until the monitor answers, so the runtime the commit
                // records is usable.
                let rt = Runtime {
                    qmp_socket: qmp_socket.clone(),
                    pid: Some(pid),
                    pidfile: None,
                    managed: true,
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    match self.live.with_qemu(&rt, |q| q.running()) {
                        Ok(Some(_)) => return Ok(()),
                        _ if std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_millis(10))
                        }
                        Ok(None) => {
                            return Err(ExecError::Live(format!(
                                "domain {domain}: QEMU (pid {pid}) exited right after starting"
                            )))
                        }
                        Err(e) => return Err(qmp_err(e)),
                    }
                }
            }
            Step::ResumeGuest { domain } => {
                self.on_qemu(domain, |q| {
                    if !q.running()? {
                        q.execute(Cmd::Cont, json!({}))?;
                    }
                    Ok(())
                })?;
                Ok(())
            }
            Step::StopQemu {
                domain,
                qmp_socket,
                pid,
            } => {
                let rt = Runtime {
                    qmp_socket: qmp_socket.clone(),
                    pid: *pid,
                    pidfile: None,
                    managed: true,
                };
                // `quit` flushes and closes the images; a QEMU whose
                // monitor does not answer gets SIGTERM (which also flushes).
                let quit = self
                    .live
                    .with_qemu(&rt, |q| match q.execute(Cmd::Quit, json!({})) {
                        Ok(_) => Ok(()),
                        Err(QmpError::Connection { .. }) => Ok(()),
                        Err(e) => Err(e),
                    });
                self.live.forget(qmp_socket);
                if let Some(p) = pid {
                    if quit.is_err() && qemu::is_qemu_on(*p, Path::new(qmp_socket)) {
                        qemu::signal(*p, libc::SIGTERM);
                    }
                    if !qemu::wait_exit(*p, std::time::Duration::from_secs(20)) {
                        return Err(ExecError::Live(format!(
                            "domain {domain}: QEMU (pid {p}) did not exit after quit and SIGTERM"
                        )));
                    }
                } else {
                    quit.map_err(qmp_err)?;
                }
                Ok(())
            }
            other => self.apply_plain(other),
        }
    }

    /// [`Step::SyncXml`] for a transaction whose state `changes` are known:
    /// only the files they touch are rendered and compared.
    pub fn sync_xml(&self, domain: &str, changes: &[journal::StateChange]) -> Result<()> {
        match crate::metadata::touched_items(changes, domain) {
            Some((snapshots, checkpoints)) => {
                self.metadata
                    .sync_items(self.journal, domain, &snapshots, &checkpoints)
            }
            None => self.apply_plain(&Step::SyncXml {
                domain: domain.to_string(),
            }),
        }
    }

    /// The steps that touch only files.
    fn apply_plain(&self, step: &Step) -> Result<()> {
        match step {
            Step::CreateOverlay { path, backing, .. } => {
                if !self.probe(step)? {
                    // The plan checked that nothing was at `path`: anything
                    // there now is a partial overlay of ours.
                    remove_file_if_exists(path)?;
                    self.images.create_overlay(path, backing)?;
                }
                // qemu-img syncs the file, never its directory: the name is
                // made durable before the commit point relies on it, also
                // when a run that died before this line had created it.
                crate::durable::persist_new_file(Path::new(path)).map_err(|e| ImageError {
                    action: "make durable".into(),
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
            Step::CommitImage { top, base, .. } => {
                if !exists(top) {
                    return Ok(());
                }
                self.images.commit(top, base)?;
            }
            Step::RebaseImage {
                image, backing, safe, ..
            } => {
                if self.probe(step)? {
                    return Ok(());
                }
                self.images.rebase(image, backing.as_ref(), *safe)?;
            }
            Step::RemoveImage { path } => remove_file_if_exists(path)?,
            Step::SyncXml { domain } => {
                let state = self.journal.state()?;
                self.metadata.sync_domain(self.journal, &state, domain)?;
            }
            other => {
                return Err(ExecError::Invalid(format!(
                    "step \"{}\" is not a file step",
                    other.describe()
                )))
            }
        }
        Ok(())
    }

    /// Undoes `step` (whether or not it ran). Only steps before the commit
    /// point have an undo.
    pub fn undo(&self, step: &Step) -> Result<()> {
        match step {
            Step::CreateOverlay { path, .. } => {
                crash_point("step.undo.remove_overlay");
                remove_file_if_exists(path)
            }
            Step::BlockdevAdd { domain, node, .. } => {
                self.on_qemu(domain, |q| {
                    if !BlockGraph::read(q)?.has_node(node) {
                        return Ok(());
                    }
                    q.execute(Cmd::BlockdevDel, json!({ "node-name": node })).map(|_| ())
                })?;
                Ok(())
            }
            Step::Bitmap { op, .. } => {
                let undo = match &op.action {
                    BitmapAction::Add { name, .. } => BitmapAction::Remove { name: name.clone() },
                    BitmapAction::Disable { name } => BitmapAction::Enable { name: name.clone() },
                    BitmapAction::Enable { name } => BitmapAction::Disable { name: name.clone() },
                    _ => {
                        return Err(ExecError::Invalid(format!(
                            "step \"{}\" runs after the commit point and cannot be undone",
                            step.describe()
                        )))
                    }
                };
                self.apply_bitmap_offline(&BitmapOp {
                    disk: op.disk.clone(),
                    image: op.image.clone(),
                    action: undo,
                })
            }
            Step::LiveSnapshot { domain, .. } => match self.switch_seen(step)? {
                Some(true) => Err(ExecError::Live(format!(
                    "domain {domain}: QEMU already switched onto the overlays, which may hold guest writes; the transaction must go forward, not back"
                ))),
                _ => Ok(()),
            },
            Step::LaunchQemu {
                qmp_socket, pidfile, ..
            } => {
                if let Some(pid) = qemu::read_pidfile(Path::new(pidfile)) {
                    if qemu::is_qemu_on(pid, Path::new(qmp_socket)) {
                        qemu::log_event(
                            Path::new(pidfile),
                            &format!("killing QEMU pid {pid} (SIGKILL): undoing its launch, which did not commit"),
                        );
                        qemu::signal(pid, libc::SIGKILL);
                        qemu::wait_exit(pid, std::time::Duration::from_secs(10));
                    }
                }
                self.live.forget(qmp_socket);
                remove_file_if_exists(qmp_socket)?;
                remove_file_if_exists(pidfile)
            }
            other => Err(ExecError::Invalid(format!(
                "step \"{}\" runs after the commit point and cannot be undone",
                other.describe()
            ))),
        }
    }
}
