//! A domain libvirt runs, for the libvirt backend's tests and chaos: images
//! under /srv/snapjournal-tests (the `libvirt-qemu` user must reach them),
//! a domain with a unique name defined (and started) through `virsh`, a
//! state directory beside it. The harness uses `virsh` to set the scene
//! and to look; the product under test uses libvirt's API. Dropping the
//! fixture destroys and undefines the domain and removes its files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, Context, Result};

use crate::fixture::{expect_failure, expect_success, snapjournal_bin, tool, REGION};

/// The URI the tests use.
pub const URI: &str = "qemu:///system";

/// Where the fixtures live.
pub const ROOT: &str = "/srv/snapjournal-tests";

/// Runs `virsh -c URI …`, failing with its stderr.
pub fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .context("running virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with what to do when no libvirtd answers.
pub fn require_libvirtd() -> Result<()> {
    virsh(&["version"])
        .map(drop)
        .map_err(|e| anyhow!("no libvirtd answers on {URI} ({e}); start one: `bash scripts/libvirtd start`"))
}

/// A libvirt domain with file disks vda, vdb, … and a state directory.
pub struct LibvirtFixture {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub domain: String,
    pub disks: Vec<String>,
    pub bin: PathBuf,
    /// Extra environment for every `snapjournal` run.
    pub env: Vec<(String, String)>,
}

impl LibvirtFixture {
    /// `disks` base images (4 MiB), the domain defined, started when
    /// `running` (vCPUs running, TCG).
    pub fn new(disks: usize, running: bool) -> Result<LibvirtFixture> {
        require_libvirtd()?;
        std::fs::create_dir_all(ROOT)?;
        set_mode(Path::new(ROOT), 0o755)?;
        let id = uuid_like();
        let dir = Path::new(ROOT).join(format!("sj-{id}"));
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o755)?;
        let names: Vec<String> = (0..disks)
            .map(|i| format!("vd{}", (b'a' + i as u8) as char))
            .collect();
        let f = LibvirtFixture {
            state: dir.join("state"),
            dir,
            domain: format!("sjt-{id}"),
            disks: names,
            bin: snapjournal_bin()?,
            env: vec![],
        };
        let mut xml = format!(
            "<domain type='qemu'>\n  <name>{}</name>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <devices>\n",
            f.domain
        );
        for d in &f.disks {
            let p = f.base(d);
            tool("qemu-img", &["create", "-q", "-f", "qcow2", &p, "4M"])?;
            xml.push_str(&format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{p}'/>\n      <target dev='{d}' bus='virtio'/>\n    </disk>\n"
            ));
        }
        xml.push_str("  </devices>\n</domain>\n");
        let xml_path = f.dir.join("domain.xml");
        std::fs::write(&xml_path, xml)?;
        virsh(&["define", &xml_path.to_string_lossy()])?;
        if running {
            virsh(&["start", &f.domain])?;
        }
        Ok(f)
    }

    /// The base image of a disk.
    pub fn base(&self, disk: &str) -> String {
        self.dir
            .join(format!("{disk}.qcow2"))
            .to_string_lossy()
            .into_owned()
    }

    /// A `snapjournal` command on this fixture's state directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(&self.dir)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.env_remove("SNAPJOURNAL_CRASH_AT")
            .env_remove("SNAPJOURNAL_CRASH_TRACE")
            .env_remove("SNAPJOURNAL_CRASH_NAME")
            .env_remove("SNAPJOURNAL_DIR");
        c
    }

    /// Runs `snapjournal`; its output whatever the outcome.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        Ok(self.command(args).output()?)
    }

    /// Runs `snapjournal`, failing unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        expect_success(args, self.run(args)?)
    }

    /// Runs `snapjournal`, expecting it to fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        expect_failure(args, self.run(args)?)
    }

    /// Writes byte `pattern` over region `region` of every disk through
    /// the guest's device (qemu-io in the monitor), then flushes.
    pub fn guest_write(&self, pattern: u8, region: u64) -> Result<()> {
        for (i, _) in self.disks.iter().enumerate() {
            let dev = format!("/machine/peripheral/virtio-disk{i}/virtio-backend");
            let write = format!(
                "qemu-io -d {dev} \"write -P {pattern:#04x} {} {REGION}\"",
                region * REGION
            );
            let out = virsh(&["qemu-monitor-command", &self.domain, "--hmp", &write])?;
            if out.contains("rror") || out.contains("failed") {
                bail!("guest write to {dev}: {out}");
            }
            virsh(&[
                "qemu-monitor-command",
                &self.domain,
                "--hmp",
                &format!("qemu-io -d {dev} \"flush\""),
            ])?;
        }
        Ok(())
    }

    /// Whether libvirt runs the domain.
    pub fn running(&self) -> Result<bool> {
        Ok(virsh(&["domstate", &self.domain])?.trim() != "shut off")
    }

    /// (disk, chain of paths) as libvirt's live (or persistent) XML shows.
    pub fn chains(&self, inactive: bool) -> Result<Vec<(String, Vec<String>)>> {
        let mut args = vec!["dumpxml", self.domain.as_str()];
        if inactive {
            args.push("--inactive");
        }
        let xml = virsh(&args)?;
        let view = executor::libvirt::view::disks("dumpxml", &xml)?;
        Ok(view.into_iter().map(|(d, v)| (d, v.chain)).collect())
    }

    /// The snapshot names libvirt lists.
    pub fn libvirt_snapshots(&self) -> Result<Vec<String>> {
        self.names("snapshot-list")
    }

    /// The checkpoint names libvirt lists.
    pub fn libvirt_checkpoints(&self) -> Result<Vec<String>> {
        self.names("checkpoint-list")
    }

    /// The names `virsh LIST DOMAIN --name` prints, sorted.
    fn names(&self, list: &str) -> Result<Vec<String>> {
        let mut v: Vec<String> = virsh(&[list, &self.domain, "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        v.sort();
        Ok(v)
    }

    /// libvirt's current snapshot.
    pub fn libvirt_current(&self) -> Result<Option<String>> {
        match virsh(&["snapshot-current", &self.domain, "--name"]) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for LibvirtFixture {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.domain]);
        let _ = virsh(&[
            "undefine",
            &self.domain,
            "--snapshots-metadata",
            "--checkpoints-metadata",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A name unique across concurrent tests (pid, counter, clock).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        n & 0xffff
    )
}
