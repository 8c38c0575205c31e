//! A killed server: the operation goes through `snapjournal serve`, the
//! server dies (SIGKILL) at a crash point, its client must say what
//! happened, the server restarts (recovering as always) and every
//! invariant is checked.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::fixture::Fixture;
use crate::runner::{recover_and_judge, Case, Outcome, Prepared, Reference};
use crate::scenario::Op;

/// Starts `snapjournal serve` on the fixture with extra environment and
/// waits until it listens.
pub fn start_server(f: &Fixture, env: &[(&str, String)]) -> Result<Child> {
    start_server_with(f, env, &[])
}

/// [`start_server`] with extra arguments to `serve`.
pub fn start_server_with(f: &Fixture, env: &[(&str, String)], args: &[&str]) -> Result<Child> {
    let mut c = f.command(&["serve"]);
    c.args(args);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(server_log(f))?;
    c.stdout(Stdio::null()).stderr(log);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn()?;
    let socket = f.state.join("snapjournal.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(st) = child.try_wait()? {
            bail!("the server exited before it listened: {st}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the server did not listen within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

/// Where the fixture's servers log.
pub fn server_log(f: &Fixture) -> std::path::PathBuf {
    f.root.path().join("server.log")
}

fn log_tail(f: &Fixture) -> String {
    let text = std::fs::read_to_string(server_log(f)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Stops a server cleanly (SIGTERM) and waits for it.
pub fn stop_server(f: &Fixture, mut child: Child) -> Result<()> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait()?;
    if !st.success() {
        bail!("the server stopped with {st}; its log ends:\n{}", log_tail(f));
    }
    Ok(())
}

/// The crash points an operation passes in the server (the server's
/// trace, the operation sent by the CLI).
pub fn reference_trace(op: Op, disks: usize) -> Result<Vec<String>> {
    let f = Fixture::new(disks)?;
    op.setup(&f)?;
    let tf = f.root.path().join("trace-served");
    let server = start_server(&f, &[("SNAPJOURNAL_CRASH_TRACE", tf.display().to_string())])?;
    let out = f.run(&op.args())?;
    stop_server(&f, server)?;
    if !out.status.success() {
        bail!(
            "served reference run of {} failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    crate::runner::read_trace(&tf)
}

/// One case: the server killed at its `crash_at`-th crash point while it
/// runs `op` for the CLI.
pub fn run_case(prepared: &Prepared, reference: &Reference, trace: &[String], crash_at: u64) -> Result<Case> {
    let started = Instant::now();
    prepared.restore()?;
    let f = &prepared.fixture;
    let op = prepared.op;
    let point = trace
        .get(crash_at as usize - 1)
        .cloned()
        .unwrap_or_else(|| "?".into());
    let mut case = Case {
        op: format!("{}+server", op.name()),
        disks: f.disks.len(),
        crash_at,
        point: point.clone(),
        recovery_crash_at: None,
        recovery_point: None,
        outcome: Outcome::NotReached,
        millis: 0,
    };
    let mut server = start_server(f, &[("SNAPJOURNAL_CRASH_AT", crash_at.to_string())])?;
    let out = f.run(&op.args())?;
    // A client that failed saw the connection end: the server is dying;
    // wait for it.
    if !out.status.success() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let killed = match server.try_wait()? {
        Some(st) => st.signal() == Some(libc::SIGKILL),
        None => {
            // The operation ended before the crash point: not reached.
            stop_server(f, server)?;
            case.millis = started.elapsed().as_millis();
            return Ok(case);
        }
    };
    if !killed {
        let st = server.wait()?;
        case.outcome = Outcome::Violation(vec![format!(
            "the server exited with {st}, not at the crash point"
        )]);
        return Ok(case);
    }
    // The client's word: non-zero, naming the transaction once one began.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut client_said = Vec::new();
    if out.status.success() {
        client_said.push("the client of a killed server exited 0".to_string());
    }
    let began = trace[..crash_at as usize].iter().any(|p| p == "txn.begun");
    let named = stderr.contains("the server stopped while running transaction txn-")
        && stderr.contains("recovery finishes it");
    let unchanged = stderr.contains("nothing was changed");
    let said_enough = if began { named } else { named || unchanged };
    if !said_enough {
        client_said.push(format!(
            "the client did not say what became of the request: {stderr}"
        ));
    }
    // Restart: the server recovers on open; stop it, then judge.
    let again = start_server(f, &[])?;
    stop_server(f, again)?;
    let mut case = recover_and_judge(f, op, reference, &prepared.sums, case, started)?;
    if !client_said.is_empty() {
        case.outcome = match case.outcome {
            Outcome::Violation(mut v) => {
                v.extend(client_said);
                Outcome::Violation(v)
            }
            _ => Outcome::Violation(client_said),
        };
    }
    Ok(case)
}

/// Every crash point of each operation on one disk, through a server.
pub fn run(ops: &[Op], parallel: usize) -> Result<Vec<Case>> {
    struct Job {
        op: Op,
        reference: Arc<Reference>,
        trace: Arc<Vec<String>>,
        crash_at: u64,
    }
    let mut jobs = Vec::new();
    for &op in ops {
        let reference = Arc::new(crate::runner::reference(op, 1)?);
        let trace = Arc::new(reference_trace(op, 1)?);
        eprintln!("{}+server on 1 disk(s): {} crash points", op.name(), trace.len());
        for c in 1..=trace.len() as u64 {
            jobs.push(Job {
                op,
                reference: reference.clone(),
                trace: trace.clone(),
                crash_at: c,
            });
        }
    }
    // One prepared fixture per operation and thread (a fixture is
    // restored in place before each case).
    type Key = (&'static str, std::thread::ThreadId);
    let prepared: std::sync::Mutex<std::collections::HashMap<Key, Arc<Prepared>>> = Default::default();
    Ok(crate::runner::run_parallel(
        jobs,
        parallel,
        Some("served"),
        |j: Job| {
            let key = (j.op.name(), std::thread::current().id());
            let p = {
                let mut g = prepared.lock().unwrap_or_else(|e| e.into_inner());
                match g.get(&key) {
                    Some(p) => Ok(p.clone()),
                    None => Prepared::new(j.op, 1).map(|p| {
                        let p = Arc::new(p);
                        g.insert(key, p.clone());
                        p
                    }),
                }
            };
            match p.and_then(|p| run_case(&p, &j.reference, &j.trace, j.crash_at)) {
                Ok(c) => c,
                Err(e) => {
                    Case::could_not_run(format!("{}+server", j.op.name()), 1, j.crash_at, "?".into(), &e)
                }
            }
        },
    ))
}
