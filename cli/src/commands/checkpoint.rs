//! `checkpoint …`: create, delete, list, dumpxml, redefine.

use anyhow::{anyhow, Result};
use executor::Executor;
use serde_json::json;

use super::*;
use crate::output::{self, Out};

/// Runs a `checkpoint` command.
pub(super) fn run(exec: &Executor, c: &CheckpointCmd, inputs: &Inputs, out: &Out) -> Result<i32> {
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
        CheckpointCmd::List { domain, tree } => output::checkpoint_list(out, &domain_state(domain)?, *tree),
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
            for p in inputs.xml_files(files, dir.as_ref())? {
                items.push((p.display().to_string(), inputs.read(&p)?));
            }
            let r = exec.checkpoint_redefine(domain, &items)?;
            redefined(out, "checkpoint", &r);
        }
    }
    Ok(0)
}
