//! The CLI's commands: their arguments (clap, and serde for the local API:
//! a served request is the same command) and what each one does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use executor::xml::snapshot::{parse_revert, parse_snapshot, DiskRequest};
use executor::{CheckpointRequest, CreateRequest, DeleteRequest, Executor, RevertRequest};
use journal::DiskSnapshotMode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::output::{self, Out};

mod checkpoint;
mod domain;
mod redefine;
mod snapshot;

#[derive(Parser, Debug)]
#[command(
    name = "snapjournal",
    version,
    about = "Crash-safe journaled snapshots for QEMU VMs"
)]
pub struct Cli {
    /// State directory (journal, lock, rendered XML).
    #[arg(
        long,
        global = true,
        env = "SNAPJOURNAL_DIR",
        default_value = "/var/lib/snapjournal"
    )]
    pub state_dir: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Through a server only: return as soon as the operation's
    /// transaction has begun, printing its id (follow it with `journal
    /// wait TXN`); the operation runs on.
    #[arg(long, global = true)]
    pub detach: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum Cmd {
    /// Domains: define, undefine, list, dumpxml, history.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Snapshots: create, list, dumpxml, current, revert, delete.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Checkpoints (persistent dirty bitmaps): create, list, dumpxml,
    /// delete, redefine.
    #[command(subcommand)]
    Checkpoint(CheckpointCmd),
    /// Finish every open transaction (forward or back).
    Recover {
        /// Explain what would be done, change nothing.
        #[arg(long)]
        #[serde(default)]
        dry_run: bool,
    },
    /// Check the invariants; exit 0 clean, 1 findings, 2 could not check.
    Fsck {
        /// Only this domain.
        domain: Option<String>,
        /// Repair what is safe.
        #[arg(long)]
        #[serde(default)]
        repair: bool,
    },
    /// Journal maintenance.
    #[command(subcommand)]
    Journal(JournalCmd),
    /// Redefine sessions, for agents that add snapshot XML one at a time.
    #[command(subcommand)]
    Redefine(RedefineCmd),
    /// Show what snapjournal does, in under a minute: a scratch two-disk
    /// domain in a temporary directory, snapshots with data in every
    /// layer, a delete killed half-way, recovery, fsck, the data read back;
    /// then everything it made is removed (the state directory is not
    /// used).
    Demo {
        /// Keep the scratch directory to look at.
        #[arg(long)]
        #[serde(default)]
        keep: bool,
    },
    /// Serve the state directory on a unix socket (a foreground daemon):
    /// every other command, from any process, then goes through it.
    Serve {
        /// The socket (default: snapjournal.sock in the state directory).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// A group whose members may read (list, dumpxml, fsck) but not
        /// change anything; the socket becomes 0660 with this group.
        #[arg(long)]
        group: Option<String>,
        /// Seconds a stop (SIGTERM, SIGINT) waits for running requests
        /// before leaving them to recovery.
        #[arg(long, default_value_t = 600)]
        #[serde(default)]
        stop_timeout: u64,
        /// Seconds a connection may stay silent (no complete request)
        /// before the server closes it.
        #[arg(long, default_value_t = 30)]
        #[serde(default)]
        idle_timeout: u64,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum RedefineCmd {
    /// Open a session for a domain; prints its id.
    Begin { domain: String },
    /// Add one <domainsnapshot> or <domaincheckpoint> document.
    Add { id: String, file: PathBuf },
    /// Validate and define everything added, as one transaction.
    Commit {
        id: String,
        #[arg(long)]
        current: Option<String>,
    },
    /// Drop the session.
    Abort { id: String },
    /// Open sessions.
    List,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum DomainCmd {
    /// Define (or redefine) a domain from libvirt XML.
    ///
    /// At a domain's first definition, the image each disk writes to
    /// becomes the domain's own (merges may write into it; removed once
    /// nothing uses it) unless it is shared: marked `<shareable/>` or
    /// `<readonly/>`, named by --shared, or already another domain's.
    /// Backing images below it are never the domain's.
    Define {
        file: PathBuf,
        /// A disk (target, e.g. vda) whose image is shared: never modified
        /// nor removed by snapjournal (repeatable).
        #[arg(long = "shared", value_name = "DISK")]
        #[serde(default)]
        shared: Vec<String>,
        /// Every disk's image is shared.
        #[arg(long, conflicts_with = "shared")]
        #[serde(default)]
        all_shared: bool,
    },
    /// Forget a domain (images are never removed).
    Undefine {
        domain: String,
        /// Also drop the metadata of its snapshots.
        #[arg(long)]
        #[serde(default)]
        snapshots_metadata: bool,
    },
    /// List domains.
    List,
    /// Print a domain's XML.
    Dumpxml { domain: String },
    /// A domain's transaction history.
    History { domain: String },
    /// Start QEMU for a domain as its definition describes it (memory,
    /// vCPUs, machine type; KVM when usable, else TCG; vCPUs running
    /// unless --paused).
    Start {
        domain: String,
        #[arg(long)]
        #[serde(default)]
        paused: bool,
    },
    /// Stop a domain's QEMU (QMP quit: QEMU flushes and closes its images).
    Stop { domain: String },
    /// Use a QEMU started by someone else, reached at its QMP socket.
    Attach {
        domain: String,
        /// The QMP unix socket.
        #[arg(long)]
        qmp: String,
        /// QEMU's pid, to tell a dead QEMU from a busy monitor.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Forget a domain's QEMU without touching it.
    Detach { domain: String },
    /// Take over a domain libvirt runs, running or shut off: its
    /// definition, snapshots and checkpoints are recorded in one
    /// transaction; the overlays libvirt's snapshots created become the
    /// journal's (the base images stay yours). From then on snapjournal
    /// operates it through libvirt's API and rewrites libvirt's snapshot
    /// and checkpoint metadata from the journal after every change.
    Adopt {
        domain: String,
        /// Adopt from libvirt (the only source there is).
        #[arg(long)]
        #[serde(default)]
        libvirt: bool,
        /// libvirt's connection URI.
        #[arg(long, default_value = executor::libvirt::DEFAULT_URI)]
        #[serde(default = "default_libvirt_uri")]
        uri: String,
    },
}

fn default_libvirt_uri() -> String {
    executor::libvirt::DEFAULT_URI.to_string()
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotCmd {
    /// Take an external disk-only snapshot.
    Create {
        domain: String,
        /// Snapshot name (or from --xml).
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// `vda,file=PATH` or `vdb,snapshot=no` (repeatable).
        #[arg(long = "diskspec")]
        #[serde(default)]
        diskspecs: Vec<String>,
        /// A `<domainsnapshot>` document.
        #[arg(long)]
        xml: Option<PathBuf>,
        /// Take a checkpoint of this name in the same transaction.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// List snapshots.
    List {
        domain: String,
        #[arg(long)]
        #[serde(default)]
        tree: bool,
    },
    /// Print a snapshot's XML.
    Dumpxml { domain: String, name: String },
    /// Print the current snapshot.
    Current { domain: String },
    /// Revert to a snapshot (new overlays on its images).
    Revert {
        domain: String,
        name: String,
        /// A `<domainsnapshotrevert>` naming the new overlays.
        #[arg(long)]
        xml: Option<PathBuf>,
    },
    /// Define many snapshots from full <domainsnapshot> XML (with the
    /// historic <domain>), validated as a whole, all or nothing.
    Redefine {
        domain: String,
        /// Snapshot XML files.
        #[serde(default)]
        files: Vec<PathBuf>,
        /// Every *.xml file in this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Make this snapshot current.
        #[arg(long)]
        current: Option<String>,
        /// The overlays these snapshots name (made by libvirt or another
        /// tool) become the domain's own, so deletes may merge and remove
        /// them; the images below them stay the user's.
        #[arg(long)]
        #[serde(default)]
        adopt_images: bool,
    },
    /// Delete a snapshot (merging its image).
    Delete {
        domain: String,
        name: String,
        /// Delete its descendants too.
        #[arg(long)]
        #[serde(default)]
        children: bool,
        /// Drop metadata only, keep every image.
        #[arg(long)]
        #[serde(default)]
        metadata_only: bool,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointCmd {
    /// Take a checkpoint: a persistent dirty bitmap on each disk.
    Create {
        domain: String,
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// `vda,checkpoint=bitmap` or `vdb,checkpoint=no` (repeatable).
        #[arg(long = "diskspec")]
        #[serde(default)]
        diskspecs: Vec<String>,
    },
    /// Delete a checkpoint (its bitmaps merge into its parent's).
    Delete {
        domain: String,
        name: String,
        /// Drop metadata only, keep the bitmaps.
        #[arg(long)]
        #[serde(default)]
        metadata_only: bool,
    },
    /// List checkpoints.
    List {
        domain: String,
        #[arg(long)]
        #[serde(default)]
        tree: bool,
    },
    /// Print a checkpoint's XML.
    Dumpxml { domain: String, name: String },
    /// Define many checkpoints from full <domaincheckpoint> XML (with the
    /// historic <domain>), validated against the bitmaps in the images,
    /// all or nothing.
    Redefine {
        domain: String,
        #[serde(default)]
        files: Vec<PathBuf>,
        /// Every *.xml file in this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum JournalCmd {
    /// Fold history older than the given age into a checkpoint.
    Compact {
        /// Fold events older than this many seconds.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        #[serde(default = "default_older_than")]
        older_than: u64,
        /// Keep per-domain history for this many seconds.
        #[arg(long, default_value_t = 90 * 24 * 3600)]
        #[serde(default = "default_retention")]
        retention: u64,
    },
    /// Verify every record's checksum.
    Verify,
    /// One transaction: what it does, its phase (open) or outcome.
    Show { txn: String },
    /// Wait until a transaction is closed (one started with --detach);
    /// exit 0 finished, 1 aborted.
    Wait {
        txn: String,
        /// Give up after this many seconds (exit 2).
        #[arg(long, default_value_t = 3600)]
        #[serde(default = "default_wait")]
        timeout: u64,
    },
}

fn default_wait() -> u64 {
    3600
}

fn default_older_than() -> u64 {
    7 * 24 * 3600
}

fn default_retention() -> u64 {
    90 * 24 * 3600
}

/// Largest document read for a command.
pub const MAX_INPUT: u64 = 16 * 1024 * 1024;

/// Where a command's documents come from: the files it names (run here),
/// or the contents a client sent with its request (served: the server
/// never opens a path a client names).
pub enum Inputs {
    /// Read the named files.
    Files,
    /// The documents sent with a request, by the path the client named.
    Sent(BTreeMap<String, String>),
}

impl Inputs {
    /// Reads an input document: at most [`MAX_INPUT`] bytes, counted
    /// while reading (a pipe, a device like /dev/zero or a growing file is
    /// cut off there, not read until memory runs out); a UTF-8 byte-order
    /// mark is dropped.
    pub fn read(&self, path: &Path) -> Result<String> {
        let text = match self {
            Inputs::Files => read_file(path)?,
            Inputs::Sent(docs) => {
                let key = path.display().to_string();
                let doc = docs.get(&key).ok_or_else(|| {
                    anyhow!("document {key} was not sent with the request; nothing was changed")
                })?;
                if doc.len() as u64 > MAX_INPUT {
                    bail!("{key} holds more than the {MAX_INPUT} bytes accepted; nothing was changed");
                }
                doc.clone()
            }
        };
        Ok(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        })
    }

    /// `files`, then every `*.xml` file of `dir` in name order (a served
    /// request names files only: its client lists the directory).
    pub fn xml_files(&self, files: &[PathBuf], dir: Option<&PathBuf>) -> Result<Vec<PathBuf>> {
        match (self, dir) {
            (Inputs::Sent(_), Some(d)) => bail!(
                "a request to a server names documents, not a directory ({}); nothing was changed",
                d.display()
            ),
            _ => xml_files(files, dir),
        }
    }
}

fn read_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT {
        bail!(
            "{} holds more than the {MAX_INPUT} bytes accepted; nothing was changed",
            path.display()
        );
    }
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not UTF-8 text ({e}); nothing was changed", path.display()))
}

/// The documents `cmd` reads, by path, with any `--dir` replaced by the
/// files it holds: what a client sends with a request.
pub fn input_paths(cmd: &mut Cmd) -> Result<Vec<PathBuf>> {
    let expand = |files: &mut Vec<PathBuf>, dir: &mut Option<PathBuf>| -> Result<Vec<PathBuf>> {
        *files = xml_files(files, dir.as_ref())?;
        *dir = None;
        Ok(files.clone())
    };
    Ok(match cmd {
        Cmd::Domain(DomainCmd::Define { file, .. }) => vec![file.clone()],
        Cmd::Snapshot(SnapshotCmd::Create { xml: Some(x), .. })
        | Cmd::Snapshot(SnapshotCmd::Revert { xml: Some(x), .. }) => vec![x.clone()],
        Cmd::Snapshot(SnapshotCmd::Redefine { files, dir, .. }) => expand(files, dir)?,
        Cmd::Checkpoint(CheckpointCmd::Redefine { files, dir, .. }) => expand(files, dir)?,
        Cmd::Redefine(RedefineCmd::Add { file, .. }) => vec![file.clone()],
        _ => vec![],
    })
}

fn parse_diskspec(spec: &str) -> Result<DiskRequest> {
    let mut parts = spec.split(',');
    let disk = parts
        .next()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| anyhow!("--diskspec {spec:?}: no disk name"))?;
    let mut req = DiskRequest {
        disk: disk.to_string(),
        mode: DiskSnapshotMode::External,
        file: None,
    };
    for p in parts {
        match p.split_once('=') {
            Some(("file", f)) => req.file = Some(f.to_string()),
            Some(("snapshot", "no")) => req.mode = DiskSnapshotMode::No,
            Some(("snapshot", "external")) => req.mode = DiskSnapshotMode::External,
            Some(("driver", "qcow2")) => {}
            _ => bail!("--diskspec {spec:?}: unknown part {p:?} (expected file=PATH, snapshot=no|external)"),
        }
    }
    Ok(req)
}

/// `files`, then every `*.xml` file of `dir` in name order.
fn xml_files(files: &[PathBuf], dir: Option<&PathBuf>) -> Result<Vec<PathBuf>> {
    let mut paths = files.to_vec();
    if let Some(d) = dir {
        let mut found: Vec<PathBuf> = std::fs::read_dir(d)
            .with_context(|| format!("cannot list {}", d.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        found.sort();
        paths.extend(found);
    }
    Ok(paths)
}

fn parse_checkpoint_diskspec(spec: &str) -> Result<(String, bool)> {
    match spec.split_once(',') {
        Some((disk, "checkpoint=bitmap")) if !disk.is_empty() => Ok((disk.to_string(), true)),
        Some((disk, "checkpoint=no")) if !disk.is_empty() => Ok((disk.to_string(), false)),
        None if !spec.is_empty() => Ok((spec.to_string(), true)),
        _ => bail!("--diskspec {spec:?}: expected DISK,checkpoint=bitmap|no"),
    }
}

fn redefined(out: &Out, kind: &str, r: &executor::RedefineReport) {
    let txn = r.txn.map(|t| t.to_string());
    let mut text = format!(
        "{} {kind}(s) defined, {} already defined identically",
        r.defined.len(),
        r.unchanged.len()
    );
    if !r.checkpoints_defined.is_empty() || !r.checkpoints_unchanged.is_empty() {
        text.push_str(&format!(
            "; {} checkpoint(s) defined, {} already defined identically",
            r.checkpoints_defined.len(),
            r.checkpoints_unchanged.len()
        ));
    }
    if let Some(t) = &txn {
        text.push_str(&format!(" ({t})"));
    }
    out.done(
        json!({"txn": txn, "defined": r.defined, "unchanged": r.unchanged,
               "checkpoints_defined": r.checkpoints_defined, "checkpoints_unchanged": r.checkpoints_unchanged}),
        &text,
    );
}

/// Runs a command on the state directory directly (no server holds it):
/// opens it as the command needs, recovering first unless the command is
/// recovery or a check.
pub fn run_direct(cli: &Cli, out: &Out) -> Result<i32> {
    if cli.detach {
        bail!("--detach needs a running server (`snapjournal serve`) to carry the operation on; nothing was changed");
    }
    let mut exec = match &cli.cmd {
        Cmd::Recover { .. } | Cmd::Journal(JournalCmd::Verify) => {
            recovery::open_without_recovery(&cli.state_dir)?
        }
        Cmd::Fsck { .. } => match recovery::open_without_recovery(&cli.state_dir) {
            Ok(e) => e,
            Err(e) => {
                out.error(&format!("could not check: {e}"));
                return Ok(2);
            }
        },
        Cmd::Serve { .. } => bail!("serve is not a command of a client"),
        Cmd::Demo { keep } => return crate::demo::run(out, *keep),
        cmd => {
            let (exec, report) = if cmd.reads_only() {
                recovery::open_for_reading(&cli.state_dir)?
            } else {
                recovery::open(&cli.state_dir)?
            };
            if !report.transactions.is_empty() || !report.resumed.is_empty() {
                out.note(&format!(
                    "recovered open transactions first:\n{}",
                    report.explain()
                ));
            }
            exec
        }
    };
    exec.set_progress(crate::progress::reporter(out.json));
    execute(&exec, &cli.cmd, &Inputs::Files, out)
}

/// Who may run a command, and what it holds while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Reads only: runs beside anything.
    Read,
    /// Changes one domain: one such request per domain at a time.
    Domain(String),
    /// Changes a transaction's domain found while running (redefine
    /// sessions): the journal's own per-domain exclusion applies.
    Session,
    /// Touches every domain (recovery, repair, compaction): runs alone.
    Everything,
}

impl Cmd {
    /// Commands that only read the journal: they open it read-only when
    /// there is nothing to recover, and a server runs them beside anything.
    pub fn reads_only(&self) -> bool {
        matches!(
            self,
            Cmd::Domain(DomainCmd::List | DomainCmd::Dumpxml { .. } | DomainCmd::History { .. })
                | Cmd::Snapshot(
                    SnapshotCmd::List { .. } | SnapshotCmd::Dumpxml { .. } | SnapshotCmd::Current { .. }
                )
                | Cmd::Checkpoint(CheckpointCmd::List { .. } | CheckpointCmd::Dumpxml { .. })
                | Cmd::Redefine(RedefineCmd::List)
                | Cmd::Fsck { repair: false, .. }
                | Cmd::Recover { dry_run: true }
                | Cmd::Journal(JournalCmd::Verify | JournalCmd::Show { .. } | JournalCmd::Wait { .. })
        )
    }

    /// What the command holds while it runs in a server; `inputs` gives
    /// the name of a domain being defined.
    pub fn access(&self, inputs: &Inputs) -> Access {
        if self.reads_only() {
            return Access::Read;
        }
        match self {
            Cmd::Domain(DomainCmd::Define { file, .. }) => inputs
                .read(file)
                .ok()
                .and_then(|x| executor::xml::domain::parse_domain("domain", &x).ok())
                .map(|d| Access::Domain(d.name))
                .unwrap_or(Access::Session),
            Cmd::Domain(
                DomainCmd::Undefine { domain, .. }
                | DomainCmd::Start { domain, .. }
                | DomainCmd::Stop { domain }
                | DomainCmd::Attach { domain, .. }
                | DomainCmd::Detach { domain }
                | DomainCmd::Adopt { domain, .. },
            ) => Access::Domain(domain.clone()),
            Cmd::Snapshot(
                SnapshotCmd::Create { domain, .. }
                | SnapshotCmd::Revert { domain, .. }
                | SnapshotCmd::Redefine { domain, .. }
                | SnapshotCmd::Delete { domain, .. },
            ) => Access::Domain(domain.clone()),
            Cmd::Checkpoint(
                CheckpointCmd::Create { domain, .. }
                | CheckpointCmd::Delete { domain, .. }
                | CheckpointCmd::Redefine { domain, .. },
            ) => Access::Domain(domain.clone()),
            Cmd::Redefine(RedefineCmd::Begin { domain }) => Access::Domain(domain.clone()),
            Cmd::Redefine(_) => Access::Session,
            _ => Access::Everything,
        }
    }

    /// The domain the command names, if any (for errors).
    pub fn domain(&self) -> Option<&str> {
        match self {
            Cmd::Domain(
                DomainCmd::Undefine { domain, .. }
                | DomainCmd::Dumpxml { domain }
                | DomainCmd::History { domain }
                | DomainCmd::Start { domain, .. }
                | DomainCmd::Stop { domain }
                | DomainCmd::Attach { domain, .. }
                | DomainCmd::Detach { domain }
                | DomainCmd::Adopt { domain, .. },
            ) => Some(domain),
            Cmd::Snapshot(
                SnapshotCmd::Create { domain, .. }
                | SnapshotCmd::List { domain, .. }
                | SnapshotCmd::Dumpxml { domain, .. }
                | SnapshotCmd::Current { domain }
                | SnapshotCmd::Revert { domain, .. }
                | SnapshotCmd::Redefine { domain, .. }
                | SnapshotCmd::Delete { domain, .. },
            ) => Some(domain),
            Cmd::Checkpoint(
                CheckpointCmd::Create { domain, .. }
                | CheckpointCmd::Delete { domain, .. }
                | CheckpointCmd::List { domain, .. }
                | CheckpointCmd::Dumpxml { domain, .. }
                | CheckpointCmd::Redefine { domain, .. },
            ) => Some(domain),
            Cmd::Redefine(RedefineCmd::Begin { domain }) => Some(domain),
            Cmd::Fsck { domain, .. } => domain.as_deref(),
            _ => None,
        }
    }
}

/// Runs `cmd` on an open executor (recovered already, or opened as the
/// command needs); returns the exit code.
pub fn execute(exec: &Executor, cmd: &Cmd, inputs: &Inputs, out: &Out) -> Result<i32> {
    match cmd {
        Cmd::Domain(c) => return domain::run(exec, c, inputs, out),

        Cmd::Snapshot(c) => return snapshot::run(exec, c, inputs, out),

        Cmd::Checkpoint(c) => return checkpoint::run(exec, c, inputs, out),

        Cmd::Redefine(c) => return redefine::run(exec, c, inputs, out),

        Cmd::Recover { dry_run } => {
            let report = recovery::recover_all(exec, *dry_run)?;
            out.report(serde_json::to_value(&report)?, &report.explain());
            return Ok(if report.all_closed() { 0 } else { 1 });
        }
        Cmd::Fsck { domain, repair } => {
            let report = recovery::fsck(exec, domain.as_deref(), *repair)?;
            output::fsck(out, &report);
            if !out.json {
                let lines = exec.journal().with_state(|s| {
                    s.domains
                        .keys()
                        .filter(|d| domain.as_ref().is_none_or(|x| x == *d))
                        .flat_map(|d| output::ownership_lines(s, d))
                        .collect::<Vec<_>>()
                })?;
                if !lines.is_empty() {
                    out.line("images (who owns them):");
                    for l in lines {
                        out.line(&format!("  {l}"));
                    }
                }
            }
            return Ok(report.exit_code());
        }
        Cmd::Journal(JournalCmd::Compact {
            older_than,
            retention,
        }) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            let r = exec.journal().compact(
                now.saturating_sub(older_than * 1000),
                now.saturating_sub(retention * 1000),
            )?;
            out.done(
                json!({"events_folded": r.events_folded, "history_dropped": r.history_dropped}),
                &format!(
                    "folded {} events into the checkpoint, dropped {} history entries",
                    r.events_folded, r.history_dropped
                ),
            );
        }
        Cmd::Journal(JournalCmd::Verify) => {
            let bad = exec.journal().verify_records()?;
            let msgs: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
            out.report(
                json!({"corrupt": msgs}),
                &if msgs.is_empty() {
                    "every record is intact\n".to_string()
                } else {
                    msgs.join("\n") + "\n"
                },
            );
            return Ok(if msgs.is_empty() { 0 } else { 1 });
        }
        Cmd::Journal(JournalCmd::Show { txn }) => {
            let id: journal::TxnId = txn.parse().map_err(|e: String| anyhow!(e))?;
            let h = exec
                .journal()
                .transaction(id)?
                .ok_or_else(|| anyhow!("no transaction {id} in this journal (never begun here, or its history was compacted away)"))?;
            let (value, text) = output::transaction(&h);
            out.report(value, &text);
        }
        Cmd::Journal(JournalCmd::Wait { txn, timeout }) => {
            let id: journal::TxnId = txn.parse().map_err(|e: String| anyhow!(e))?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(*timeout);
            loop {
                let h = exec
                    .journal()
                    .transaction(id)?
                    .ok_or_else(|| anyhow!("no transaction {id} in this journal"))?;
                if h.outcome != journal::Outcome::Open {
                    let aborted = matches!(h.outcome, journal::Outcome::Aborted { .. });
                    let (value, text) = output::transaction(&h);
                    out.report(value, &text);
                    return Ok(if aborted { 1 } else { 0 });
                }
                if std::time::Instant::now() >= deadline {
                    out.error(&format!("transaction {id} is still open after {timeout} s"));
                    return Ok(2);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Cmd::Serve { .. } => bail!("serve is run by `snapjournal serve`, not sent as a request"),
        Cmd::Demo { .. } => bail!("the demo runs in the CLI (`snapjournal demo`), not through a server"),
    }
    Ok(0)
}
