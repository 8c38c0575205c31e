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
        }
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
