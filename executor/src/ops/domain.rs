//! `domain define` and `domain undefine`.

use std::collections::BTreeMap;

use journal::{DiskState, DomainCore, Intent, Plan, StateChange, Step, TxnId};

use super::{refuse_internal, require_domain};
use crate::engine::Executor;
use crate::error::{ExecError, Result};
use crate::names::{validate_image_path, validate_name};
use crate::xml::domain::parse_domain;

impl Executor {
    /// Defines a domain from its libvirt XML, or replaces the definition of
    /// a defined one (its disks' chains are read from the images).
    pub fn define_domain(&self, xml: &str) -> Result<TxnId> {
        let parsed = parse_domain("domain definition", xml)?;
        validate_name("domain", &parsed.name)?;
        let state = self.journal().state()?;
        let existing = state.domains.get(&parsed.name);
        if existing.map(|d| d.core.runtime.is_some()) == Some(true) {
            return Err(ExecError::Invalid(format!(
                "domain {} is running; stop it before redefining it",
                parsed.name
            )));
        }
        let mut disks = BTreeMap::new();
        for d in &parsed.disks {
            let src = d.source.as_deref().ok_or_else(|| {
                ExecError::Invalid(format!(
                    "domain {}, disk {}: the disk has no source file",
                    parsed.name, d.target
                ))
            })?;
            validate_image_path(&format!("source of disk {}", d.target), src)?;
            let infos = self.images().chain_info(src).map_err(|e| {
                ExecError::Invalid(format!(
                    "domain {}, disk {}: source {src} is not a usable image: {e}",
                    parsed.name, d.target
                ))
            })?;
            if let Some(fmt) = &d.format {
                if infos[0].format != *fmt {
                    return Err(ExecError::Invalid(format!(
                        "domain {}, disk {}: the definition says format {fmt} but {src} is {}",
                        parsed.name, d.target, infos[0].format
                    )));
                }
            }
            refuse_internal(&parsed.name, &d.target, &infos)?;
            let chain = infos
                .into_iter()
                .map(|i| journal::ChainImage {
                    path: i.filename,
                    format: i.format,
                })
                .collect();
            disks.insert(
                d.target.clone(),
                DiskState {
                    target: d.target.clone(),
                    chain,
                },
            );
        }
        let core = DomainCore {
            name: parsed.name.clone(),
            xml: xml.to_string(),
            disks,
            current_snapshot: existing.and_then(|d| d.core.current_snapshot.clone()),
            runtime: None,
        };
        let plan = Plan {
            steps: vec![Step::SyncXml {
                domain: parsed.name.clone(),
            }],
            commit_index: 0,
            changes: vec![StateChange::DomainDefined { core }],
        };
        self.run(
            Intent::DomainDefine {
                domain: parsed.name.clone(),
            },
            plan,
            existing,
        )
    }

    /// Forgets a domain. Refused while it has snapshots unless
    /// `with_snapshot_metadata`; image files are never removed: images the
    /// journal created are handed over to the user.
    pub fn undefine_domain(&self, name: &str, with_snapshot_metadata: bool) -> Result<TxnId> {
        let state = self.journal().state()?;
        let dom = require_domain(&state, name)?;
        if !dom.snapshots.is_empty() && !with_snapshot_metadata {
            return Err(ExecError::Invalid(format!(
                "domain {name} has {} snapshot(s); delete them first or pass --snapshots-metadata to drop their metadata",
                dom.snapshots.len()
            )));
        }
        let mut changes: Vec<StateChange> = state
            .images_of(name)
            .map(|i| StateChange::ImageRemoved { path: i.path.clone() })
            .collect();
        changes.push(StateChange::DomainUndefined { domain: name.into() });
        let plan = Plan {
            steps: vec![Step::SyncXml { domain: name.into() }],
            commit_index: 0,
            changes,
        };
        self.run(Intent::DomainUndefine { domain: name.into() }, plan, Some(dom))
    }
}
