//! Running a domain: `domain start`, `stop`, `attach`, `detach`, and the
//! bookkeeping when a QEMU is found gone.

use std::path::{Path, PathBuf};

use journal::{Intent, Plan, Runtime, StateChange, Step, TxnId};
use serde_json::json;

use super::check_world_chains;
use crate::engine::Executor;
use crate::error::{ExecError, PlanError, Result};
use crate::live::graph::BlockGraph;
use crate::live::qmp::{Cmd, Qmp};

/// Where a managed QEMU keeps its socket and pidfile.
pub fn run_paths(state_dir: &Path, domain: &str) -> (PathBuf, PathBuf) {
    let run = state_dir.join("run");
    (
        run.join(format!("{domain}.qmp")),
        run.join(format!("{domain}.pid")),
    )
}

impl Executor {
    fn defined(&self, domain: &str) -> Result<journal::DomainState> {
        self.journal().domain(domain)?.ok_or_else(|| {
            ExecError::from(PlanError::DomainNotDefined {
                domain: domain.to_string(),
            })
        })
    }

    /// The accelerator the running QEMU of `domain` uses (`kvm` or `tcg`),
    /// as QEMU reports it; `None` when it cannot be asked.
    pub fn domain_accel(&self, domain: &str) -> Option<&'static str> {
        let rt = self.journal().domain(domain).ok()??.core.runtime?;
        let v = self
            .live()
            .with_qemu(&rt, |q| q.execute(Cmd::QueryKvm, json!({})))
            .ok()??;
        Some(
            if v.get("enabled").and_then(serde_json::Value::as_bool) == Some(true) {
                "kvm"
            } else {
                "tcg"
            },
        )
    }

    /// Starts QEMU for a stopped domain (vCPUs running unless `paused`).
    pub fn domain_start(&self, domain: &str, paused: bool) -> Result<Runtime> {
        let dom = self.defined(domain)?;
        self.refuse_libvirt_runtime(domain, "start")?;
        if let Some(rt) = &dom.core.runtime {
            return Err(PlanError::AlreadyRunning {
                domain: domain.to_string(),
                detail: Some(format!("QMP socket {}", rt.qmp_socket)),
            }
            .into());
        }
        check_world_chains(&dom)?;
        // What QEMU cannot be started as is refused before anything is
        // written.
        crate::live::machine::machine_spec(domain, &dom.core.xml).map_err(ExecError::refused)?;
        let (socket, pidfile) = run_paths(self.journal().dir(), domain);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ExecError::Metadata {
                path: dir.display().to_string(),
                message: format!("cannot create the run directory: {e}"),
            })?;
        }
        if socket.as_os_str().len() >= 108 {
            return Err(ExecError::refused(format!(
                "the QMP socket path {} is too long for a unix socket; use a shorter state directory",
                socket.display()
            )));
        }
        let socket_s = socket.display().to_string();
        let pidfile_s = pidfile.display().to_string();
        // The pid is only known once QEMU runs: the runtime names the
        // pidfile QEMU writes it to.
        let plan = Plan {
            steps: vec![Step::LaunchQemu {
                domain: domain.to_string(),
                qmp_socket: socket_s.clone(),
                pidfile: pidfile_s.clone(),
                paused,
            }],
            commit_index: 1,
            changes: vec![StateChange::RuntimeSet {
                domain: domain.to_string(),
                runtime: Some(Runtime {
                    qmp_socket: socket_s,
                    pid: None,
                    pidfile: Some(pidfile_s),
                    managed: true,
                }),
            }],
        };
        let intent = Intent::DomainStart {
            domain: domain.to_string(),
            paused,
        };
        self.run(intent, plan, Some(&dom))?;
        let rt =
            self.defined(domain)?.core.runtime.ok_or_else(|| {
                ExecError::Live(format!("domain {domain}: started but no runtime recorded"))
            })?;
        if !paused {
            self.live()
                .with_qemu(&rt, |q| q.execute(Cmd::Cont, json!({})).map(|_| ()))
                .map_err(|e| ExecError::Live(e.to_string()))?;
        }
        Ok(rt)
    }

    /// Stops the domain's QEMU (`quit`: QEMU flushes and closes its images).
    pub fn domain_stop(&self, domain: &str) -> Result<TxnId> {
        let dom = self.defined(domain)?;
        self.refuse_libvirt_runtime(domain, "shutdown")?;
        let Some(rt) = dom.core.runtime.clone() else {
            return Err(ExecError::from(PlanError::NotRunning {
                domain: domain.to_string(),
            }));
        };
        self.stop_transaction(domain, &dom, rt, false)
    }

    fn stop_transaction(
        &self,
        domain: &str,
        dom: &journal::DomainState,
        rt: Runtime,
        crashed: bool,
    ) -> Result<TxnId> {
        let plan = Plan {
            steps: vec![Step::StopQemu {
                domain: domain.to_string(),
                qmp_socket: rt.qmp_socket.clone(),
                pid: rt.process(),
            }],
            commit_index: 0,
            changes: vec![StateChange::RuntimeSet {
                domain: domain.to_string(),
                runtime: None,
            }],
        };
        let txn = self.run(
            Intent::DomainStop {
                domain: domain.to_string(),
                crashed,
            },
            plan,
            Some(dom),
        )?;
        if rt.managed {
            let _ = std::fs::remove_file(&rt.qmp_socket);
            let (_, pidfile) = run_paths(self.journal().dir(), domain);
            let _ = std::fs::remove_file(pidfile);
        }
        Ok(txn)
    }

    /// Records a QEMU started by someone else as the domain's runtime,
    /// after checking that every disk's chain in QEMU is the journal's.
    pub fn domain_attach(&self, domain: &str, qmp_socket: &str, pid: Option<u32>) -> Result<TxnId> {
        let dom = self.defined(domain)?;
        if dom.core.runtime.is_some() {
            return Err(ExecError::from(PlanError::AlreadyRunning {
                domain: domain.to_string(),
                detail: None,
            }));
        }
        let mut q = Qmp::connect(Path::new(qmp_socket)).map_err(|e| ExecError::refused(e.to_string()))?;
        let graph = BlockGraph::read(&mut q).map_err(|e| ExecError::refused(e.to_string()))?;
        drop(q);
        super::device_chains(&dom, &graph, &format!("QEMU at {qmp_socket}"))?;
        let plan = Plan {
            steps: vec![],
            commit_index: 0,
            changes: vec![StateChange::RuntimeSet {
                domain: domain.to_string(),
                runtime: Some(Runtime {
                    qmp_socket: qmp_socket.to_string(),
                    pid,
                    pidfile: None,
                    managed: false,
                }),
            }],
        };
        self.run(
            Intent::DomainAttach {
                domain: domain.to_string(),
                qmp_socket: qmp_socket.to_string(),
            },
            plan,
            Some(&dom),
        )
    }

    /// Forgets the domain's runtime without touching QEMU.
    pub fn domain_detach(&self, domain: &str) -> Result<TxnId> {
        let dom = self.defined(domain)?;
        if dom.core.runtime.is_none() {
            return Err(ExecError::from(PlanError::NotRunning {
                domain: domain.to_string(),
            }));
        }
        let plan = Plan {
            steps: vec![],
            commit_index: 0,
            changes: vec![StateChange::RuntimeSet {
                domain: domain.to_string(),
                runtime: None,
            }],
        };
        self.run(
            Intent::DomainDetach {
                domain: domain.to_string(),
            },
            plan,
            Some(&dom),
        )
    }

    /// For every domain the state says runs: if its QEMU is gone, records
    /// it stopped. Returns the domains found gone.
    pub fn reap_gone_domains(&self) -> Result<Vec<String>> {
        // The runtimes only: the state (all snapshots) is not copied.
        let running: Vec<(String, Runtime)> = self.journal().with_state(|s| {
            s.domains
                .iter()
                .filter_map(|(name, d)| Some((name.clone(), d.core.runtime.clone()?)))
                .collect()
        })?;
        let mut gone = Vec::new();
        for (name, rt) in running {
            match self.live().gone(&rt) {
                Ok(false) | Err(_) => continue,
                Ok(true) => {}
            }
            let Some(dom) = self.journal().domain(&name)? else {
                continue;
            };
            self.stop_transaction(&name, &dom, rt, true)?;
            gone.push(name);
        }
        Ok(gone)
    }

    /// Domains a live revert stopped and a crash kept from starting again
    /// (their [`crate::resume::ResumeNote`]): each is started as it ran
    /// (vCPUs running or paused). Returns one line per note saying what was
    /// done (or, with `dry_run`, would be). A note whose domain is gone or
    /// runs already is dropped; a domain that cannot be started is said so,
    /// with the command that starts it, and its note dropped (said once).
    pub fn resume_interrupted_reverts(&self, dry_run: bool) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for note in crate::resume::ResumeNote::all(self.journal().dir()) {
            let how = if note.running { "running" } else { "paused" };
            let d = &note.domain;
            let Some(dom) = self.journal().domain(d)? else {
                if !dry_run {
                    crate::resume::ResumeNote::remove(self.journal().dir(), d)?;
                }
                out.push(format!(
                    "domain {d}: stopped for a revert, since undefined; nothing to start"
                ));
                continue;
            };
            let libvirt = self.journal().libvirt_uri(d)?;
            let runs = match &libvirt {
                Some(uri) => self.libvirt().is_active(uri, d).unwrap_or(false),
                None => dom.core.runtime.is_some(),
            };
            if runs {
                if !dry_run {
                    crate::resume::ResumeNote::remove(self.journal().dir(), d)?;
                }
                continue;
            }
            if self.journal().busy_with(d)?.is_some() {
                continue;
            }
            if dry_run {
                out.push(format!(
                    "domain {d}: stopped for its revert to {} when the agent died; will start it again {how}",
                    note.snapshot
                ));
                continue;
            }
            let started = match &libvirt {
                Some(uri) => self
                    .libvirt()
                    .start(uri, d, !note.running)
                    .map_err(|e| ExecError::Live(e.to_string())),
                None => self.domain_start(d, !note.running).map(drop),
            };
            let line = match started {
                Ok(()) => format!(
                    "domain {d}: stopped for its revert to {} when the agent died; started it again {how}",
                    note.snapshot
                ),
                Err(e) => format!(
                    "domain {d}: stopped for its revert to {} when the agent died, and it could not be started again ({e}); it stays stopped: `snapjournal domain start {d}{}`",
                    note.snapshot,
                    if note.running { "" } else { " --paused" }
                ),
            };
            crate::resume::ResumeNote::remove(self.journal().dir(), d)?;
            out.push(line);
        }
        Ok(out)
    }
}
