//! Starting and stopping a QEMU process for a domain: the command line
//! built from the journal's disk chains, and the process checks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use journal::{ChainImage, DomainCore};
use serde_json::json;

use super::graph::{file_node, format_node};

/// The QEMU binary: `$SNAPJOURNAL_QEMU`, or `qemu-system-x86_64` on the PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("SNAPJOURNAL_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// Whether `id` is usable as a qdev id (the device is named after the disk).
fn legal_device_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && id.len() <= 31
}

/// The `-blockdev` JSON of one image whose backing is `backing` (format
/// nodes named after their paths).
fn blockdev_json(image: &ChainImage, backing: Option<&ChainImage>, read_only: bool) -> serde_json::Value {
    let mut v = json!({
        "driver": image.format,
        "node-name": format_node(&image.path),
        "read-only": read_only,
        // The protocol node inherits `read-only` from its format node: a
        // block job that must write into an image below the active one (the
        // base of an active commit) has QEMU reopen the format node
        // read-write, and an explicit `read-only` here would keep its file
        // read-only ("Block node is read-only").
        "file": {
            "driver": "file",
            "filename": image.path,
            "node-name": file_node(&image.path),
        },
    });
    if image.format == "qcow2" {
        v["backing"] = match backing {
            Some(b) => json!(format_node(&b.path)),
            None => serde_json::Value::Null,
        };
    }
    v
}

/// The QEMU command line for `core`: q35, TCG, no default devices, vCPUs
/// stopped (`-S`), daemonized with a pidfile and a QMP socket; each disk a
/// chain of `-blockdev` nodes under a virtio-blk device called after the
/// disk.
pub fn command_line(core: &DomainCore, qmp_socket: &Path, pidfile: &Path) -> Result<Vec<String>, String> {
    let spec = if core.xml.is_empty() {
        super::machine::MachineSpec::default()
    } else {
        super::machine::machine_spec(&core.name, &core.xml)?
    };
    let mut args: Vec<String> = vec!["-machine".into(), spec.machine.clone()];
    // KVM when /dev/kvm is usable; QEMU falls back to TCG by itself if
    // KVM fails to start (the start report says which one runs).
    if super::machine::kvm_usable() {
        args.extend(["-accel".into(), "kvm".into()]);
    }
    args.extend(["-accel".into(), "tcg".into()]);
    args.extend(
        ["-nodefaults", "-display", "none", "-S", "-daemonize"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend([
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.vcpus.to_string(),
    ]);
    args.push("-name".into());
    args.push(format!(
        "guest={},debug-threads=off",
        core.name.replace(',', ",,")
    ));
    args.push("-pidfile".into());
    args.push(pidfile.display().to_string());
    args.push("-qmp".into());
    args.push(format!(
        "unix:{},server=on,wait=off",
        qmp_socket.display().to_string().replace(',', ",,")
    ));
    for disk in core.disks.values() {
        if !legal_device_id(&disk.target) {
            return Err(format!(
                "disk {} of domain {}: the name cannot be a QEMU device id",
                disk.target, core.name
            ));
        }
        let Some(active) = disk.active() else {
            return Err(format!(
                "disk {} of domain {} has no image",
                disk.target, core.name
            ));
        };
        for (i, image) in disk.chain.iter().enumerate().rev() {
            args.push("-blockdev".into());
            args.push(blockdev_json(image, disk.chain.get(i + 1), i > 0).to_string());
        }
        args.push("-device".into());
        args.push(format!(
            "virtio-blk-pci,id={},drive={}",
            disk.target,
            format_node(&active.path)
        ));
    }
    Ok(args)
}

/// The log file of the QEMU whose pidfile is `pidfile` (beside it, `.log`):
/// QEMU's own messages (`-D`, stderr) with timestamps, appended across
/// starts, as libvirt keeps `/var/log/libvirt/qemu/<domain>.log`.
pub fn log_path(pidfile: &Path) -> PathBuf {
    pidfile.with_extension("log")
}

/// The last `max` bytes of the QEMU log beside `pidfile` (for error
/// messages and the chaos suite's reports).
pub fn log_tail(pidfile: &Path, max: usize) -> String {
    let text = std::fs::read(log_path(pidfile)).unwrap_or_default();
    let from = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[from..]).trim().to_string()
}

/// Appends a line from snapjournal itself to the QEMU log beside `pidfile`
/// (why it stops or kills a QEMU), so the log tells a deliberate end from
/// a crash.
pub fn log_event(pidfile: &Path, message: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log_path(pidfile)) {
        let _ = writeln!(f, "snapjournal (pid {}): {message}", std::process::id());
    }
}

/// Starts QEMU for `core`, paused, and returns its pid once it daemonized.
/// QEMU's messages go to [`log_path`].
pub fn launch(core: &DomainCore, qmp_socket: &Path, pidfile: &Path) -> Result<u32, String> {
    let mut args = command_line(core, qmp_socket, pidfile)?;
    let _ = std::fs::remove_file(qmp_socket);
    let _ = std::fs::remove_file(pidfile);
    let log = log_path(pidfile);
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open QEMU's log file {}: {e}", log.display()))?;
    let log_len = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    let err_file = log_file
        .try_clone()
        .map_err(|e| format!("cannot open QEMU's log file {}: {e}", log.display()))?;
    // With -D, a daemonized QEMU keeps its stderr (the log file) instead of
    // sending it to /dev/null: assertion failures and errors land there.
    args.extend([
        "-D".to_string(),
        log.display().to_string(),
        "-msg".to_string(),
        "timestamp=on".to_string(),
    ]);
    if let Some(extra) = std::env::var_os("SNAPJOURNAL_TEST_EXTRA_QMP") {
        args.push("-qmp".into());
        args.push(format!(
            "unix:{},server=on,wait=off",
            extra.to_string_lossy().replace(',', ",,")
        ));
    }
    let bin = qemu_binary();
    let status = Command::new(&bin)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !status.success() {
        let text = std::fs::read(&log).unwrap_or_default();
        let from = (log_len as usize).min(text.len());
        return Err(format!(
            "{} failed ({status}): {}",
            bin.display(),
            String::from_utf8_lossy(&text[from..]).trim()
        ));
    }
    read_pidfile(pidfile).ok_or_else(|| format!("QEMU started but wrote no pid to {}", pidfile.display()))
}

/// The pid in `pidfile`, if it names a live process.
pub fn read_pidfile(pidfile: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether process `pid` is a QEMU listening on `qmp_socket` (its command
/// line names the socket): a recycled pid is not mistaken for our QEMU.
pub fn is_qemu_on(pid: u32, qmp_socket: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = qmp_socket.display().to_string();
    alive(pid) && String::from_utf8_lossy(&cmdline).contains(&needle)
}

/// Waits up to `timeout` for `pid` to exit.
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal::DiskState;
    use std::collections::BTreeMap;

    #[test]
    fn chain_is_opened_bottom_up_with_explicit_backing() {
        let mut disks = BTreeMap::new();
        disks.insert(
            "vda".to_string(),
            DiskState {
                target: "vda".into(),
                chain: vec![
                    ChainImage::qcow2("/i/vda.s1"),
                    ChainImage {
                        path: "/i/vda.raw".into(),
                        format: "raw".into(),
                    },
                ],
            },
        );
        let core = DomainCore {
            name: "d".into(),
            xml: String::new(),
            disks,
            current_snapshot: None,
            runtime: None,
        };
        let args = command_line(&core, Path::new("/run/d.qmp"), Path::new("/run/d.pid")).unwrap();
        let blockdevs: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(a, _)| *a == "-blockdev")
            .map(|(_, b)| b)
            .collect();
        assert_eq!(blockdevs.len(), 2);
        assert!(blockdevs[0].contains("\"driver\":\"raw\"") && !blockdevs[0].contains("backing"));
        assert!(blockdevs[1].contains(&format!("\"backing\":\"{}\"", format_node("/i/vda.raw"))));
        assert!(args.contains(&format!(
            "virtio-blk-pci,id=vda,drive={}",
            format_node("/i/vda.s1")
        )));
    }

    #[test]
    fn bad_device_names_are_refused() {
        assert!(legal_device_id("vda"));
        assert!(!legal_device_id("1vda"));
        assert!(!legal_device_id("vd a"));
        assert!(!legal_device_id("vda,drive=x"));
    }
}
