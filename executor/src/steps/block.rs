//! Steps on a running QEMU's block graph: nodes added and deleted, the
//! live switch onto overlays, block jobs (through qemu-img when QEMU is
//! gone).

#[allow(unused_imports)]
use super::*;

impl World<'_> {
    /// Whether the world shows a block-graph step done.
    pub(super) fn probe_block(&self, step: &Step) -> Result<bool> {
        Ok(match step {
            // With QEMU gone, the nodes went with it: nothing is left to do
            // or undo in QEMU.
            Step::BlockdevAdd { domain, node, .. } => self
                .on_qemu(domain, |q| Ok(BlockGraph::read(q)?.has_node(node)))?
                .unwrap_or(true),
            Step::LiveSnapshot { .. } => self.switch_seen(step)?.unwrap_or(true),
            Step::BlockJob { domain, disk, merge } => self.on_qemu_or_files(
                domain,
                |q| Ok(jobs::merge_done(&BlockGraph::read(q)?, disk, merge)),
                || self.offline_merge_done(merge),
            )?,
            Step::BlockdevDel { domain, node } => !self
                .on_qemu(domain, |q| Ok(BlockGraph::read(q)?.has_node(node)))?
                .unwrap_or(false),
            other => return Err(not_in_family(other, "block-graph")),
        })
    }

    /// Runs a block-graph step (idempotent).
    pub(super) fn apply_block(&self, ctx: StepCtx, step: &Step) -> Result<()> {
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
                        match live_bitmaps::actions(&BlockGraph::read(q)?, ops) {
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
            other => Err(not_in_family(other, "block-graph")),
        }
    }

    /// Undoes a block-graph step before the commit point.
    pub(super) fn undo_block(&self, step: &Step) -> Result<()> {
        match step {
            Step::BlockdevAdd { domain, node, .. } => {
                self.on_qemu(domain, |q| {
                    if !BlockGraph::read(q)?.has_node(node) {
                        return Ok(());
                    }
                    q.execute(Cmd::BlockdevDel, json!({ "node-name": node })).map(|_| ())
                })?;
                Ok(())
            }
            Step::LiveSnapshot { domain, .. } => match self.switch_seen(step)? {
                Some(true) => Err(ExecError::Live(format!(
                    "domain {domain}: QEMU already switched onto the overlays, which may hold guest writes; the transaction must go forward, not back"
                ))),
                _ => Ok(()),
            },
            other => Err(cannot_undo(other)),
        }
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
                return Ok(live_bitmaps::seen(&graph, ops));
            }
            Ok(disks.iter().all(|d| {
                graph
                    .devices
                    .iter()
                    .any(|dev| dev.chain.first().map(|l| l.node.as_str()) == Some(d.overlay_node.as_str()))
            }))
        })
    }

    pub(super) fn offline_merge_done(&self, merge: &LiveMerge) -> Result<bool> {
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
    pub(super) fn offline_merge(&self, merge: &LiveMerge) -> Result<()> {
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
}
