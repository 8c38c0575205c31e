//! A fixture's running QEMU: start it through the CLI, write guest-visible
//! patterns through QEMU's own device (qemu-io in the monitor), read its
//! block graph, kill it. Every QEMU a fixture started is killed when the
//! fixture is dropped.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use executor::live::graph::BlockGraph;
use executor::live::qemu;
use executor::live::qmp::Qmp;

use crate::fixture::{Fixture, REGION};

impl Fixture {
    /// The QMP socket of the domain's managed QEMU.
    pub fn qmp_socket(&self) -> String {
        self.state
            .join("run")
            .join(format!("{}.qmp", self.domain))
            .display()
            .to_string()
    }

    /// The pid of the domain's managed QEMU, if it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.note_qemus();
        let pidfile = self.state.join("run").join(format!("{}.pid", self.domain));
        qemu::read_pidfile(&pidfile)
    }

    /// The file the QMP traffic of this fixture's runs is logged to.
    pub fn qmp_trace(&self) -> std::path::PathBuf {
        self.root.path().join("qmp-trace.log")
    }

    /// Notes every QEMU the pidfiles of the state directory name, for the
    /// witness.
    pub fn note_qemus(&self) {
        for p in self.pidfiles() {
            self.witness.note(&p);
        }
    }

    /// The pidfiles of the state directory's managed QEMUs.
    fn pidfiles(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.state.join("run"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .collect()
    }

    /// Every QEMU of this fixture that died in a way neither the test nor
    /// snapjournal explains (a crash), each reported once, with its log and
    /// the QMP traffic.
    pub fn qemu_deaths(&self) -> Vec<String> {
        self.note_qemus();
        self.witness.unexplained_deaths(Some(&self.qmp_trace()))
    }

    /// Starts the domain (vCPUs stopped: no guest OS is needed).
    pub fn start(&self) -> Result<()> {
        self.ok(&["domain", "start", &self.domain, "--paused"])?;
        Ok(())
    }

    /// A QMP connection to the domain's QEMU. QEMU's monitor serves one
    /// client at a time: drop it before running `snapjournal`.
    pub fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(Path::new(&self.qmp_socket())).map_err(|e| anyhow!("{e}"))
    }

    /// Writes `pattern` over `region` of every disk through the running
    /// guest's devices, and flushes.
    pub fn guest_write(&self, pattern: u8, region: u64) -> Result<()> {
        self.note_qemus();
        let mut q = self.qmp()?;
        for d in &self.disks {
            q.guest_write(d, pattern, region * REGION, REGION)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("guest write to {d}"))?;
        }
        Ok(())
    }

    /// QEMU's block graph.
    pub fn graph(&self) -> Result<BlockGraph> {
        let mut q = self.qmp()?;
        BlockGraph::read(&mut q).map_err(|e| anyhow!("{e}"))
    }

    /// QEMU's chain of each disk (paths, active first).
    pub fn qemu_chains(&self) -> Result<Vec<(String, Vec<String>)>> {
        let g = self.graph()?;
        Ok(g.devices
            .iter()
            .map(|d| (d.id.clone(), d.chain.iter().map(|l| l.path.clone()).collect()))
            .collect())
    }

    /// Whether the guest's vCPUs run.
    pub fn vcpus_running(&self) -> Result<bool> {
        self.qmp()?.running().map_err(|e| anyhow!("{e}"))
    }

    /// Kills the domain's QEMU the hard way (SIGKILL), as a host crash of
    /// QEMU would.
    pub fn kill_qemu(&self) {
        if let Some(pid) = self.qemu_pid() {
            self.witness.killed_by_test(pid);
            qemu::signal(pid, libc::SIGKILL);
            qemu::wait_exit(pid, std::time::Duration::from_secs(10));
        }
    }
}

impl Drop for Fixture {
    /// Kills every QEMU the fixture started. A QEMU that died unexplained
    /// and that no check reported fails the test here (unless it is failing
    /// already).
    fn drop(&mut self) {
        let deaths = self.qemu_deaths();
        for p in self.pidfiles() {
            if let Some(pid) = qemu::read_pidfile(&p) {
                self.witness.killed_by_test(pid);
                qemu::signal(pid, libc::SIGKILL);
                qemu::wait_exit(pid, std::time::Duration::from_secs(10));
            }
        }
        self.witness.reap_all();
        if !deaths.is_empty() && !std::thread::panicking() {
            panic!("{}", deaths.join("\n"));
        }
    }
}
