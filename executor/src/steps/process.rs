//! Steps on the QEMU process: launch, resume the vCPUs, stop.

use super::*;
#[allow(unused_imports)]
use crate::error::PlanError;

impl World<'_> {
    /// Whether the world shows a QEMU process step done.
    pub(super) fn probe_process(&self, step: &Step) -> Result<bool> {
        Ok(match step {
            Step::LaunchQemu {
                qmp_socket, pidfile, ..
            } => qemu::read_pidfile(Path::new(pidfile))
                .is_some_and(|pid| qemu::is_qemu_on(pid, Path::new(qmp_socket))),
            Step::ResumeGuest { domain } => self.on_qemu(domain, |q| q.running())?.unwrap_or(true),
            Step::StopQemu { qmp_socket, pid, .. } => {
                !pid.is_some_and(|p| qemu::is_qemu_on(p, Path::new(qmp_socket)))
                    && std::os::unix::net::UnixStream::connect(qmp_socket).is_err()
            }
            other => return Err(not_in_family(other, "QEMU process")),
        })
    }

    /// Runs a QEMU process step (idempotent).
    pub(super) fn apply_process(&self, step: &Step) -> Result<()> {
        match step {
            Step::LaunchQemu {
                domain,
                qmp_socket,
                pidfile,
                ..
            } => {
                if self.probe(step)? {
                    return Ok(());
                }
                let dom = self.journal.domain(domain)?.ok_or_else(|| {
                    ExecError::from(PlanError::DomainNotDefined {
                        domain: domain.to_string(),
                    })
                })?;
                let pid = qemu::launch(&dom.core, Path::new(qmp_socket), Path::new(pidfile))
                    .map_err(|e| ExecError::Live(format!("domain {domain}: {e}")))?;
                crash_point("live.launched");
                // Wait until the monitor answers, so the runtime the commit
                // records is usable.
                let rt = Runtime {
                    qmp_socket: qmp_socket.clone(),
                    pid: Some(pid),
                    pidfile: None,
                    managed: true,
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    match self.live.with_qemu(&rt, |q| q.running()) {
                        Ok(Some(_)) => return Ok(()),
                        _ if std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_millis(10))
                        }
                        Ok(None) => {
                            return Err(ExecError::Live(format!(
                                "domain {domain}: QEMU (pid {pid}) exited right after starting"
                            )))
                        }
                        Err(e) => return Err(qmp_err(e)),
                    }
                }
            }
            Step::ResumeGuest { domain } => {
                self.on_qemu(domain, |q| {
                    if !q.running()? {
                        q.execute(Cmd::Cont, json!({}))?;
                    }
                    Ok(())
                })?;
                Ok(())
            }
            Step::StopQemu {
                domain,
                qmp_socket,
                pid,
            } => {
                let rt = Runtime {
                    qmp_socket: qmp_socket.clone(),
                    pid: *pid,
                    pidfile: None,
                    managed: true,
                };
                // `quit` flushes and closes the images; a QEMU whose
                // monitor does not answer gets SIGTERM (which also flushes).
                let quit = self
                    .live
                    .with_qemu(&rt, |q| match q.execute(Cmd::Quit, json!({})) {
                        Ok(_) => Ok(()),
                        Err(QmpError::Connection { .. }) => Ok(()),
                        Err(e) => Err(e),
                    });
                self.live.forget(qmp_socket);
                if let Some(p) = pid {
                    if quit.is_err() && qemu::is_qemu_on(*p, Path::new(qmp_socket)) {
                        qemu::signal(*p, libc::SIGTERM);
                    }
                    if !qemu::wait_exit(*p, std::time::Duration::from_secs(20)) {
                        return Err(ExecError::Live(format!(
                            "domain {domain}: QEMU (pid {p}) did not exit after quit and SIGTERM"
                        )));
                    }
                } else {
                    quit.map_err(qmp_err)?;
                }
                Ok(())
            }
            other => Err(not_in_family(other, "QEMU process")),
        }
    }

    /// Undoes a QEMU process step before the commit point.
    pub(super) fn undo_process(&self, step: &Step) -> Result<()> {
        match step {
            Step::LaunchQemu {
                qmp_socket, pidfile, ..
            } => {
                if let Some(pid) = qemu::read_pidfile(Path::new(pidfile)) {
                    if qemu::is_qemu_on(pid, Path::new(qmp_socket)) {
                        qemu::log_event(
                            Path::new(pidfile),
                            &format!(
                                "killing QEMU pid {pid} (SIGKILL): undoing its launch, which did not commit"
                            ),
                        );
                        qemu::signal(pid, libc::SIGKILL);
                        qemu::wait_exit(pid, std::time::Duration::from_secs(10));
                    }
                }
                self.live.forget(qmp_socket);
                remove_file_if_exists(qmp_socket)?;
                remove_file_if_exists(pidfile)
            }
            other => Err(cannot_undo(other)),
        }
    }
}
