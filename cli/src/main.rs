//! `snapjournal`: crash-safe, journaled snapshot transactions for QEMU
//! virtual machines. virsh-like verbs, human or `--json` output.

mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use executor::xml::snapshot::{parse_revert, parse_snapshot, DiskRequest};
use executor::{CheckpointRequest, CreateRequest, DeleteRequest, Executor, RevertRequest};
use journal::DiskSnapshotMode;
use serde_json::json;

use crate::output::Out;

/// Largest XML file read from the command line.
const MAX_INPUT: u64 = 16 * 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "snapjournal",
    version,
    about = "Crash-safe journaled snapshots for QEMU VMs"
)]
struct Cli {
    /// State directory (journal, lock, rendered XML).
    #[arg(
        long,
        global = true,
        env = "SNAPJOURNAL_DIR",
        default_value = "/var/lib/snapjournal"
    )]
    state_dir: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
        dry_run: bool,
    },
    /// Check the invariants; exit 0 clean, 1 findings, 2 could not check.
    Fsck {
        /// Only this domain.
        domain: Option<String>,
        /// Repair what is safe.
        #[arg(long)]
        repair: bool,
    },
    /// Journal maintenance.
    #[command(subcommand)]
    Journal(JournalCmd),
    /// Redefine sessions, for agents that add snapshot XML one at a time.
    #[command(subcommand)]
    Redefine(RedefineCmd),
}

#[derive(Subcommand)]
enum RedefineCmd {
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

#[derive(Subcommand)]
enum DomainCmd {
    /// Define (or redefine) a domain from libvirt XML.
    Define { file: PathBuf },
    /// Forget a domain (images are never removed).
    Undefine {
        domain: String,
        /// Also drop the metadata of its snapshots.
        #[arg(long)]
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
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Take an external disk-only snapshot.
    Create {
        domain: String,
        /// Snapshot name (or from --xml).
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// `vda,file=PATH` or `vdb,snapshot=no` (repeatable).
        #[arg(long = "diskspec")]
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
        files: Vec<PathBuf>,
        /// Every *.xml file in this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Make this snapshot current.
        #[arg(long)]
        current: Option<String>,
    },
    /// Delete a snapshot (merging its image).
    Delete {
        domain: String,
        name: String,
        /// Delete its descendants too.
        #[arg(long)]
        children: bool,
        /// Drop metadata only, keep every image.
        #[arg(long)]
        metadata_only: bool,
    },
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// Take a checkpoint: a persistent dirty bitmap on each disk.
    Create {
        domain: String,
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// `vda,checkpoint=bitmap` or `vdb,checkpoint=no` (repeatable).
        #[arg(long = "diskspec")]
        diskspecs: Vec<String>,
    },
    /// Delete a checkpoint (its bitmaps merge into its parent's).
    Delete {
        domain: String,
        name: String,
        /// Drop metadata only, keep the bitmaps.
        #[arg(long)]
        metadata_only: bool,
    },
    /// List checkpoints.
    List {
        domain: String,
        #[arg(long)]
        tree: bool,
    },
    /// Print a checkpoint's XML.
    Dumpxml { domain: String, name: String },
    /// Define many checkpoints from full <domaincheckpoint> XML (with the
    /// historic <domain>), validated against the bitmaps in the images,
    /// all or nothing.
    Redefine {
        domain: String,
        files: Vec<PathBuf>,
        /// Every *.xml file in this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Fold history older than the given age into a checkpoint.
    Compact {
        /// Fold events older than this many seconds.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        older_than: u64,
        /// Keep per-domain history for this many seconds.
        #[arg(long, default_value_t = 90 * 24 * 3600)]
        retention: u64,
    },
    /// Verify every record's checksum.
    Verify,
}

/// Reads an input document: at most [`MAX_INPUT`] bytes, counted while
/// reading (a pipe, a device like /dev/zero or a growing file is cut off
/// there, not read until memory runs out); a UTF-8 byte-order mark is
/// dropped.
fn read_input(path: &PathBuf) -> Result<String> {
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
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not UTF-8 text ({e}); nothing was changed", path.display()))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
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

fn open(cli: &Cli, out: &Out) -> Result<Executor> {
    let (exec, report) = if reads_only(&cli.cmd) {
        recovery::open_for_reading(&cli.state_dir)?
    } else {
        recovery::open(&cli.state_dir)?
    };
    if !report.transactions.is_empty() {
        out.note(&format!(
            "recovered open transactions first:\n{}",
            report.explain()
        ));
    }
    Ok(exec)
}

/// Commands that only read the journal: they open it read-only when there
/// is nothing to recover.
fn reads_only(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Domain(DomainCmd::List | DomainCmd::Dumpxml { .. } | DomainCmd::History { .. })
            | Cmd::Snapshot(
                SnapshotCmd::List { .. } | SnapshotCmd::Dumpxml { .. } | SnapshotCmd::Current { .. }
            )
            | Cmd::Checkpoint(CheckpointCmd::List { .. } | CheckpointCmd::Dumpxml { .. })
            | Cmd::Redefine(RedefineCmd::List)
    )
}

fn run(cli: &Cli, out: &Out) -> Result<i32> {
    match &cli.cmd {
        Cmd::Domain(c) => {
            let exec = open(cli, out)?;
            match c {
                DomainCmd::Define { file } => {
                    let xml = read_input(file)?;
                    let txn = exec.define_domain(&xml)?;
                    let name = executor::xml::domain::parse_domain("domain", &xml)
                        .map_err(executor::ExecError::from)?
                        .name;
                    out.done(
                        json!({"domain": name, "txn": txn.to_string()}),
                        &format!("Domain '{name}' defined ({txn})"),
                    );
                }
                DomainCmd::Undefine {
                    domain,
                    snapshots_metadata,
                } => {
                    let txn = exec.undefine_domain(domain, *snapshots_metadata)?;
                    out.done(
                        json!({"domain": domain, "txn": txn.to_string()}),
                        &format!("Domain '{domain}' undefined ({txn})"),
                    );
                }
                DomainCmd::List => exec.journal().with_state(|s| output::domain_list(out, s))?,
                DomainCmd::Dumpxml { domain } => {
                    // The definition alone, not a copy of every snapshot.
                    let xml = exec
                        .journal()
                        .with_state(|s| s.domains.get(domain).map(|d| d.core.xml.clone()))?
                        .ok_or_else(|| anyhow!("domain {domain} is not defined"))?;
                    out.raw(&xml);
                }
                DomainCmd::History { domain } => output::history(out, &exec.journal().history(domain)?),
                DomainCmd::Start { domain, paused } => {
                    let rt = exec.domain_start(domain, *paused)?;
                    let accel = exec.domain_accel(domain);
                    let how = match accel {
                        Some("kvm") => "KVM".to_string(),
                        Some(_) if executor::live::machine::kvm_usable() => {
                            "TCG: KVM did not start, see the QEMU log".to_string()
                        }
                        Some(_) => "TCG: /dev/kvm is not usable here".to_string(),
                        None => "accelerator unknown".to_string(),
                    };
                    out.done(
                        json!({"domain": domain, "qmp": rt.qmp_socket, "pid": rt.process(), "paused": paused, "accel": accel}),
                        &format!(
                            "Domain '{domain}' started{} ({how}; QMP socket {})",
                            if *paused { " paused" } else { "" },
                            rt.qmp_socket
                        ),
                    );
                }
                DomainCmd::Stop { domain } => {
                    let txn = exec.domain_stop(domain)?;
                    out.done(
                        json!({"domain": domain, "txn": txn.to_string()}),
                        &format!("Domain '{domain}' stopped ({txn})"),
                    );
                }
                DomainCmd::Attach { domain, qmp, pid } => {
                    let txn = exec.domain_attach(domain, qmp, *pid)?;
                    out.done(
                        json!({"domain": domain, "qmp": qmp, "txn": txn.to_string()}),
                        &format!("Domain '{domain}' attached to the QEMU at {qmp} ({txn})"),
                    );
                }
                DomainCmd::Detach { domain } => {
                    let txn = exec.domain_detach(domain)?;
                    out.done(
                        json!({"domain": domain, "txn": txn.to_string()}),
                        &format!("Domain '{domain}' detached ({txn})"),
                    );
                }
            }
        }
        Cmd::Snapshot(c) => {
            let mut exec = open(cli, out)?;
            exec.set_progress(progress::reporter(out.json));
            match c {
                SnapshotCmd::Create {
                    domain,
                    name,
                    description,
                    diskspecs,
                    xml,
                    checkpoint,
                } => {
                    let mut req = CreateRequest {
                        domain: domain.clone(),
                        name: name.clone().unwrap_or_default(),
                        description: description.clone(),
                        disks: vec![],
                        checkpoint: checkpoint.clone(),
                    };
                    if let Some(x) = xml {
                        let text = read_input(x)?;
                        let parsed = parse_snapshot(&x.display().to_string(), &text)
                            .map_err(executor::ExecError::from)?;
                        if req.name.is_empty() {
                            req.name = parsed.request.name.clone().unwrap_or_default();
                        }
                        if req.description.is_none() {
                            req.description = parsed.request.description.clone();
                        }
                        req.disks = parsed.request.disks;
                    }
                    for s in diskspecs {
                        let d = parse_diskspec(s)?;
                        req.disks.retain(|x| x.disk != d.disk);
                        req.disks.push(d);
                    }
                    if req.name.is_empty() {
                        bail!("no snapshot name given (as an argument or in --xml); nothing was changed");
                    }
                    let r = exec.snapshot_create(&req)?;
                    let mut msg = format!("Domain snapshot {} created ({})", req.name, r.txn);
                    if let Some(c) = &req.checkpoint {
                        msg.push_str(&format!("\nDomain checkpoint {c} created with it"));
                    }
                    out.done(
                        json!({"domain": domain, "snapshot": req.name, "txn": r.txn.to_string(),
                               "checkpoint": req.checkpoint, "bitmaps": r.bitmap_changes,
                               "overlays": r.overlays.iter().map(|(d, p)| json!({"disk": d, "file": p})).collect::<Vec<_>>()}),
                        &msg,
                    );
                }
                SnapshotCmd::List { domain, tree } => {
                    // Rendered from the journal's state in place: a domain
                    // with 10,000 snapshots is not copied to be listed.
                    exec.journal().with_state(|s| match s.domains.get(domain) {
                        Some(d) => {
                            output::snapshot_list(out, d, *tree);
                            Ok(())
                        }
                        None => Err(anyhow!("domain {domain} is not defined")),
                    })??;
                }
                SnapshotCmd::Dumpxml { domain, name } => {
                    let s = exec.journal().with_state(|st| {
                        let d = st
                            .domains
                            .get(domain)
                            .ok_or_else(|| anyhow!("domain {domain} is not defined"))?;
                        d.snapshots
                            .get(name)
                            .cloned()
                            .ok_or_else(|| anyhow!("domain {domain} has no snapshot called {name}"))
                    })??;
                    let historic = executor::metadata::snapshot_historic(exec.journal(), domain, name)?;
                    out.raw(&executor::xml::snapshot::render_snapshot(&s, &historic)?);
                }
                SnapshotCmd::Current { domain } => {
                    let current = exec.journal().with_state(|st| {
                        st.domains
                            .get(domain)
                            .map(|d| d.core.current_snapshot.clone())
                            .ok_or_else(|| anyhow!("domain {domain} is not defined"))
                    })??;
                    match &current {
                        Some(c) => out.done(json!({"current": c}), c),
                        None => bail!("domain {domain} has no current snapshot"),
                    }
                }
                SnapshotCmd::Revert { domain, name, xml } => {
                    let overlays = match xml {
                        Some(x) => parse_revert(&x.display().to_string(), &read_input(x)?)
                            .map_err(executor::ExecError::from)?,
                        None => Default::default(),
                    };
                    let r = exec.snapshot_revert(&RevertRequest {
                        domain: domain.clone(),
                        snapshot: name.clone(),
                        overlays,
                    })?;
                    let mut msg = format!("Domain '{domain}' reverted to snapshot {name} ({})", r.txn);
                    for k in &r.kept {
                        msg.push_str(&format!(
                            "\nkept {k}: not created by snapjournal (a disk the user swapped)"
                        ));
                    }
                    out.done(
                        json!({"domain": domain, "snapshot": name, "txn": r.txn.to_string(),
                               "overlays": r.overlays.iter().map(|(d, p)| json!({"disk": d, "file": p})).collect::<Vec<_>>(),
                               "removed": r.removed, "kept": r.kept, "restarted_running": r.restarted}),
                        &msg,
                    );
                }
                SnapshotCmd::Redefine {
                    domain,
                    files,
                    dir,
                    current,
                } => {
                    let paths = xml_files(files, dir.as_ref())?;
                    let mut items = Vec::with_capacity(paths.len());
                    for p in &paths {
                        items.push((p.display().to_string(), read_input(p)?));
                    }
                    let r = exec.snapshot_redefine(&executor::RedefineRequest {
                        domain: domain.clone(),
                        items,
                        current: current.clone(),
                    })?;
                    redefined(out, "snapshot", &r);
                }
                SnapshotCmd::Delete {
                    domain,
                    name,
                    children,
                    metadata_only,
                } => {
                    let r = exec.snapshot_delete(&DeleteRequest {
                        domain: domain.clone(),
                        snapshot: name.clone(),
                        children: *children,
                        metadata_only: *metadata_only,
                    })?;
                    let mut msg = format!("Domain snapshot {name} deleted ({})", r.txn);
                    for m in &r.merges {
                        msg.push_str(&format!("\n{}", m.describe()));
                    }
                    out.done(
                        json!({"domain": domain, "deleted": r.deleted, "txn": r.txn.to_string(),
                               "merges": r.merges.iter().map(|m| m.describe()).collect::<Vec<_>>(),
                               "removed": r.removed, "kept": r.released}),
                        &msg,
                    );
                }
            }
        }
        Cmd::Checkpoint(c) => {
            let exec = open(cli, out)?;
            let domain_state = |domain: &str| -> Result<journal::DomainState> {
                exec.journal()
                    .domain(domain)?
                    .ok_or_else(|| anyhow!("domain {domain} is not defined"))
            };
            match c {
                CheckpointCmd::Create {
                    domain,
                    name,
                    description,
                    diskspecs,
                } => {
                    let mut disks = Vec::new();
                    for s in diskspecs {
                        disks.push(parse_checkpoint_diskspec(s)?);
                    }
                    let r = exec.checkpoint_create(&CheckpointRequest {
                        domain: domain.clone(),
                        name: name.clone(),
                        description: description.clone(),
                        disks,
                    })?;
                    out.done(
                        json!({"domain": domain, "checkpoint": name, "txn": r.txn.to_string(), "bitmaps": r.bitmap_changes}),
                        &format!("Domain checkpoint {name} created ({})", r.txn),
                    );
                }
                CheckpointCmd::Delete {
                    domain,
                    name,
                    metadata_only,
                } => {
                    let r = exec.checkpoint_delete(domain, name, *metadata_only)?;
                    let mut msg = format!("Domain checkpoint {name} deleted ({})", r.txn);
                    for b in &r.bitmap_changes {
                        msg.push_str(&format!("\n{b}"));
                    }
                    out.done(
                        json!({"domain": domain, "checkpoint": name, "txn": r.txn.to_string(), "bitmaps": r.bitmap_changes}),
                        &msg,
                    );
                }
                CheckpointCmd::List { domain, tree } => {
                    output::checkpoint_list(out, &domain_state(domain)?, *tree)
                }
                CheckpointCmd::Dumpxml { domain, name } => {
                    let d = domain_state(domain)?;
                    let c = d
                        .checkpoints
                        .get(name)
                        .ok_or_else(|| anyhow!("domain {domain} has no checkpoint called {name}"))?;
                    let historic = executor::metadata::checkpoint_historic(exec.journal(), domain, name)?;
                    out.raw(&executor::xml::checkpoint::render_checkpoint(c, &historic)?);
                }
                CheckpointCmd::Redefine { domain, files, dir } => {
                    let mut items = Vec::new();
                    for p in xml_files(files, dir.as_ref())? {
                        items.push((p.display().to_string(), read_input(&p)?));
                    }
                    let r = exec.checkpoint_redefine(domain, &items)?;
                    redefined(out, "checkpoint", &r);
                }
            }
        }
        Cmd::Redefine(c) => {
            let exec = open(cli, out)?;
            match c {
                RedefineCmd::Begin { domain } => {
                    let id = exec.redefine_begin(domain)?;
                    out.done(json!({"id": id, "domain": domain}), &id);
                }
                RedefineCmd::Add { id, file } => {
                    let xml = read_input(file)?;
                    let item = exec.redefine_add(id, &file.display().to_string(), &xml)?;
                    out.done(
                        json!({"id": id, "item": item}),
                        &format!("added {item} to session {id}"),
                    );
                }
                RedefineCmd::Commit { id, current } => {
                    let r = exec.redefine_commit(id, current.clone())?;
                    redefined(out, "snapshot", &r);
                }
                RedefineCmd::Abort { id } => {
                    exec.redefine_abort(id)?;
                    out.done(
                        json!({"id": id}),
                        &format!("session {id} aborted; nothing was defined"),
                    );
                }
                RedefineCmd::List => {
                    let s = exec.redefine_sessions()?;
                    let text: String = s
                        .iter()
                        .map(|(id, d, n)| format!("{id}  domain {d}  {n} document(s)\n"))
                        .collect();
                    out.report(
                        json!(s
                            .iter()
                            .map(|(id, d, n)| json!({"id": id, "domain": d, "documents": n}))
                            .collect::<Vec<_>>()),
                        &text,
                    );
                }
            }
        }
        Cmd::Recover { dry_run } => {
            let exec = recovery::open_without_recovery(&cli.state_dir)?;
            let report = recovery::recover_all(&exec, *dry_run)?;
            out.report(serde_json::to_value(&report)?, &report.explain());
            return Ok(if report.all_closed() { 0 } else { 1 });
        }
        Cmd::Fsck { domain, repair } => {
            let exec = match recovery::open_without_recovery(&cli.state_dir) {
                Ok(e) => e,
                Err(e) => {
                    out.error(&format!("could not check: {e}"));
                    return Ok(2);
                }
            };
            let report = recovery::fsck(&exec, domain.as_deref(), *repair)?;
            output::fsck(out, &report);
            return Ok(report.exit_code());
        }
        Cmd::Journal(JournalCmd::Compact {
            older_than,
            retention,
        }) => {
            let exec = open(cli, out)?;
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
            let exec = recovery::open_without_recovery(&cli.state_dir)?;
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
    }
    Ok(0)
}

fn main() -> ExitCode {
    journal::crashpoint::init();
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    match run(&cli, &out) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            out.error(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}
