//! `domain define` and `domain undefine`.

use std::collections::BTreeMap;

use journal::{DiskState, DomainCore, Intent, Plan, StateChange, Step, TxnId};

use super::{refuse_internal, require_domain};
use crate::engine::Executor;
use crate::error::{ExecError, Result};
use crate::names::{validate_image_path, validate_name};
use crate::xml::domain::parse_domain;

/// Which of a new domain's disk images are shared with others (never
/// modified by snapjournal); the others become the domain's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SharedDisks {
    /// Only disks the definition marks `<shareable/>` or `<readonly/>`.
    #[default]
    Marked,
    /// These disks (by target) too.
    These(Vec<String>),
    /// Every disk.
    All,
}

/// What `domain define` recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DefineReport {
    pub txn: TxnId,
    /// (disk, image): the images that became the domain's own. A merge may
    /// write into them, and one nothing uses any more is removed with the
    /// transaction that dropped it.
    pub owned: Vec<(String, String)>,
    /// (disk, image, why): images left as the user's, never modified.
    pub shared: Vec<(String, String, String)>,
}

/// A definition planned: the record and the ownership changes beside it.
pub(crate) struct PlannedDefine {
    pub core: DomainCore,
    /// `ImageCreated` of the images that become the domain's own.
    pub changes: Vec<StateChange>,
    pub owned: Vec<(String, String)>,
    pub shared: Vec<(String, String, String)>,
}

impl Executor {
    /// Defines a domain from its libvirt XML, or replaces the definition of
    /// a defined one (its disks' chains are read from the images). A new
    /// domain's disk images become its own unless they are shared
    /// ([`SharedDisks::Marked`]); see [`Executor::define_domain_with`].
    pub fn define_domain(&self, xml: &str) -> Result<TxnId> {
        Ok(self.define_domain_with(xml, &SharedDisks::Marked)?.txn)
    }

    /// Defines a domain, saying which disk images are shared. Ownership is
    /// decided when a domain is first defined: the image each disk writes
    /// to becomes the domain's own unless `shared` says otherwise, the disk
    /// is `<shareable/>` or `<readonly/>`, or the image is already the
    /// journal's (another domain's); the backing images below it (a
    /// template) are never the domain's. A redefinition changes no
    /// ownership.
    pub fn define_domain_with(&self, xml: &str, shared: &SharedDisks) -> Result<DefineReport> {
        let state = self.journal().state()?;
        let planned = self.plan_define(&state, xml, shared)?;
        let existing = state.domains.get(&planned.core.name);
        let name = planned.core.name.clone();
        let plan = Plan {
            steps: vec![Step::SyncXml { domain: name.clone() }],
            commit_index: 0,
            changes: std::iter::once(StateChange::DomainDefined { core: planned.core })
                .chain(planned.changes)
                .collect(),
        };
        let txn = self.run(Intent::DomainDefine { domain: name }, plan, existing)?;
        Ok(DefineReport {
            txn,
            owned: planned.owned,
            shared: planned.shared,
        })
    }

    /// The record and ownership changes of a definition (see
    /// [`Executor::define_domain_with`]), checked against `state`.
    pub(crate) fn plan_define(
        &self,
        state: &journal::State,
        xml: &str,
        shared: &SharedDisks,
    ) -> Result<PlannedDefine> {
        let parsed = parse_domain("domain definition", xml)?;
        validate_name("domain", &parsed.name)?;
        let existing = state.domains.get(&parsed.name);
        if existing.map(|d| d.core.runtime.is_some()) == Some(true) {
            return Err(ExecError::refused(format!(
                "domain {} is running; stop it before redefining it",
                parsed.name
            )));
        }
        let mut disks = BTreeMap::new();
        for d in &parsed.disks {
            let src = d.source.as_deref().ok_or_else(|| {
                ExecError::refused(format!(
                    "domain {}, disk {}: the disk has no source file",
                    parsed.name, d.target
                ))
            })?;
            validate_image_path(&format!("source of disk {}", d.target), src)?;
            let infos = self.images().chain_info(src).map_err(|e| {
                ExecError::refused(format!(
                    "domain {}, disk {}: source {src} is not a usable image: {e}",
                    parsed.name, d.target
                ))
            })?;
            if let Some(fmt) = &d.format {
                if infos[0].format != *fmt {
                    return Err(ExecError::refused(format!(
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
        if let SharedDisks::These(list) = shared {
            for t in list {
                if !disks.contains_key(t) {
                    return Err(ExecError::refused(format!(
                        "domain {}: --shared names disk {t}, which the definition does not have (it has: {})",
                        parsed.name,
                        disks.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        let mut owned = Vec::new();
        let mut shared_out = Vec::new();
        let mut changes = Vec::new();
        if existing.is_none() {
            for d in &parsed.disks {
                let Some(active) = disks.get(&d.target).and_then(|s| s.chain.first()) else {
                    continue;
                };
                let why = if d.shareable {
                    Some("the definition marks it <shareable/>".to_string())
                } else if d.readonly {
                    Some("the definition marks it <readonly/>".to_string())
                } else if matches!(shared, SharedDisks::All)
                    || matches!(shared, SharedDisks::These(l) if l.contains(&d.target))
                {
                    Some("defined as shared".to_string())
                } else {
                    state
                        .images
                        .get(&active.path)
                        .map(|i| format!("an image of domain {}", i.domain))
                };
                match why {
                    Some(why) => shared_out.push((d.target.clone(), active.path.clone(), why)),
                    None => {
                        owned.push((d.target.clone(), active.path.clone()));
                        changes.push(StateChange::ImageCreated {
                            image: journal::ImageRecord {
                                path: active.path.clone(),
                                domain: parsed.name.clone(),
                            },
                        });
                    }
                }
            }
        }
        let core = DomainCore {
            name: parsed.name.clone(),
            xml: xml.to_string(),
            disks,
            current_snapshot: existing.and_then(|d| d.core.current_snapshot.clone()),
            runtime: None,
        };
        Ok(PlannedDefine {
            core,
            changes,
            owned,
            shared: shared_out,
        })
    }

    /// Forgets a domain. Refused while it has snapshots unless
    /// `with_snapshot_metadata`; image files are never removed: images the
    /// journal created are handed over to the user.
    pub fn undefine_domain(&self, name: &str, with_snapshot_metadata: bool) -> Result<TxnId> {
        let state = self.journal().state()?;
        let dom = require_domain(&state, name)?;
        if !dom.snapshots.is_empty() && !with_snapshot_metadata {
            return Err(ExecError::refused(format!(
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
