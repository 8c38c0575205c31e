//! `domain …`: define, undefine, list, dumpxml, history, start, stop,
//! attach, detach, adopt.

use anyhow::{anyhow, Result};
use executor::Executor;
use serde_json::json;

use super::*;
use crate::output::{self, Out};

/// Runs a `domain` command.
pub(super) fn run(exec: &Executor, c: &DomainCmd, inputs: &Inputs, out: &Out) -> Result<i32> {
    match c {
        DomainCmd::Define {
            file,
            shared,
            all_shared,
        } => {
            let xml = inputs.read(file)?;
            let which = if *all_shared {
                executor::SharedDisks::All
            } else if !shared.is_empty() {
                executor::SharedDisks::These(shared.clone())
            } else {
                executor::SharedDisks::Marked
            };
            let r = exec.define_domain_with(&xml, &which)?;
            let name = executor::xml::domain::parse_domain("domain", &xml)
                .map_err(executor::ExecError::from)?
                .name;
            let mut text = format!("Domain '{name}' defined ({})", r.txn);
            for (disk, image) in &r.owned {
                text.push_str(&format!("\n{disk}: {image} is the domain's own"));
            }
            for (disk, image, why) in &r.shared {
                text.push_str(&format!("\n{disk}: {image} is shared ({why}): never modified"));
            }
            out.done(
                json!({"domain": name, "txn": r.txn.to_string(),
                       "owned": r.owned.iter().map(|(d, i)| json!({"disk": d, "image": i})).collect::<Vec<_>>(),
                       "shared": r.shared.iter().map(|(d, i, w)| json!({"disk": d, "image": i, "why": w})).collect::<Vec<_>>()}),
                &text,
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
            // Beside the XML (stderr), which stays the definition as given.
            for line in exec
                .journal()
                .with_state(|s| output::ownership_lines(s, domain))?
            {
                out.note(&line);
            }
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
        DomainCmd::Adopt { domain, libvirt, uri } => {
            if !libvirt {
                return Err(anyhow!(
                    "say where domain {domain} is adopted from: --libvirt (and --uri when not {}); nothing was changed",
                    executor::libvirt::DEFAULT_URI
                ));
            }
            let r = exec.domain_adopt_libvirt(uri, domain)?;
            let mut text = format!(
                "Domain '{domain}' adopted from libvirt at {uri} ({}; {}): {} snapshot(s), {} checkpoint(s)",
                r.txn,
                if r.running { "running" } else { "shut off" },
                r.snapshots.len(),
                r.checkpoints.len()
            );
            if let Some(c) = &r.current {
                text.push_str(&format!("; current snapshot {c}"));
            }
            for (disk, image) in &r.adopted_images {
                text.push_str(&format!(
                    "\n{disk}: {image} (made by libvirt) is now the journal's"
                ));
            }
            out.done(
                json!({"domain": domain, "uri": uri, "txn": r.txn.to_string(), "running": r.running,
                       "snapshots": r.snapshots, "checkpoints": r.checkpoints, "current": r.current,
                       "adopted_images": r.adopted_images.iter().map(|(d, i)| json!({"disk": d, "image": i})).collect::<Vec<_>>()}),
                &text,
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
    Ok(0)
}
