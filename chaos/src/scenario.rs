//! The operations the chaos suite crashes, each with its setup and the data
//! every view must hold before and after.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::fixture::Fixture;

/// Pattern bytes written into the layers, one region each.
pub const A: u8 = 0xa1;
pub const B: u8 = 0xb2;
pub const C: u8 = 0xc3;
pub const D: u8 = 0xd4;

/// What a view (region → pattern) must read; regions not listed read 0.
pub type View = BTreeMap<u64, u8>;

fn view(p: &[(u64, u8)]) -> View {
    p.iter().copied().collect()
}

/// An operation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// `snapshot create vm s1` on a fresh domain.
    Create,
    /// `snapshot create vm s3` with s1 and s2 present.
    CreateOnChain,
    /// `snapshot revert vm s1` with s1 and s2 present.
    Revert,
    /// `snapshot delete vm s1`: the root-adjacent snapshot (pull into s1's
    /// overlay: the base is a user file).
    DeleteRoot,
    /// `snapshot delete vm s2`: the newest snapshot (commit or pull between
    /// two journal overlays).
    DeleteLeaf,
    /// `snapshot delete vm s2` of s1 ← s2 ← s3: a middle snapshot.
    DeleteMiddle,
    /// `snapshot delete vm s1 --metadata-only`.
    DeleteMetadataOnly,
    /// `snapshot redefine vm --dir export --current s2`: s1 and s2
    /// exported, their metadata dropped, imported again in one transaction.
    Redefine,
    /// `checkpoint create vm c2` with s1, s2 and checkpoint c1 present
    /// (bitmaps in s2's overlays).
    CheckpointCreate,
    /// `snapshot create vm s3 --checkpoint c2`: one transaction adds the
    /// overlays and the new bitmaps, and disables c1's.
    SnapshotWithCheckpoint,
    /// `checkpoint delete vm c2` of c1 ← c2, with c1 carried into s2's
    /// overlays and c2 into s3's: c2 merges into c1 in both, and s3's
    /// overlays get c1 (recording) in c2's place.
    CheckpointDelete,
    /// `snapshot delete vm s2` with the checkpoints of
    /// [`Op::CheckpointDelete`]: the merge carries c1's and c2's bitmaps
    /// into the image below.
    DeleteWithCheckpoints,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 12] = [
        Op::Create,
        Op::CreateOnChain,
        Op::Revert,
        Op::DeleteRoot,
        Op::DeleteLeaf,
        Op::DeleteMiddle,
        Op::DeleteMetadataOnly,
        Op::Redefine,
        Op::CheckpointCreate,
        Op::SnapshotWithCheckpoint,
        Op::CheckpointDelete,
        Op::DeleteWithCheckpoints,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::CreateOnChain => "create-on-chain",
            Op::Revert => "revert",
            Op::DeleteRoot => "delete-root",
            Op::DeleteLeaf => "delete-leaf",
            Op::DeleteMiddle => "delete-middle",
            Op::DeleteMetadataOnly => "delete-metadata-only",
            Op::Redefine => "redefine",
            Op::CheckpointCreate => "checkpoint-create",
            Op::SnapshotWithCheckpoint => "snapshot-with-checkpoint",
            Op::CheckpointDelete => "checkpoint-delete",
            Op::DeleteWithCheckpoints => "delete-with-checkpoints",
        }
    }

    /// Whether the operation is about checkpoints (their bitmaps).
    pub fn is_checkpoint_op(self) -> bool {
        matches!(
            self,
            Op::CheckpointCreate
                | Op::SnapshotWithCheckpoint
                | Op::CheckpointDelete
                | Op::DeleteWithCheckpoints
        )
    }

    /// Parses a short name.
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.name() == s)
    }

    /// The CLI arguments of the operation.
    pub fn args(self) -> Vec<&'static str> {
        match self {
            Op::Create => vec!["snapshot", "create", "vm", "s1"],
            Op::CreateOnChain => vec!["snapshot", "create", "vm", "s3"],
            Op::Revert => vec!["snapshot", "revert", "vm", "s1"],
            Op::DeleteRoot => vec!["snapshot", "delete", "vm", "s1"],
            Op::DeleteLeaf | Op::DeleteMiddle | Op::DeleteWithCheckpoints => {
                vec!["snapshot", "delete", "vm", "s2"]
            }
            Op::DeleteMetadataOnly => vec!["snapshot", "delete", "vm", "s1", "--metadata-only"],
            // Relative to the fixture's root, the working directory of
            // every `snapjournal` run.
            Op::Redefine => vec!["snapshot", "redefine", "vm", "--dir", "export", "--current", "s2"],
            Op::CheckpointCreate => vec!["checkpoint", "create", "vm", "c2"],
            Op::SnapshotWithCheckpoint => vec!["snapshot", "create", "vm", "s3", "--checkpoint", "c2"],
            Op::CheckpointDelete => vec!["checkpoint", "delete", "vm", "c2"],
        }
    }

    /// Brings a fresh fixture to the state the operation starts from:
    /// A in region 0 of the base; s1; B in region 1; s2; C in region 2
    /// (and s3, D in region 3, for a middle delete).
    pub fn setup(self, f: &Fixture) -> Result<()> {
        f.write_present(A, 0)?;
        if self == Op::Create {
            return Ok(());
        }
        f.ok(&["snapshot", "create", "vm", "s1"])?;
        let with_checkpoints = matches!(self, Op::CheckpointDelete | Op::DeleteWithCheckpoints);
        if with_checkpoints {
            f.ok(&["checkpoint", "create", "vm", "c1"])?;
        }
        f.write_present(B, 1)?;
        f.ok(&["snapshot", "create", "vm", "s2"])?;
        match self {
            Op::CheckpointCreate | Op::SnapshotWithCheckpoint => {
                f.ok(&["checkpoint", "create", "vm", "c1"])?;
            }
            Op::CheckpointDelete | Op::DeleteWithCheckpoints => {
                f.ok(&["checkpoint", "create", "vm", "c2"])?;
            }
            _ => {}
        }
        f.write_present(C, 2)?;
        if self == Op::DeleteMiddle {
            f.ok(&["snapshot", "create", "vm", "s3"])?;
            f.write_present(D, 3)?;
        }
        if with_checkpoints {
            f.ok(&["snapshot", "create", "vm", "s3"])?;
        }
        if self == Op::Redefine {
            let export = f.root.path().join("export");
            std::fs::create_dir_all(&export)?;
            for s in ["s1", "s2"] {
                std::fs::write(
                    export.join(format!("{s}.xml")),
                    f.ok(&["snapshot", "dumpxml", "vm", s])?,
                )?;
            }
            let dom = f.root.path().join("vm-now.xml");
            std::fs::write(&dom, f.ok(&["domain", "dumpxml", "vm"])?)?;
            f.ok(&["domain", "undefine", "vm", "--snapshots-metadata"])?;
            f.ok(&["domain", "define", &dom.to_string_lossy(), "--all-shared"])?;
        }
        Ok(())
    }

    /// What each snapshot's view holds (the same before and after).
    pub fn snapshot_views(self) -> BTreeMap<&'static str, View> {
        let mut m = BTreeMap::new();
        match self {
            Op::Create => {
                m.insert("s1", view(&[(0, A)]));
            }
            _ => {
                m.insert("s1", view(&[(0, A)]));
                m.insert("s2", view(&[(0, A), (1, B)]));
                m.insert("s3", view(&[(0, A), (1, B), (2, C)]));
            }
        }
        m
    }

    /// The present view before the operation.
    pub fn present_before(self) -> View {
        match self {
            Op::Create => view(&[(0, A)]),
            Op::DeleteMiddle => view(&[(0, A), (1, B), (2, C), (3, D)]),
            _ => view(&[(0, A), (1, B), (2, C)]),
        }
    }

    /// The present view after the operation.
    pub fn present_after(self) -> View {
        match self {
            Op::Revert => view(&[(0, A)]),
            other => other.present_before(),
        }
    }
}
