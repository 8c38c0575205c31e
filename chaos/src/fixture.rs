//! Test fixtures on real qcow2 images: a state directory, an image
//! directory with one base image per disk, a defined domain, and the
//! `snapjournal` binary run as a child process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, Context, Result};

/// Virtual size of test disks.
pub const DISK_SIZE: &str = "4M";
/// Size of one pattern region.
pub const REGION: u64 = 64 * 1024;

/// Finds the `snapjournal` binary: `$SNAPJOURNAL_BIN`, else next to the
/// running executable (or one directory up, for test binaries in `deps/`).
pub fn snapjournal_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SNAPJOURNAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let cand = d.join("snapjournal");
        if cand.is_file() {
            return Ok(cand);
        }
        dir = d.parent().map(Path::to_path_buf);
        if dir.as_ref().map(|d| d.ends_with("target")).unwrap_or(true) {
            break;
        }
    }
    bail!("cannot find the snapjournal binary next to {}; build it (cargo build -p snapjournal) or set SNAPJOURNAL_BIN", exe.display())
}

/// Runs `qemu-img` or `qemu-io`, failing with its stderr.
pub fn tool(bin: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {bin}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{bin} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    Ok(stdout)
}

/// Writes byte `pattern` over region `region` of `image` (through its
/// chain, as a guest would).
pub fn write_pattern(image: &str, pattern: u8, region: u64) -> Result<()> {
    let cmd = format!("write -P {pattern:#04x} {} {}", region * REGION, REGION);
    tool("qemu-io", &["-f", "qcow2", "-c", &cmd, image])?;
    Ok(())
}

/// Whether region `region` of `image` (read through its chain) holds
/// `pattern` (0 for never written).
pub fn region_holds(image: &str, pattern: u8, region: u64) -> Result<bool> {
    let cmd = format!("read -P {pattern:#04x} {} {}", region * REGION, REGION);
    let out = Command::new("qemu-io")
        .args(["-r", "-U", "-c", &cmd, image])
        .output()
        .context("running qemu-io")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("Could not open") || text.contains("Failed to") {
        bail!("qemu-io cannot read {image}: {text}");
    }
    Ok(out.status.success() && !text.contains("Pattern verification failed"))
}

/// The stdout of a `snapjournal {args}` run that must have succeeded.
pub fn expect_success(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        return Err(anyhow!(
            "snapjournal {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The stderr of a `snapjournal {args}` run that must have failed.
pub fn expect_failure(args: &[&str], out: Output) -> Result<String> {
    if out.status.success() {
        bail!("snapjournal {args:?} succeeded but should have failed");
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A domain XML with one file disk per target.
pub fn domain_xml(name: &str, disks: &[(String, String)]) -> String {
    let mut s = format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='KiB'>131072</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='q35'>hvm</type></os>\n  <!-- kept byte for byte -->\n  <devices>\n"
    );
    for (target, path) in disks {
        s.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{path}'/>\n      <target dev='{target}' bus='virtio'/>\n    </disk>\n"
        ));
    }
    s.push_str("  </devices>\n</domain>\n");
    s
}

/// One test world.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub state: PathBuf,
    pub img: PathBuf,
    pub disks: Vec<String>,
    pub domain: String,
    pub bin: PathBuf,
    /// Extra environment for every `snapjournal` run.
    pub env: Vec<(String, String)>,
    /// Every QEMU this fixture's runs started, and how each ended.
    pub witness: crate::witness::Witness,
}

impl Fixture {
    /// A fixture with `disks` base images (vda, vdb, …) and the domain
    /// `vm` defined.
    pub fn new(disks: usize) -> Result<Fixture> {
        Fixture::new_in(&std::env::temp_dir(), disks)
    }

    /// [`Fixture::new`] in a directory of `parent` (a power-cut mount).
    pub fn new_in(parent: &Path, disks: usize) -> Result<Fixture> {
        Fixture::new_with_run_dir(parent, disks, None)
    }

    /// [`Fixture::new_in`], with the state directory's `run/` (QMP sockets,
    /// pidfiles, QEMU logs) a link to `run_dir`: sockets do not live on
    /// a power-cut file system.
    pub fn new_with_run_dir(parent: &Path, disks: usize, run_dir: Option<&Path>) -> Result<Fixture> {
        let root = tempfile::Builder::new().prefix("sj-").tempdir_in(parent)?;
        let state = root.path().join("state");
        let img = root.path().join("img");
        std::fs::create_dir_all(&img)?;
        let names: Vec<String> = (0..disks)
            .map(|i| format!("vd{}", (b'a' + i as u8) as char))
            .collect();
        let mut f = Fixture {
            root,
            state,
            img,
            disks: names,
            domain: "vm".into(),
            bin: snapjournal_bin()?,
            env: vec![],
            witness: Default::default(),
        };
        crate::witness::become_subreaper();
        let trace = f.qmp_trace().display().to_string();
        f.env.push(("SNAPJOURNAL_QMP_TRACE".into(), trace));
        let mut pairs = Vec::new();
        for d in f.disks.clone() {
            let p = f.base(&d);
            tool("qemu-img", &["create", "-q", "-f", "qcow2", &p, DISK_SIZE])?;
            pairs.push((d, p));
        }
        let xml_path = f.root.path().join("vm.xml");
        std::fs::write(&xml_path, domain_xml("vm", &pairs))?;
        if let Some(run) = run_dir {
            std::fs::create_dir_all(&f.state)?;
            std::os::unix::fs::symlink(run, f.state.join("run"))?;
        }
        // The base images stand for the user's (templates, disks shared with
        // other tools): never modified, as the scenarios expect.
        f.ok(&["domain", "define", &xml_path.to_string_lossy(), "--all-shared"])?;
        Ok(f)
    }

    /// The base image of a disk.
    pub fn base(&self, disk: &str) -> String {
        self.img
            .join(format!("{disk}.qcow2"))
            .to_string_lossy()
            .into_owned()
    }

    /// A `snapjournal` command on this fixture's state directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(self.root.path())
            .arg("--state-dir")
            .arg(&self.state)
            .args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.env_remove("SNAPJOURNAL_CRASH_AT")
            .env_remove("SNAPJOURNAL_CRASH_TRACE")
            .env_remove("SNAPJOURNAL_DIR");
        c
    }

    /// Runs `snapjournal` and returns its output whatever the outcome.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let out = self.command(args).output();
        self.note_qemus();
        Ok(out?)
    }

    /// Runs `snapjournal`, failing unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        expect_success(args, self.run(args)?)
    }

    /// Runs `snapjournal`, expecting it to fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        expect_failure(args, self.run(args)?)
    }

    /// The journal's state, read through the library (the directory must
    /// not be in use).
    pub fn state(&self) -> Result<journal::State> {
        let exec = recovery::open_without_recovery(&self.state)?;
        Ok(exec.journal().state()?)
    }

    /// The active image of every disk.
    pub fn active(&self) -> Result<Vec<(String, String)>> {
        self.active_of(&self.domain)
    }

    /// The active image of every disk of `domain`.
    pub fn active_of(&self, domain: &str) -> Result<Vec<(String, String)>> {
        let s = self.state()?;
        let d = s
            .domains
            .get(domain)
            .ok_or_else(|| anyhow!("domain {domain} is gone"))?;
        Ok(d.core
            .disks
            .values()
            .map(|x| (x.target.clone(), x.chain[0].path.clone()))
            .collect())
    }

    /// Writes `pattern` into `region` of every disk's active image.
    pub fn write_present(&self, pattern: u8, region: u64) -> Result<()> {
        self.write_present_of(&self.domain, pattern, region)
    }

    /// Writes `pattern` into `region` of every disk's active image of
    /// `domain`.
    pub fn write_present_of(&self, domain: &str, pattern: u8, region: u64) -> Result<()> {
        for (_, a) in self.active_of(domain)? {
            write_pattern(&a, pattern, region)?;
        }
        Ok(())
    }

    /// A checksum of every file in the image directory the journal did
    /// not create, to prove they are untouched (I8).
    pub fn user_file_sums(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.img)? {
            let p = e?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".qcow2") {
                out.push((
                    p.to_string_lossy().into_owned(),
                    crc32c::crc32c(&std::fs::read(&p)?),
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Defines another domain `name` with `disks` base images of its own
    /// (`<name>-vda.qcow2`, …) in the same state directory.
    pub fn add_domain(&self, name: &str, disks: usize) -> Result<()> {
        let mut pairs = Vec::new();
        for i in 0..disks {
            let d = format!("vd{}", (b'a' + i as u8) as char);
            let p = self
                .img
                .join(format!("{name}-{d}.qcow2"))
                .to_string_lossy()
                .into_owned();
            tool("qemu-img", &["create", "-q", "-f", "qcow2", &p, DISK_SIZE])?;
            pairs.push((d, p));
        }
        let xml_path = self.root.path().join(format!("{name}.xml"));
        std::fs::write(&xml_path, domain_xml(name, &pairs))?;
        self.ok(&["domain", "define", &xml_path.to_string_lossy(), "--all-shared"])?;
        Ok(())
    }
}

/// The file names in a directory, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
