//! Redefine sessions, for agents that must loop: `begin` → id, `add` one
//! document at a time, `commit` (one transaction, as a bulk redefine) or
//! `abort`. Until the commit nothing is defined: the documents wait in
//! `<state>/redefine/<id>/`, written atomically. A session whose agent died
//! is removed by the next explicit `snapjournal recover`, or by any
//! recovery once it is older than [`SESSION_TTL`]; it leaves nothing behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::redefine::{RedefineReport, RedefineRequest};
use super::require_defined;
use crate::engine::Executor;
use crate::error::{ExecError, PlanError, Result};
use crate::metadata::write_atomic;
use crate::xml::checkpoint::parse_checkpoint;
use crate::xml::snapshot::parse_snapshot;
use journal::{Intent, Plan, Step};

/// How long an idle session survives implicit recoveries.
pub const SESSION_TTL: Duration = Duration::from_secs(3600);

/// Largest number of documents in one session.
const MAX_ITEMS: usize = 1_000_000;

fn io_err(path: &Path, what: &str, e: std::io::Error) -> ExecError {
    ExecError::Metadata {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

impl Executor {
    fn sessions_dir(&self) -> PathBuf {
        self.journal().dir().join("redefine")
    }

    fn session_dir(&self, id: &str) -> Result<PathBuf> {
        let ok = id.len() == 39
            && id.starts_with("rs-")
            && id[3..].chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !ok {
            return Err(ExecError::refused(format!("{id:?} is not a redefine session id")));
        }
        let dir = self.sessions_dir().join(id);
        if !dir.is_dir() {
            return Err(ExecError::refused(format!(
                "redefine session {id} does not exist (committed, aborted, or removed by recovery)"
            )));
        }
        Ok(dir)
    }

    /// Opens a redefine session for `domain`; returns its id.
    pub fn redefine_begin(&self, domain: &str) -> Result<String> {
        if self.journal().domain(domain)?.is_none() {
            return Err(ExecError::from(PlanError::DomainNotDefined {
                domain: domain.to_string(),
            }));
        }
        let id = format!("rs-{}", uuid::Uuid::new_v4());
        let root = self.sessions_dir();
        crate::durable::create_dir_all(&root).map_err(|e| io_err(&root, "cannot create", e))?;
        // Built under a temporary name and renamed: a session directory
        // always has its domain file.
        let tmp = root.join(format!(".tmp-{id}"));
        std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, "cannot create", e))?;
        write_atomic(&tmp.join("domain"), domain.as_bytes())?;
        let dir = root.join(&id);
        crate::durable::rename(&tmp, &dir).map_err(|e| io_err(&dir, "cannot create", e))?;
        Ok(id)
    }

    /// Adds one `<domainsnapshot>` or `<domaincheckpoint>` document to
    /// session `id` (checked to parse and name its item; the whole set is
    /// validated at commit). Returns what it names (`snapshot s1`).
    pub fn redefine_add(&self, id: &str, origin: &str, xml: &str) -> Result<String> {
        let dir = self.session_dir(id)?;
        let name = match parse_snapshot(origin, xml) {
            Ok(p) => p
                .request
                .name
                .map(|n| format!("snapshot {n}"))
                .ok_or_else(|| ExecError::refused(format!("{origin}: the snapshot has no <name>")))?,
            Err(snapshot_err) => match parse_checkpoint(origin, xml) {
                Ok(p) => p
                    .name
                    .map(|n| format!("checkpoint {n}"))
                    .ok_or_else(|| ExecError::refused(format!("{origin}: the checkpoint has no <name>")))?,
                Err(_) => return Err(snapshot_err.into()),
            },
        };
        let n = std::fs::read_dir(&dir)
            .map_err(|e| io_err(&dir, "cannot list", e))?
            .count();
        if n > MAX_ITEMS {
            return Err(ExecError::refused(format!(
                "redefine session {id} already holds {MAX_ITEMS} documents"
            )));
        }
        write_atomic(&dir.join(format!("{n:08}.xml")), xml.as_bytes())?;
        Ok(name)
    }

    /// Commits session `id`: every document as one bulk redefine; the
    /// session is removed once the transaction is done.
    pub fn redefine_commit(&self, id: &str, current: Option<String>) -> Result<RedefineReport> {
        let dir = self.session_dir(id)?;
        let domain = std::fs::read_to_string(dir.join("domain"))
            .map_err(|e| io_err(&dir.join("domain"), "cannot read", e))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| io_err(&dir, "cannot list", e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        files.sort();
        let mut items = Vec::with_capacity(files.len());
        let mut checkpoints = Vec::new();
        for f in &files {
            let xml = std::fs::read_to_string(f).map_err(|e| io_err(f, "cannot read", e))?;
            let origin = format!("session {id} item {}", f.display());
            if xml.trim_start().starts_with("<domaincheckpoint") {
                checkpoints.push((origin, xml));
            } else {
                items.push((origin, xml));
            }
        }
        let report = self.commit_session_items(
            &RedefineRequest {
                domain,
                items,
                current,
                adopt_images: false,
            },
            &checkpoints,
        )?;
        journal::crashpoint::crash_point("redefine.session.committed");
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, "cannot remove", e))?;
        crate::durable::fsync_parent(&dir)
            .map_err(|e| io_err(&dir, "cannot fsync the parent directory after removing", e))?;
        Ok(report)
    }

    /// Validates a session's snapshots and checkpoints and defines them all
    /// in ONE transaction.
    fn commit_session_items(
        &self,
        req: &RedefineRequest,
        checkpoints: &[(String, String)],
    ) -> Result<RedefineReport> {
        let state = self.journal().state()?;
        let dom = require_defined(&state, &req.domain)?;
        let (mut changes, snaps) = self.plan_snapshot_redefine(dom, req)?;
        let (cp_changes, cps) = self.plan_checkpoint_redefine(dom, checkpoints)?;
        changes.extend(cp_changes);
        let mut report = RedefineReport {
            txn: None,
            defined: snaps.defined,
            unchanged: snaps.unchanged,
            checkpoints_defined: cps.defined,
            checkpoints_unchanged: cps.unchanged,
        };
        if changes.is_empty() {
            return Ok(report);
        }
        let plan = Plan {
            steps: vec![Step::SyncXml {
                domain: req.domain.clone(),
            }],
            commit_index: 0,
            changes,
        };
        report.txn = Some(self.run(
            Intent::SessionRedefine {
                domain: req.domain.clone(),
                snapshots: report.defined.len() as u32,
                checkpoints: report.checkpoints_defined.len() as u32,
            },
            plan,
            Some(dom),
        )?);
        Ok(report)
    }

    /// Drops session `id` and its documents.
    pub fn redefine_abort(&self, id: &str) -> Result<()> {
        let dir = self.session_dir(id)?;
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, "cannot remove", e))?;
        crate::durable::fsync_parent(&dir)
            .map_err(|e| io_err(&dir, "cannot fsync the parent directory after removing", e))
    }

    /// Open sessions: (id, domain, documents).
    pub fn redefine_sessions(&self) -> Result<Vec<(String, String, usize)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.sessions_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("rs-") {
                continue;
            }
            let domain = std::fs::read_to_string(e.path().join("domain")).unwrap_or_default();
            let n = std::fs::read_dir(e.path())
                .map(|r| {
                    r.flatten()
                        .filter(|x| x.path().extension().is_some_and(|x| x == "xml"))
                        .count()
                })
                .unwrap_or(0);
            out.push((name, domain, n));
        }
        out.sort();
        Ok(out)
    }

    /// Removes sessions nobody will commit: all of them (`all`: an explicit
    /// recovery after an agent died), or those idle longer than
    /// [`SESSION_TTL`]. Returns the ids removed.
    pub fn reap_sessions(&self, all: bool) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let root = self.sessions_dir();
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let idle = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            if all || idle > SESSION_TTL || name.starts_with(".tmp-") {
                std::fs::remove_dir_all(e.path()).map_err(|err| io_err(&e.path(), "cannot remove", err))?;
                if name.starts_with("rs-") {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }
}
