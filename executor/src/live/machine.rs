//! What a managed QEMU is started as: the machine the `<domain>` describes
//! (memory, vCPUs, machine type, KVM when /dev/kvm is usable and TCG
//! otherwise), or a refusal that lists what snapjournal cannot start.

use crate::xml::tree::{parse, Element};

/// The machine of a domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    pub vcpus: u32,
    /// QEMU's `-machine` type (`q35`, `pc-q35-7.2`, `pc`, …).
    pub machine: String,
}

/// Memory when the definition gives none (libvirt requires it; tests may
/// not).
const DEFAULT_MEMORY_MIB: u64 = 64;

impl Default for MachineSpec {
    /// What a definition that says nothing gets: q35, one vCPU, 64 MiB.
    fn default() -> Self {
        MachineSpec {
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            machine: "q35".into(),
        }
    }
}

/// Device elements snapjournal starts: disks it manages only.
fn unsupported_devices(root: &Element) -> Vec<String> {
    let mut out = Vec::new();
    for d in root
        .child("devices")
        .map(|d| d.children.as_slice())
        .unwrap_or_default()
    {
        let target = d.child("target").and_then(|t| t.attr("dev")).unwrap_or("?");
        match d.name.as_str() {
            "disk" => {
                let ty = d.attr("type").unwrap_or("file");
                let device = d.attr("device").unwrap_or("disk");
                let bus = d.child("target").and_then(|t| t.attr("bus")).unwrap_or("virtio");
                if !crate::xml::domain::is_managed(d) {
                    out.push(format!("disk {target} ({device}, type '{ty}')"));
                } else if bus != "virtio" {
                    out.push(format!(
                        "disk {target} on bus '{bus}' (only virtio disks are started)"
                    ));
                }
            }
            // libvirt adds these to every definition; QEMU's defaults are
            // off (-nodefaults), so nothing of theirs is lost but a balloon.
            "emulator" => {}
            other => {
                let kind = d.attr("type").map(|t| format!(" type '{t}'")).unwrap_or_default();
                out.push(format!("<{other}>{kind}"));
            }
        }
    }
    out
}

/// Converts a libvirt memory amount to MiB.
fn to_mib(value: u64, unit: &str) -> Option<u64> {
    let bytes: u128 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    Some(((u128::from(value) * bytes) >> 20) as u64)
}

/// Reads the machine of `xml` (domain `name`), or says what cannot be
/// started.
pub fn machine_spec(name: &str, xml: &str) -> Result<MachineSpec, String> {
    let root = parse("domain", xml).map_err(|e| e.to_string())?;
    let mut problems = unsupported_devices(&root);
    let memory_mib = match root.child("memory") {
        None => DEFAULT_MEMORY_MIB,
        Some(m) => {
            let unit = m.attr("unit").unwrap_or("KiB");
            let value: u64 = m
                .text
                .trim()
                .parse()
                .map_err(|_| format!("domain {name}: <memory> {:?} is not a number", m.text.trim()))?;
            to_mib(value, unit).ok_or_else(|| format!("domain {name}: <memory> unit {unit:?} is unknown"))?
        }
    };
    if memory_mib == 0 {
        problems.push("<memory> below 1 MiB".into());
    }
    let vcpus = match root.child("vcpu") {
        None => 1,
        Some(v) => v
            .text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=255).contains(n))
            .ok_or_else(|| {
                format!(
                    "domain {name}: <vcpu> {:?} is not a count of 1 to 255",
                    v.text.trim()
                )
            })?,
    };
    let ty = root.child("os").and_then(|o| o.child("type"));
    let arch = ty.and_then(|t| t.attr("arch")).unwrap_or("x86_64");
    if arch != "x86_64" {
        problems.push(format!("architecture {arch} (qemu-system-x86_64 only)"));
    }
    let machine = ty.and_then(|t| t.attr("machine")).unwrap_or("q35").to_string();
    if !machine
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problems.push(format!("machine type {machine:?}"));
    }
    if !problems.is_empty() {
        return Err(format!(
            "domain {name} cannot be started by snapjournal, which starts file-backed virtio disks only; not supported: {}. Start it elsewhere and use `domain attach`",
            problems.join(", ")
        ));
    }
    Ok(MachineSpec {
        memory_mib,
        vcpus,
        machine,
    })
}

/// Whether KVM is usable here: /dev/kvm opens read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_vcpus_and_machine() {
        let x = "<domain><name>d</name><memory unit='GiB'>2</memory><vcpu placement='static'>4</vcpu><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'><source file='/a'/><target dev='vda' bus='virtio'/></disk></devices></domain>";
        assert_eq!(
            machine_spec("d", x).unwrap(),
            MachineSpec {
                memory_mib: 2048,
                vcpus: 4,
                machine: "pc-q35-7.2".into()
            }
        );
        let bare = "<domain><name>d</name></domain>";
        assert_eq!(machine_spec("d", bare).unwrap().memory_mib, 64);
        assert_eq!(to_mib(131072, "KiB"), Some(128));
    }

    #[test]
    fn lists_what_it_cannot_start() {
        let x = "<domain><name>d</name><devices><interface type='network'/><disk type='file' device='cdrom'><target dev='hdc' bus='sata'/></disk><disk type='file' device='disk'><target dev='sda' bus='scsi'/></disk><graphics type='vnc'/></devices></domain>";
        let e = machine_spec("d", x).unwrap_err();
        for want in [
            "<interface> type 'network'",
            "disk hdc (cdrom",
            "disk sda on bus 'scsi'",
            "<graphics> type 'vnc'",
            "domain attach",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let bad = "<domain><name>d</name><vcpu>0</vcpu></domain>";
        assert!(machine_spec("d", bad).unwrap_err().contains("<vcpu>"));
    }
}
