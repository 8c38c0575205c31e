//! `snapjournal demo`: the product in a minute. A scratch two-disk domain
//! under a temporary directory, data written in every layer, three
//! snapshots, a two-disk delete killed (SIGKILL) half-way, recovery, fsck,
//! and every layer's data read back; then everything it made is removed.
//! Nothing outside its temporary directory is touched.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::handle::{CreateSnapshot, Snapjournal};
use crate::output::Out;

/// Bytes per data region of the demo's writes.
const REGION: u64 = 64 * 1024;
/// (region, pattern, where it was written).
const LAYERS: [(u64, u8, &str); 4] = [
    (0, 0xb0, "base"),
    (1, 0x11, "after s1"),
    (2, 0x22, "after s2"),
    (3, 0x33, "after s3"),
];

fn tool(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is QEMU's qemu-utils installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(image: &Path, region: u64, pattern: u8) -> Result<()> {
    let cmd = format!("write -P {pattern:#04x} {} {REGION}", region * REGION);
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", &cmd, &image.display().to_string()],
    )
    .map(|_| ())
}

/// Whether `region` of `image`, read through its chain, holds `pattern`.
fn holds(image: &str, region: u64, pattern: u8) -> Result<bool> {
    let cmd = format!("read -P {pattern:#04x} {} {REGION}", region * REGION);
    let out = Command::new("qemu-io")
        .args(["-r", "-U", "-c", &cmd, image])
        .output()
        .context("running qemu-io")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && !text.contains("Pattern verification failed") && !text.contains("failed"))
}

/// Runs the demo; `keep` leaves the scratch directory behind.
pub fn run(out: &Out, keep: bool) -> Result<i32> {
    let started = Instant::now();
    let scratch = tempfile::Builder::new().prefix("snapjournal-demo-").tempdir()?;
    let root = scratch.path().to_path_buf();
    let result = story(out, &root);
    let place = root.display().to_string();
    if keep {
        let kept = scratch.keep();
        out.line(&format!("kept {} (remove it yourself)", kept.display()));
    } else {
        drop(scratch);
        out.line(&format!("removed {place}"));
    }
    let ok = result?;
    out.line(&format!(
        "{} in {:.1} s",
        if ok { "demo done" } else { "demo FAILED" },
        started.elapsed().as_secs_f64()
    ));
    Ok(if ok { 0 } else { 1 })
}

fn story(out: &Out, root: &Path) -> Result<bool> {
    let images = root.join("images");
    let state = root.join("state");
    std::fs::create_dir_all(&images)?;
    out.line(&format!(
        "snapjournal demo, in {} (nothing else is touched)",
        root.display()
    ));

    let disks = ["vda", "vdb"];
    let mut xml = String::from(
        "<domain type='kvm'>\n  <name>demo</name>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices>\n",
    );
    for d in disks {
        let base = images.join(format!("{d}.qcow2"));
        tool(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &base.display().to_string(), "64M"],
        )?;
        write(&base, LAYERS[0].0, LAYERS[0].1)?;
        xml.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='{d}' bus='virtio'/>\n    </disk>\n",
            base.display()
        ));
    }
    xml.push_str("  </devices>\n</domain>\n");

    let sj = Snapjournal::open(&state)?;
    sj.define_domain(&xml)?;
    out.line("1. domain demo defined on two qcow2 disks, vda and vdb (64 MiB each)");
    let mut taken = Vec::new();
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        let r = sj.snapshot_create(&CreateSnapshot::new("demo", *name))?;
        taken.push(format!("{name} ({})", r.txn));
        let (region, pattern, _) = LAYERS[i + 1];
        for (_, overlay) in &r.overlays {
            write(Path::new(overlay), region, pattern)?;
        }
    }
    out.line(&format!(
        "2. snapshots {} taken, with data in every layer: {}",
        taken.join(", "),
        LAYERS
            .iter()
            .map(|(_, p, w)| format!("{p:#04x} {w}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    drop(sj);

    // The delete runs in a child process that dies (SIGKILL, no clean-up)
    // after its second step: one disk merged, the other not.
    let exe = std::env::current_exe().context("finding the snapjournal binary")?;
    let child = Command::new(exe)
        .arg("--state-dir")
        .arg(&state)
        .args(["snapshot", "delete", "demo", "s2"])
        .env("SNAPJOURNAL_CRASH_NAME", "step.apply.after")
        .env("SNAPJOURNAL_CRASH_AT", "2")
        .output()?;
    use std::os::unix::process::ExitStatusExt;
    if child.status.signal() != Some(libc::SIGKILL) {
        bail!(
            "the delete should have been killed half-way; it ended with {}: {}",
            child.status,
            String::from_utf8_lossy(&child.stderr).trim()
        );
    }
    out.line("3. snapshot delete s2 (a merge on both disks) killed with SIGKILL after its second step: vda merged, vdb not");

    let sj = Snapjournal::open(&state)?;
    let report = sj.recovered();
    // The recovery's own words, cut to the decision (`snapjournal recover`
    // prints every step).
    let place = format!("{}/", images.display());
    let explained = report.explain().replace(&place, "");
    let ran = explained
        .lines()
        .filter(|l| l.trim_start().starts_with("did: run step"))
        .count();
    out.line("4. recovery, on the next open:");
    for line in explained.lines().map(str::trim) {
        if line.starts_with("txn-") || line.starts_with("decision:") {
            out.line(&format!("     {line}"));
        }
    }
    out.line(&format!(
        "     ran the {ran} steps left and closed the transaction"
    ));
    let fsck = sj.fsck(None)?;
    let clean = fsck.exit_code() == 0;
    out.line(&format!(
        "5. fsck: {}",
        if clean {
            "clean (journal, XML, images, chains and bitmaps agree)".to_string()
        } else {
            format!("{} finding(s)", fsck.findings.len())
        }
    ));
    for f in &fsck.findings {
        out.line(&format!("     {f:?}"));
    }

    // Read back: the present holds every layer's data; each snapshot left
    // shows the data of its moment.
    let mut bad = Vec::new();
    let dom = sj
        .domains()?
        .into_iter()
        .find(|d| d.name == "demo")
        .ok_or_else(|| anyhow!("domain demo is gone"))?;
    let mut views: Vec<(String, String, usize)> = dom
        .disks
        .iter()
        .map(|(disk, active)| (format!("present {disk}"), active.clone(), 4))
        .collect();
    for s in sj.snapshots("demo")? {
        let upto = match s.name.as_str() {
            "s1" => 1,
            "s3" => 3,
            _ => continue,
        };
        for (disk, frozen) in &s.disks {
            if let Some(f) = frozen {
                views.push((format!("{} {disk}", s.name), f.clone(), upto));
            }
        }
    }
    let names: Vec<String> = sj.snapshots("demo")?.into_iter().map(|s| s.name).collect();
    for (what, image, upto) in &views {
        for (i, (region, pattern, _)) in LAYERS.iter().enumerate() {
            let want = if i < *upto { *pattern } else { 0 };
            if !holds(image, *region, want)? {
                bad.push(format!("{what}: region {region} should hold {want:#04x}"));
            }
        }
    }
    out.line(&format!(
        "6. snapshots now: {}; data read back through {} chains: {}",
        names.join(", "),
        views.len(),
        if bad.is_empty() {
            "every layer's data is where it belongs".to_string()
        } else {
            bad.join("; ")
        }
    ));
    Ok(clean && bad.is_empty() && report.all_closed())
}
