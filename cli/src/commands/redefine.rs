//! `redefine …`: sessions that add snapshot and checkpoint documents one
//! at a time and define them as one transaction.

use anyhow::Result;
use executor::Executor;
use serde_json::json;

use super::*;
use crate::output::Out;

/// Runs a `redefine` command.
pub(super) fn run(exec: &Executor, c: &RedefineCmd, inputs: &Inputs, out: &Out) -> Result<i32> {
    match c {
        RedefineCmd::Begin { domain } => {
            let id = exec.redefine_begin(domain)?;
            out.done(json!({"id": id, "domain": domain}), &id);
        }
        RedefineCmd::Add { id, file } => {
            let xml = inputs.read(file)?;
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
    Ok(0)
}
