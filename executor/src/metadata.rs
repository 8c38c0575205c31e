//! The rendered XML files of the state directory: `domains/<dom>.xml` and
//! `snapshots/<dom>/<snap>.xml` and `checkpoints/<dom>/<cp>.xml`, a projection of the journal's state,
//! written atomically (temp file, fsync, rename, fsync of the directory).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use journal::crashpoint::crash_point;
use journal::{Journal, State, StateChange};

use crate::error::{ExecError, Result};
use crate::xml::checkpoint::render_checkpoint;
use crate::xml::snapshot::{parse_extras, render_snapshot_with, SnapshotExtras};

/// Prefix of temporary files; a file with it left behind is a stray.
pub const TEMP_PREFIX: &str = ".tmp-";

/// The XML files under a state directory.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    root: PathBuf,
}

fn meta_err(path: &Path, e: impl std::fmt::Display) -> ExecError {
    ExecError::Metadata {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl MetadataStore {
    /// The files under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        MetadataStore {
            root: state_dir.to_path_buf(),
        }
    }

    /// `domains/<dom>.xml`.
    pub fn domain_file(&self, domain: &str) -> PathBuf {
        self.root.join("domains").join(format!("{domain}.xml"))
    }

    /// `snapshots/<dom>/`.
    pub fn snapshot_dir(&self, domain: &str) -> PathBuf {
        self.root.join("snapshots").join(domain)
    }

    /// `checkpoints/<dom>/`.
    pub fn checkpoint_dir(&self, domain: &str) -> PathBuf {
        self.root.join("checkpoints").join(domain)
    }

    /// Every file the state says should exist for `domain`, with its
    /// content (the historic `<domain>` documents read from `journal`).
    pub fn expected_files(
        &self,
        journal: &Journal,
        state: &State,
        domain: &str,
    ) -> Result<BTreeMap<PathBuf, String>> {
        self.expected_domain_files(journal, state.domains.get(domain), domain)
    }

    /// [`MetadataStore::expected_files`] from the domain's own state
    /// (`None`: not defined, no file expected).
    pub fn expected_domain_files(
        &self,
        journal: &Journal,
        dom: Option<&journal::DomainState>,
        domain: &str,
    ) -> Result<BTreeMap<PathBuf, String>> {
        let mut out = BTreeMap::new();
        if let Some(d) = dom {
            out.insert(self.domain_file(domain), d.core.xml.clone());
            let docs = journal.snapshot_domain_xmls(domain)?;
            let mut extras = BTreeMap::new();
            for (name, x) in journal.snapshot_extras_all(domain)? {
                extras.insert(
                    name.clone(),
                    parse_extras(&format!("stored extras of snapshot {name}"), &x)?,
                );
            }
            for s in d.snapshots.values() {
                out.insert(
                    self.snapshot_dir(domain).join(format!("{}.xml", s.name)),
                    render_snapshot_with(
                        s,
                        document(&docs, "snapshot", domain, &s.name)?,
                        extras.get(&s.name),
                    )?,
                );
            }
            let docs = journal.checkpoint_domain_xmls(domain)?;
            for c in d.checkpoints.values() {
                out.insert(
                    self.checkpoint_dir(domain).join(format!("{}.xml", c.name)),
                    render_checkpoint(c, document(&docs, "checkpoint", domain, &c.name)?)?,
                );
            }
        }
        Ok(out)
    }

    /// Every file present on disk for `domain` (including stray temp files,
    /// also those of its domain file in the directory every domain shares:
    /// a listing of that directory, for fsck and the full sync).
    pub fn present_files(&self, domain: &str) -> Result<Vec<PathBuf>> {
        let mut out = self.own_files(domain);
        let dir = self.root.join("domains");
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(TEMP_PREFIX) && n.ends_with(&format!("-{domain}.xml")) {
                    out.push(e.path());
                }
            }
        }
        Ok(out)
    }

    /// The files of `domain` found without listing the shared `domains/`
    /// directory: its domain file and everything in its own snapshot and
    /// checkpoint directories. What a transaction's sync and the step
    /// probe look at, so their cost does not grow with the number of
    /// domains.
    pub fn own_files(&self, domain: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let f = self.domain_file(domain);
        if f.exists() {
            out.push(f);
        }
        for dir in [self.snapshot_dir(domain), self.checkpoint_dir(domain)] {
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// Removes the stray temp files of crashed writers from the shared
    /// `domains/` directory (one listing; recovery calls it once).
    pub fn remove_shared_strays(&self) -> Result<usize> {
        let dir = self.root.join("domains");
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let p = e.path();
                    crate::durable::remove_file(&p)
                        .map_err(|e| meta_err(&p, format!("cannot remove: {e}")))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Domains that have files on disk.
    pub fn domains_on_disk(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        if let Ok(rd) = fs::read_dir(self.root.join("domains")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(d) = n.strip_suffix(".xml") {
                    let d = match d.strip_prefix(TEMP_PREFIX) {
                        Some(rest) => rest.split_once('-').map(|x| x.1).unwrap_or(rest),
                        None => d,
                    };
                    out.insert(d.to_string());
                }
            }
        }
        for dir in ["snapshots", "checkpoints"] {
            if let Ok(rd) = fs::read_dir(self.root.join(dir)) {
                for e in rd.flatten() {
                    out.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Whether the files of `domain` equal the rendering of its state
    /// (`dom`). A stray temp file of its domain file in the shared
    /// directory is not looked for: with every file's content right, it
    /// can only be left from an earlier crash (a writer renames before it
    /// writes the next file), and recovery sweeps those.
    pub fn in_sync(
        &self,
        journal: &Journal,
        dom: Option<&journal::DomainState>,
        domain: &str,
    ) -> Result<bool> {
        let expected = self.expected_domain_files(journal, dom, domain)?;
        let present = self.own_files(domain);
        if present.len() != expected.len() {
            return Ok(false);
        }
        for p in present {
            match expected.get(&p) {
                Some(content) => {
                    if fs::read(&p).ok().as_deref() != Some(content.as_bytes()) {
                        return Ok(false);
                    }
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Makes the files of `domain` equal the rendering of `state`: rewrites
    /// what differs, removes what the state does not have (and stray temp
    /// files). Idempotent.
    pub fn sync_domain(&self, journal: &Journal, state: &State, domain: &str) -> Result<()> {
        let expected = self.expected_files(journal, state, domain)?;
        let stale: Vec<(&Path, &[u8])> = expected
            .iter()
            .filter(|(path, content)| fs::read(path).ok().as_deref() != Some(content.as_bytes()))
            .map(|(p, c)| (p.as_path(), c.as_bytes()))
            .collect();
        write_files(&stale)?;
        for p in self.present_files(domain)? {
            if !expected.contains_key(&p) {
                crash_point("xml.remove.before");
                crate::durable::remove_file(&p).map_err(|e| meta_err(&p, format!("cannot remove: {e}")))?;
            }
        }
        if !state.domains.contains_key(domain) {
            for dir in [self.snapshot_dir(domain), self.checkpoint_dir(domain)] {
                if dir.exists() {
                    fs::remove_dir(&dir)
                        .and_then(|()| crate::durable::fsync_parent(&dir))
                        .map_err(|e| meta_err(&dir, format!("cannot remove directory: {e}")))?;
                }
            }
        }
        Ok(())
    }
}

/// The error for a recorded snapshot or checkpoint (`kind`) whose historic
/// `<domain>` the journal lacks: the journal is damaged.
pub fn missing_historic(kind: &str, domain: &str, name: &str) -> ExecError {
    ExecError::refused(format!(
        "the journal has no historic <domain> for {kind} {name} of domain {domain} (damaged journal; run fsck)"
    ))
}

/// The historic `<domain>` of snapshot `name` of `domain`.
pub fn snapshot_historic(journal: &Journal, domain: &str, name: &str) -> Result<String> {
    journal
        .snapshot_domain_xml(domain, name)?
        .ok_or_else(|| missing_historic("snapshot", domain, name))
}

/// The parts of snapshot `name`'s redefined document its record does not
/// model (`None`: it had none).
pub fn snapshot_extras(journal: &Journal, domain: &str, name: &str) -> Result<Option<SnapshotExtras>> {
    match journal.snapshot_extras(domain, name)? {
        Some(x) => Ok(Some(parse_extras(
            &format!("stored extras of snapshot {name} of domain {domain}"),
            &x,
        )?)),
        None => Ok(None),
    }
}

/// Snapshot `name` of `domain` as libvirt's `<domainsnapshot>`: its record,
/// historic `<domain>` and kept extras.
pub fn render_snapshot_of(
    journal: &Journal,
    domain: &str,
    record: &journal::SnapshotRecord,
) -> Result<String> {
    let historic = snapshot_historic(journal, domain, &record.name)?;
    let extras = snapshot_extras(journal, domain, &record.name)?;
    Ok(render_snapshot_with(record, &historic, extras.as_ref())?)
}

/// The historic `<domain>` of checkpoint `name` of `domain`.
pub fn checkpoint_historic(journal: &Journal, domain: &str, name: &str) -> Result<String> {
    journal
        .checkpoint_domain_xml(domain, name)?
        .ok_or_else(|| missing_historic("checkpoint", domain, name))
}

/// The historic `<domain>` of an item from documents read in advance.
fn document<'a, K: std::borrow::Borrow<str> + Ord>(
    docs: &'a BTreeMap<K, String>,
    kind: &str,
    domain: &str,
    name: &str,
) -> Result<&'a str> {
    docs.get(name)
        .map(String::as_str)
        .ok_or_else(|| missing_historic(kind, domain, name))
}

/// The XML items a transaction's state changes touch in one domain; `None`
/// when the whole domain must be rendered (it was defined or undefined).
pub fn touched_items(changes: &[StateChange], domain: &str) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let mut snapshots = BTreeSet::new();
    let mut checkpoints = BTreeSet::new();
    for c in changes {
        if c.domain() != Some(domain) {
            continue;
        }
        match c {
            StateChange::DomainDefined { .. } | StateChange::DomainUndefined { .. } => return None,
            StateChange::SnapshotRecorded { snapshot, .. } => {
                snapshots.insert(snapshot.name.clone());
            }
            StateChange::SnapshotRemoved { snapshot, .. }
            | StateChange::SnapshotReparented { snapshot, .. }
            | StateChange::SnapshotExtrasRecorded { snapshot, .. } => {
                snapshots.insert(snapshot.clone());
            }
            StateChange::CheckpointRecorded { checkpoint, .. } => {
                checkpoints.insert(checkpoint.name.clone());
            }
            StateChange::CheckpointRemoved { checkpoint, .. } => {
                checkpoints.insert(checkpoint.clone());
            }
            _ => {}
        }
    }
    Some((snapshots, checkpoints))
}

impl MetadataStore {
    /// Like [`MetadataStore::sync_domain`], for the domain file and the
    /// given snapshots and checkpoints only (plus, with `sweep_strays`, any stray temp file): a
    /// transaction re-renders what it changed, not every snapshot of the
    /// domain. The records are copied out of the journal's state under its
    /// lock; the files are written after.
    pub fn sync_items(
        &self,
        journal: &journal::Journal,
        domain: &str,
        snapshots: &BTreeSet<String>,
        checkpoints: &BTreeSet<String>,
        sweep_strays: bool,
    ) -> Result<()> {
        type Rendered = Vec<(PathBuf, Option<String>)>;
        // The transaction holding the domain is the only writer of these
        // records and documents, so reading the documents first is safe.
        let mut snapshot_docs = BTreeMap::new();
        let mut snapshot_extras = BTreeMap::new();
        for s in snapshots {
            if let Some(x) = journal.snapshot_domain_xml(domain, s)? {
                snapshot_docs.insert(s.as_str(), x);
            }
            if let Some(x) = self::snapshot_extras(journal, domain, s)? {
                snapshot_extras.insert(s.as_str(), x);
            }
        }
        let mut checkpoint_docs = BTreeMap::new();
        for c in checkpoints {
            if let Some(x) = journal.checkpoint_domain_xml(domain, c)? {
                checkpoint_docs.insert(c.as_str(), x);
            }
        }
        let rendered: Result<Rendered> = journal.with_state(|state| {
            let d = state.domains.get(domain);
            let mut out = vec![(self.domain_file(domain), d.map(|d| d.core.xml.clone()))];
            for s in snapshots {
                let content = match d.and_then(|d| d.snapshots.get(s)) {
                    Some(r) => Some(render_snapshot_with(
                        r,
                        document(&snapshot_docs, "snapshot", domain, s)?,
                        snapshot_extras.get(s.as_str()),
                    )?),
                    None => None,
                };
                out.push((self.snapshot_dir(domain).join(format!("{s}.xml")), content));
            }
            for c in checkpoints {
                let content = match d.and_then(|d| d.checkpoints.get(c)) {
                    Some(r) => Some(render_checkpoint(
                        r,
                        document(&checkpoint_docs, "checkpoint", domain, c)?,
                    )?),
                    None => None,
                };
                out.push((self.checkpoint_dir(domain).join(format!("{c}.xml")), content));
            }
            Ok(out)
        })?;
        let rendered = rendered?;
        let stale: Vec<(&Path, &[u8])> = rendered
            .iter()
            .filter_map(|(p, c)| c.as_ref().map(|c| (p.as_path(), c.as_bytes())))
            .filter(|(p, c)| fs::read(p).ok().as_deref() != Some(*c))
            .collect();
        write_files(&stale)?;
        for (p, c) in &rendered {
            if c.is_none() && p.exists() {
                crash_point("xml.remove.before");
                crate::durable::remove_file(p).map_err(|e| meta_err(p, format!("cannot remove: {e}")))?;
            }
        }
        // Stray temp files (of a crashed writer) in the domain's own
        // directories go too (the shared directory's, recovery sweeps);
        // only looked for after a crash: the listing grows with the
        // number of snapshots.
        if !sweep_strays {
            return Ok(());
        }
        for p in self.own_files(domain) {
            let stray = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX));
            if stray {
                crate::durable::remove_file(&p).map_err(|e| meta_err(&p, format!("cannot remove: {e}")))?;
            }
        }
        Ok(())
    }
}

/// From how many files a sync writes them as one batch.
const BATCH_FROM: usize = 8;

/// Writes `files` atomically: one at a time, or as one batch with a single
/// file-system sync when there are many.
fn write_files(files: &[(&Path, &[u8])]) -> Result<()> {
    if files.len() > BATCH_FROM {
        return write_many_atomic(files);
    }
    for (path, content) in files {
        write_atomic(path, content)?;
    }
    Ok(())
}

/// Writes many files atomically: every temp file written, all of them
/// fsynced (on several threads; not `syncfs`, which syncs one file system
/// only and which a FUSE file system never sees), every rename, one fsync
/// per directory. A crash or power cut leaves each file old or new, never
/// torn (the renames happen only after the data is durable), and stray
/// temp files that the next sync removes.
pub fn write_many_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    let mut renames = Vec::with_capacity(files.len());
    for (path, content) in files {
        let dir = path
            .parent()
            .ok_or_else(|| meta_err(path, "no parent directory"))?;
        if dirs.insert(dir.to_path_buf()) {
            crate::durable::create_dir_all(dir)
                .map_err(|e| meta_err(dir, format!("cannot create directory: {e}")))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!("{TEMP_PREFIX}{}-{name}", std::process::id()));
        fs::write(&tmp, content).map_err(|e| meta_err(&tmp, format!("cannot write: {e}")))?;
        renames.push((tmp, path.to_path_buf()));
    }
    crash_point("xml.tmp.written");
    let temps: Vec<std::path::PathBuf> = renames.iter().map(|(t, _)| t.clone()).collect();
    crate::durable::fsync_files(&temps).map_err(|e| {
        let dir = dirs.iter().next().map(|d| d.as_path()).unwrap_or(Path::new("."));
        meta_err(dir, format!("cannot fsync the new files: {e}"))
    })?;
    crash_point("xml.rename.before");
    for (tmp, path) in &renames {
        fs::rename(tmp, path).map_err(|e| {
            let _ = fs::remove_file(tmp);
            meta_err(path, format!("cannot rename into place: {e}"))
        })?;
    }
    for dir in &dirs {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| meta_err(dir, format!("cannot fsync directory: {e}")))?;
    }
    crash_point("xml.rename.after");
    Ok(())
}

/// Writes `content` to `path` atomically: a temp file in the same
/// directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| meta_err(path, "no parent directory"))?;
    crate::durable::create_dir_all(dir)
        .map_err(|e| meta_err(dir, format!("cannot create directory: {e}")))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{TEMP_PREFIX}{}-{name}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp).map_err(|e| meta_err(&tmp, format!("cannot create: {e}")))?;
        f.write_all(content)
            .map_err(|e| meta_err(&tmp, format!("cannot write: {e}")))?;
        crash_point("xml.tmp.written");
        f.sync_all()
            .map_err(|e| meta_err(&tmp, format!("cannot fsync: {e}")))?;
    }
    crash_point("xml.rename.before");
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        meta_err(path, format!("cannot rename into place: {e}"))
    })?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| meta_err(dir, format!("cannot fsync directory: {e}")))?;
    crash_point("xml.rename.after");
    Ok(())
}
