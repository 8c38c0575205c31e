//! The graph read rule: QEMU's block graph is read only while no block job
//! is finishing or finished-but-not-dismissed.
//!
//! QEMU 7.2 crashes (SIGSEGV, a NULL read at offset 0x40 in
//! `bdrv_refresh_filename`, called from `bdrv_block_device_info` under
//! `bdrv_named_nodes_list`) when `query-named-block-nodes` runs
//! - after a `block-stream` job concluded and before it is dismissed:
//!   the job still holds the copy-on-read filter node it inserted, whose
//!   child was detached when the filter left the graph, and building that
//!   node's information follows the detached child (measured: 10 of 10
//!   queries crashed QEMU; 0 of 10 once the job was dismissed);
//! - while such a job finishes: building each node's information polls the
//!   main loop and the job's completion runs inside that poll (4 of 10
//!   streams crashed QEMU when the graph was read in a loop meanwhile).
//!
//! `query-jobs` alone never crashed it. So before the graph is read, every
//! job must be ready or paused (it changes nothing by itself), and a
//! concluded job of ours (`sj-` ids) is dismissed first: its outcome is
//! either recorded already or re-derived by the idempotent step that
//! started it. A concluded job of someone else's is not ours to dismiss:
//! the read is refused with the reason.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::qmp::{JobInfo, Qmp, QmpError};

/// How long the jobs may stand still (no status or progress change) before
/// the wait gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How many consecutive polls a `ready` job whose completion this process
/// did not request must stay `ready` before it counts as settled (a killed
/// agent may have sent `job-complete` just before it died).
const READY_CONFIRMATIONS: u32 = 3;

/// Whether `status` is one in which QEMU changes the graph on its own:
/// a job that runs to its end (stream, non-active commit), or one between
/// its end and `concluded` (its filter node is being removed).
pub fn status_may_change_graph(status: &str) -> bool {
    !matches!(status, "concluded" | "null" | "ready" | "paused" | "standby")
}

/// Whether job `id` is one snapjournal started (and may dismiss).
pub fn is_ours(id: &str) -> bool {
    id.starts_with("sj-")
}

/// Whether any of `jobs` may change the graph now: one in a moving status,
/// or a `ready` one whose completion was requested (`completing`).
pub fn graph_may_change(jobs: &[JobInfo], completing: &BTreeSet<String>) -> bool {
    jobs.iter()
        .any(|j| status_may_change_graph(&j.status) || (j.status == "ready" && completing.contains(&j.id)))
}

/// Waits until no block job of `q`'s QEMU can change the graph by itself
/// (see the module doc), polling `query-jobs`. Fails when the jobs stand
/// still for `STALL_LIMIT`.
pub fn wait_settled(q: &mut Qmp) -> Result<(), QmpError> {
    let mut last: Option<Vec<(String, String, u64)>> = None;
    let mut last_change = Instant::now();
    let mut ready_seen = 0;
    loop {
        let jobs = q.jobs()?;
        if jobs.is_empty() {
            return Ok(());
        }
        let moving = graph_may_change(&jobs, q.completing());
        if !moving {
            if let Some(j) = jobs.iter().find(|j| j.status == "concluded") {
                if !is_ours(&j.id) {
                    return Err(QmpError::Unsettled {
                        socket: q.socket().display().to_string(),
                        jobs: format!(
                            "{} (concluded, not dismissed; not snapjournal's: dismiss it with job-dismiss)",
                            j.id
                        ),
                    });
                }
                q.execute(super::qmp::Cmd::JobDismiss, serde_json::json!({ "id": j.id }))?;
                continue;
            }
        }
        let any_ready = jobs.iter().any(|j| j.status == "ready");
        if !moving {
            if !any_ready || ready_seen + 1 >= READY_CONFIRMATIONS {
                return Ok(());
            }
            ready_seen += 1;
        } else {
            ready_seen = 0;
        }
        let now: Vec<(String, String, u64)> = jobs
            .iter()
            .map(|j| (j.id.clone(), j.status.clone(), j.current))
            .collect();
        if last.as_ref() != Some(&now) {
            last = Some(now);
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL_LIMIT {
            return Err(QmpError::Unsettled {
                socket: q.socket().display().to_string(),
                jobs: jobs
                    .iter()
                    .map(|j| format!("{} ({}, {}/{})", j.id, j.status, j.current, j.total))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        std::thread::sleep(Duration::from_millis(if moving { 2 } else { 5 }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, status: &str) -> JobInfo {
        JobInfo {
            id: id.into(),
            kind: "stream".into(),
            status: status.into(),
            current: 0,
            total: 0,
            error: None,
        }
    }

    #[test]
    fn only_jobs_that_can_end_by_themselves_block_a_graph_read() {
        let none = BTreeSet::new();
        for s in [
            "created",
            "running",
            "waiting",
            "pending",
            "aborting",
            "undefined",
        ] {
            assert!(graph_may_change(&[job("j", s)], &none), "{s}");
        }
        for s in ["concluded", "null", "ready", "paused", "standby"] {
            assert!(!graph_may_change(&[job("j", s)], &none), "{s}");
        }
        assert!(!graph_may_change(&[], &none));
    }

    #[test]
    fn a_ready_job_being_completed_blocks_a_graph_read() {
        let completing: BTreeSet<String> = ["j".to_string()].into();
        assert!(graph_may_change(&[job("j", "ready")], &completing));
        assert!(!graph_may_change(&[job("k", "ready")], &completing));
        assert!(graph_may_change(
            &[job("k", "concluded"), job("j", "running")],
            &BTreeSet::new()
        ));
    }
}
