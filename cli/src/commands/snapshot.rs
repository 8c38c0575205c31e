//! `snapshot …`: create, list, dumpxml, current, revert, redefine, delete.

use anyhow::{anyhow, bail, Result};
use executor::Executor;
use serde_json::json;

use super::*;
use crate::output::{self, Out};

/// Runs a `snapshot` command.
pub(super) fn run(exec: &Executor, c: &SnapshotCmd, inputs: &Inputs, out: &Out) -> Result<i32> {
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
                let text = inputs.read(x)?;
                let parsed =
                    parse_snapshot(&x.display().to_string(), &text).map_err(executor::ExecError::from)?;
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
            out.raw(&executor::metadata::render_snapshot_of(
                exec.journal(),
                domain,
                &s,
            )?);
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
                Some(x) => parse_revert(&x.display().to_string(), &inputs.read(x)?)
                    .map_err(executor::ExecError::from)?,
                None => Default::default(),
            };
            let r = exec.snapshot_revert(&RevertRequest {
                domain: domain.clone(),
                snapshot: name.clone(),
                overlays,
            })?;
            let mut msg = format!("Domain '{domain}' reverted to snapshot {name} ({})", r.txn);
            if !r.dropped_checkpoints.is_empty() {
                msg.push_str(&format!(
                    "\ncheckpoints removed (they do not describe the reverted disks): {}",
                    r.dropped_checkpoints.join(", ")
                ));
            }
            for (disk, bitmap) in &r.recording {
                msg.push_str(&format!(
                    "\ndisk {disk}: checkpoint bitmap {bitmap} records in the new overlay"
                ));
            }
            for k in &r.kept {
                msg.push_str(&format!(
                    "\nkept {k}: not created by snapjournal (a disk the user swapped)"
                ));
            }
            out.done(
                json!({"domain": domain, "snapshot": name, "txn": r.txn.to_string(),
                       "overlays": r.overlays.iter().map(|(d, p)| json!({"disk": d, "file": p})).collect::<Vec<_>>(),
                       "removed": r.removed, "kept": r.kept, "restarted_running": r.restarted,
                       "dropped_checkpoints": r.dropped_checkpoints,
                       "recording": r.recording.iter().map(|(d, b)| json!({"disk": d, "bitmap": b})).collect::<Vec<_>>()}),
                &msg,
            );
        }
        SnapshotCmd::Redefine {
            domain,
            files,
            dir,
            current,
            adopt_images,
        } => {
            let paths = inputs.xml_files(files, dir.as_ref())?;
            let mut items = Vec::with_capacity(paths.len());
            for p in &paths {
                items.push((p.display().to_string(), inputs.read(p)?));
            }
            let r = exec.snapshot_redefine(&executor::RedefineRequest {
                domain: domain.clone(),
                items,
                current: current.clone(),
                adopt_images: *adopt_images,
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
            for p in &r.removed {
                msg.push_str(&format!("\nremoved {p} (the domain's own, no longer used)"));
            }
            for (p, bytes) in &r.unused_shared {
                msg.push_str(&format!(
                    "\n{p} ({bytes} bytes) is no longer used by domain {domain}; it is shared, so snapjournal leaves it: remove it yourself if nothing else uses it"
                ));
            }
            out.done(
                json!({"domain": domain, "deleted": r.deleted, "txn": r.txn.to_string(),
                       "merges": r.merges.iter().map(|m| m.describe()).collect::<Vec<_>>(),
                       "removed": r.removed, "kept": r.released,
                       "unused_shared": r.unused_shared.iter().map(|(p, b)| json!({"image": p, "bytes": b})).collect::<Vec<_>>()}),
                &msg,
            );
        }
    }
    Ok(0)
}
