//! Dirty-bitmap changes in a running QEMU: the QMP `transaction` actions of
//! a [`BitmapOp`] list, and whether QEMU's graph shows them done.

use journal::{BitmapAction, BitmapOp};
use serde_json::{json, Value};

use super::graph::BlockGraph;

/// The `transaction` actions of `ops`, in order. Fails when an image is not
/// open in QEMU.
pub fn actions(graph: &BlockGraph, ops: &[BitmapOp]) -> Result<Vec<Value>, String> {
    ops.iter()
        .map(|op| {
            let node = graph
                .format_node_of(&op.image)
                .map(str::to_string)
                // An overlay added in the same plan is opened under our name.
                .unwrap_or_else(|| super::graph::format_node(&op.image));
            Ok(match &op.action {
                BitmapAction::Add { name, enabled } => json!({
                    "type": "block-dirty-bitmap-add",
                    "data": { "node": node, "name": name, "persistent": true, "disabled": !enabled },
                }),
                BitmapAction::Enable { name } => json!({
                    "type": "block-dirty-bitmap-enable",
                    "data": { "node": node, "name": name },
                }),
                BitmapAction::Disable { name } => json!({
                    "type": "block-dirty-bitmap-disable",
                    "data": { "node": node, "name": name },
                }),
                BitmapAction::Merge { source, target } => json!({
                    "type": "block-dirty-bitmap-merge",
                    "data": { "node": node, "target": target, "bitmaps": [source] },
                }),
                BitmapAction::Remove { name } => json!({
                    "type": "block-dirty-bitmap-remove",
                    "data": { "node": node, "name": name },
                }),
                BitmapAction::MergeFrom {
                    source_image,
                    source,
                    target,
                } => {
                    let from = graph
                        .format_node_of(source_image)
                        .ok_or_else(|| format!("{source_image} is not open in QEMU"))?;
                    json!({
                        "type": "block-dirty-bitmap-merge",
                        "data": { "node": node, "target": target,
                                  "bitmaps": [{ "node": from, "name": source }] },
                    })
                }
            })
        })
        .collect()
}

/// The part of a bitmap carry ([`journal::Step::LiveBitmapCarry`]) QEMU's
/// graph does not show yet: adds of bitmaps that are there and enables of
/// bitmaps that record are left out (QEMU refuses to add a bitmap twice);
/// merges always stay (an OR repeated changes nothing).
pub fn carry_pending(graph: &BlockGraph, ops: &[BitmapOp]) -> Vec<BitmapOp> {
    ops.iter()
        .filter(|op| match &op.action {
            BitmapAction::Add { name, .. } => graph.bitmap(&op.image, name).is_none(),
            BitmapAction::Enable { name } => graph.bitmap(&op.image, name).is_none_or(|b| !b.recording),
            _ => true,
        })
        .cloned()
        .collect()
}

/// Whether QEMU's graph shows `ops` (one atomic transaction) done: every
/// bitmap it adds is there and every bitmap it removes is gone; a list that
/// only enables or disables is done when every flag is as asked.
pub fn seen(graph: &BlockGraph, ops: &[BitmapOp]) -> bool {
    let decisive = ops
        .iter()
        .filter(|op| matches!(op.action, BitmapAction::Add { .. } | BitmapAction::Remove { .. }))
        .count();
    ops.iter().all(|op| match &op.action {
        BitmapAction::Add { name, .. } => graph.bitmap(&op.image, name).is_some(),
        BitmapAction::Remove { name } => graph.bitmap(&op.image, name).is_none(),
        BitmapAction::Enable { name } if decisive == 0 => {
            graph.bitmap(&op.image, name).is_none_or(|b| b.recording)
        }
        BitmapAction::Disable { name } if decisive == 0 => {
            graph.bitmap(&op.image, name).is_none_or(|b| !b.recording)
        }
        _ => true,
    })
}
