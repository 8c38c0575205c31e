//! Dirty-bitmap steps: one change through qemu-img, a QMP transaction of
//! changes, and the carry of a folded image's bitmaps after a block job.

#[allow(unused_imports)]
use super::*;

impl World<'_> {
    /// Whether the world shows a bitmap step done.
    pub(super) fn probe_bitmaps(&self, step: &Step) -> Result<bool> {
        Ok(match step {
            Step::Bitmap { op, .. } => self.bitmap_done_offline(op)?,
            Step::LiveBitmaps { domain, ops } => self.on_qemu_or_files(
                domain,
                |q| Ok(live_bitmaps::seen(&BlockGraph::read(q)?, ops)),
                || self.all_done_offline(ops),
            )?,
            // Repeated until the folded image's node is gone (the next
            // step deletes it): every action of a carry is idempotent.
            Step::LiveBitmapCarry {
                domain, from, ops, ..
            } => self.on_qemu_or_files(
                domain,
                |q| Ok(BlockGraph::read(q)?.format_node_of(from).is_none()),
                || self.all_done_offline(ops),
            )?,
            other => return Err(not_in_family(other, "bitmap")),
        })
    }

    /// Runs a bitmap step (idempotent).
    pub(super) fn apply_bitmaps(&self, step: &Step) -> Result<()> {
        match step {
            Step::Bitmap { op, .. } => self.apply_bitmap_offline(op),
            // Sent only when QEMU's graph does not show it done.
            Step::LiveBitmaps { domain, ops } => self.bitmap_transaction(domain, ops, |graph| {
                (!live_bitmaps::seen(graph, ops)).then(|| ops.to_vec())
            }),
            // What is not done yet, while the folded image's node is there.
            Step::LiveBitmapCarry {
                domain, from, ops, ..
            } => self.bitmap_transaction(domain, ops, |graph| {
                graph
                    .format_node_of(from)
                    .map(|_| live_bitmaps::carry_pending(graph, ops))
            }),
            other => Err(not_in_family(other, "bitmap")),
        }
    }

    /// Undoes a bitmap step before the commit point.
    pub(super) fn undo_bitmaps(&self, step: &Step) -> Result<()> {
        match step {
            Step::Bitmap { op, .. } => {
                let undo = match &op.action {
                    BitmapAction::Add { name, .. } => BitmapAction::Remove { name: name.clone() },
                    BitmapAction::Disable { name } => BitmapAction::Enable { name: name.clone() },
                    BitmapAction::Enable { name } => BitmapAction::Disable { name: name.clone() },
                    _ => {
                        return Err(ExecError::refused(format!(
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
            other => Err(cannot_undo(other)),
        }
    }

    /// ONE QMP `transaction` of the bitmap changes `pending` picks from
    /// QEMU's graph (`None` or nothing: done already); QEMU gone: every
    /// change of `ops` on the files.
    fn bitmap_transaction(
        &self,
        domain: &str,
        ops: &[BitmapOp],
        pending: impl FnOnce(&BlockGraph) -> Option<Vec<BitmapOp>>,
    ) -> Result<()> {
        let sent = self.on_qemu_or_files(
            domain,
            |q| {
                let graph = BlockGraph::read(q)?;
                let Some(todo) = pending(&graph).filter(|t| !t.is_empty()) else {
                    return Ok(Ok(()));
                };
                let actions = match live_bitmaps::actions(&graph, &todo) {
                    Ok(a) => a,
                    Err(e) => return Ok(Err(e)),
                };
                crash_point("live.bitmaps.before");
                q.execute(Cmd::Transaction, json!({ "actions": actions }))?;
                crash_point("live.bitmaps.after");
                Ok(Ok(()))
            },
            || {
                for op in ops {
                    self.apply_bitmap_offline(op)?;
                }
                Ok(Ok(()))
            },
        )?;
        sent.map_err(|e| ExecError::Live(format!("domain {domain}: {e}")))
    }

    /// Whether the images show every change of `ops` done (for a live
    /// bitmap step whose QEMU is gone).
    fn all_done_offline(&self, ops: &[BitmapOp]) -> Result<bool> {
        let mut all = true;
        for op in ops {
            all &= self.bitmap_done_offline(op)?;
        }
        Ok(all)
    }

    /// Whether the image shows a bitmap change done. A bitmap left in use by
    /// a QEMU that died cannot be enabled, disabled or merged any more:
    /// those count as done (the change tracking it held is lost either way).
    pub(super) fn bitmap_done_offline(&self, op: &BitmapOp) -> Result<bool> {
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
    pub(super) fn apply_bitmap_offline(&self, op: &BitmapOp) -> Result<()> {
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
}
