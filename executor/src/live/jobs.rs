//! Block jobs: start a `block-commit` or `block-stream` under an id derived
//! from the transaction, or find it again after the agent died; drive it to
//! its end (waiting for ready and completing an active commit with the
//! guest paused across the pivot); dismiss it; report progress.

use std::time::Duration;

use journal::LiveMerge;
use serde_json::json;

use super::graph::BlockGraph;
use super::qmp::{Cmd, Qmp, QmpError};
use super::{JobProgress, Live};

/// The job id of step `step` of transaction `txn`.
pub fn job_id(txn: journal::TxnId, step: u32) -> String {
    format!("sj-{}-{step}", txn.0)
}

/// Whether QEMU's graph shows `merge` done on device `disk`: after a
/// commit, `top` is no longer in the device's chain; after a stream, `top`
/// stands directly on `below`.
pub fn merge_done(graph: &BlockGraph, disk: &str, merge: &LiveMerge) -> bool {
    match merge {
        LiveMerge::Commit { top, base, .. } => {
            let dev = graph
                .devices
                .iter()
                .find(|d| d.id == disk || d.chain.iter().any(|l| l.path == base.path));
            match dev {
                Some(d) => !d.chain.iter().any(|l| l.path == top.path),
                None => false,
            }
        }
        LiveMerge::Stream { top, below, .. } => graph.devices.iter().any(|d| {
            d.chain.iter().position(|l| l.path == top.path).is_some_and(|i| {
                d.chain.get(i + 1).map(|l| l.path.as_str()) == below.as_ref().map(|b| b.path.as_str())
            })
        }),
    }
}

fn start(q: &mut Qmp, id: &str, merge: &LiveMerge) -> Result<(), QmpError> {
    match merge {
        LiveMerge::Commit {
            device_node,
            top_node,
            base_node,
            ..
        } => q.execute(
            Cmd::BlockCommit,
            json!({
                "job-id": id,
                "device": device_node,
                "top-node": top_node,
                "base-node": base_node,
                "auto-dismiss": false,
            }),
        ),
        LiveMerge::Stream {
            top_node, below_node, ..
        } => {
            let mut args = json!({ "job-id": id, "device": top_node, "auto-dismiss": false });
            if let Some(b) = below_node {
                args["base-node"] = json!(b);
            }
            q.execute(Cmd::BlockStream, args)
        }
    }
    .map(|_| ())
}

/// What went wrong in a block job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("block job {id} failed in QEMU: {message}")]
    Failed { id: String, message: String },
}

/// Drives the job of `merge` to its end on `q`, starting it unless it is
/// found running or already done. An active commit is completed with the
/// guest's vCPUs stopped; the caller records the step and resumes them.
pub fn run(
    live: &Live,
    q: &mut Qmp,
    domain: &str,
    disk: &str,
    id: &str,
    merge: &LiveMerge,
) -> Result<(), JobError> {
    let kind = match merge {
        LiveMerge::Commit { .. } => "commit",
        LiveMerge::Stream { .. } => "stream",
    };
    let active = matches!(merge, LiveMerge::Commit { active: true, .. });
    let mut started = false;
    let mut completing = false;
    loop {
        let job = q.job(id)?;
        let Some(job) = job else {
            if merge_done(&BlockGraph::read_devices(q)?, disk, merge) {
                return Ok(());
            }
            if started {
                return Err(JobError::Failed {
                    id: id.to_string(),
                    message: "the job disappeared before the merge was done".into(),
                });
            }
            start(q, id, merge)?;
            journal::crashpoint::crash_point("live.job.started");
            started = true;
            continue;
        };
        live.report(&JobProgress {
            domain: domain.to_string(),
            disk: disk.to_string(),
            job: id.to_string(),
            kind: kind.to_string(),
            status: job.status.clone(),
            current: job.current,
            total: job.total,
        });
        match job.status.as_str() {
            "ready" if active && !completing => {
                // No guest write may land in the base after the pivot
                // without the journal knowing the pivot happened: the vCPUs
                // stay stopped until the step is recorded.
                journal::crashpoint::crash_point("live.job.ready");
                q.execute(Cmd::Stop, json!({}))?;
                q.execute(Cmd::JobComplete, json!({ "id": id }))?;
                journal::crashpoint::crash_point("live.job.completing");
                completing = true;
            }
            "concluded" => {
                journal::crashpoint::crash_point("live.job.concluded");
                q.execute(Cmd::JobDismiss, json!({ "id": id }))?;
                if let Some(message) = job.error {
                    return Err(JobError::Failed {
                        id: id.to_string(),
                        message,
                    });
                }
                return Ok(());
            }
            "paused" | "standby" => {
                return Err(JobError::Failed {
                    id: id.to_string(),
                    message: format!("the job is {} in QEMU", job.status),
                })
            }
            // A QMP round trip costs a fraction of a millisecond.
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
