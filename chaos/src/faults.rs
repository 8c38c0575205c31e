//! Faults that are not crashes: read-only storage, a full file system,
//! qemu-img failing on its N-th call, an unwritable XML folder, corrupt
//! journal records. Each must end in a clear error or a recovered state,
//! never a violated invariant.

use std::process::Command;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::fixture::Fixture;
use crate::invariants::{check, summary};
use crate::scenario::Op;

/// How a fault case ended.
#[derive(Debug, Clone, Serialize)]
pub struct FaultCase {
    pub fault: String,
    /// `clear-error`, `recovered`, `succeeded`, `skipped` or `violation`.
    pub outcome: String,
    pub detail: String,
}

fn mount_tmpfs(dir: &std::path::Path, opts: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .status()?;
    if !st.success() {
        bail!("cannot mount a tmpfs on {} (root is needed)", dir.display());
    }
    Ok(())
}

fn umount(dir: &std::path::Path) {
    let _ = Command::new("umount").arg(dir).status();
}

/// Unmounts on drop.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

fn clear_error(stderr: &str, must: &[&str]) -> Option<String> {
    let missing: Vec<&&str> = must.iter().filter(|m| !stderr.contains(**m)).collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("error message lacks {missing:?}: {stderr}"))
    }
}

/// Runs `op`'s final invariant check after an expected failure and a
/// recovery.
fn settle(
    f: &Fixture,
    op: Op,
    pre: &crate::invariants::Summary,
    post: &crate::invariants::Summary,
    sums: &[(String, u32)],
) -> Result<Vec<String>> {
    let out = f.run(&["recover"])?;
    if !out.status.success() {
        return Ok(vec![format!(
            "recover failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )]);
    }
    check(f, op, pre, post, sums)
}

fn post_of(op: Op, disks: usize) -> Result<crate::invariants::Summary> {
    Ok(crate::runner::reference(op, disks)?.post)
}

/// A second disk whose overlay would go on read-only (`ro`) or full
/// (`size=64k`) storage.
pub fn storage_fault(kind: &str) -> Result<FaultCase> {
    let f = Fixture::new(2)?;
    Op::Create.setup(&f)?;
    let pre = summary(&f)?;
    let sums = f.user_file_sums()?;
    let dir = f.root.path().join(kind);
    let opts = if kind == "readonly" {
        "ro,size=1m"
    } else {
        "size=64k"
    };
    if let Err(e) = mount_tmpfs(&dir, opts) {
        return Ok(FaultCase {
            fault: format!("{kind}-second-disk"),
            outcome: "skipped".into(),
            detail: e.to_string(),
        });
    }
    let _m = Mount(dir.clone());
    let target = dir.join("vdb.s1");
    let spec = format!("vdb,file={}", target.display());
    let out = f.run(&["snapshot", "create", "vm", "s1", "--diskspec", &spec])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut problems = Vec::new();
    if out.status.success() {
        problems.push("the create succeeded on bad storage".to_string());
    }
    if let Some(p) = clear_error(&stderr, &["disk vdb", "nothing was changed"]) {
        problems.push(p);
    }
    if summary(&f)? != pre {
        problems.push("the state changed".into());
    }
    if target.exists() {
        problems.push(format!("{} was left behind", target.display()));
    }
    let post = pre.clone();
    problems.extend(settle(&f, Op::Create, &pre, &post, &sums)?);
    Ok(FaultCase {
        fault: format!("{kind}-second-disk"),
        outcome: if problems.is_empty() {
            "clear-error".into()
        } else {
            "violation".into()
        },
        detail: if problems.is_empty() {
            stderr.trim().to_string()
        } else {
            problems.join("; ")
        },
    })
}

/// qemu-img fails on its `n`-th call during `op`.
pub fn qemu_img_fails(op: Op, disks: usize, n: u32) -> Result<FaultCase> {
    let mut f = Fixture::new(disks)?;
    op.setup(&f)?;
    let post = post_of(op, disks)?;
    let pre = summary(&f)?;
    let sums = f.user_file_sums()?;
    let counter = f.root.path().join("qemu-img-calls");
    let wrapper = f.root.path().join("qemu-img-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nn=$(cat {c} 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > {c}\nif [ $n -eq {n} ]; then echo 'injected failure' >&2; exit 1; fi\nexec qemu-img \"$@\"\n",
            c = counter.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    f.env.push((
        "SNAPJOURNAL_QEMU_IMG".into(),
        wrapper.to_string_lossy().into_owned(),
    ));
    let out = f.run(&op.args())?;
    f.env.clear();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let name = format!("qemu-img-fails-call-{n}/{}/{disks}-disk", op.name());
    let mut problems = Vec::new();
    let outcome = if out.status.success() {
        "succeeded"
    } else if stderr.contains("recover will finish") || stderr.contains("`snapjournal recover` will finish") {
        "recovered"
    } else {
        if let Some(p) = clear_error(&stderr, &["nothing was changed"]) {
            problems.push(p);
        }
        "clear-error"
    };
    problems.extend(settle(&f, op, &pre, &post, &sums)?);
    Ok(FaultCase {
        fault: name,
        outcome: if problems.is_empty() {
            outcome.into()
        } else {
            "violation".into()
        },
        detail: if problems.is_empty() {
            stderr.trim().to_string()
        } else {
            problems.join("; ")
        },
    })
}

/// The snapshot XML folder is read-only while a create runs: the create is
/// committed, rendering fails, recovery finishes it.
pub fn xml_folder_unwritable() -> Result<FaultCase> {
    let f = Fixture::new(1)?;
    Op::CreateOnChain.setup(&f)?;
    let pre = summary(&f)?;
    let post = post_of(Op::CreateOnChain, 1)?;
    let sums = f.user_file_sums()?;
    let dir = f.state.join("snapshots").join("vm");
    let saved = f.root.path().join("saved-snapshots");
    std::fs::rename(&dir, &saved)?;
    std::fs::create_dir_all(&dir)?;
    if let Err(e) = mount_tmpfs(&dir, "ro,size=1m") {
        std::fs::remove_dir(&dir)?;
        std::fs::rename(&saved, &dir)?;
        return Ok(FaultCase {
            fault: "xml-folder-unwritable".into(),
            outcome: "skipped".into(),
            detail: e.to_string(),
        });
    }
    let out = {
        let _m = Mount(dir.clone());
        f.run(&Op::CreateOnChain.args())?
    };
    std::fs::remove_dir(&dir)?;
    std::fs::rename(&saved, &dir)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut problems = Vec::new();
    if out.status.success() {
        problems.push("the create reported success although its XML could not be written".into());
    }
    if let Some(p) = clear_error(&stderr, &["recover", "will finish"]) {
        problems.push(p);
    }
    problems.extend(settle(&f, Op::CreateOnChain, &pre, &post, &sums)?);
    if summary(&f)? != post {
        problems.push("recovery did not finish the committed create".into());
    }
    Ok(FaultCase {
        fault: "xml-folder-unwritable".into(),
        outcome: if problems.is_empty() {
            "recovered".into()
        } else {
            "violation".into()
        },
        detail: if problems.is_empty() {
            stderr.trim().to_string()
        } else {
            problems.join("; ")
        },
    })
}

/// A journal record with a flipped byte: fsck names it (exit 1), nothing
/// panics.
pub fn corrupt_record() -> Result<FaultCase> {
    let f = Fixture::new(1)?;
    Op::Create.setup(&f)?;
    f.ok(&["snapshot", "create", "vm", "s1"])?;
    {
        let exec = recovery::open_without_recovery(&f.state)?;
        let j = exec.journal();
        let seq = j.events()?.last().map(|e| e.seq).unwrap_or(1);
        let mut raw = j.raw_get_event(seq)?.unwrap_or_default();
        let mid = raw.len() / 2;
        raw[mid] ^= 0x20;
        j.raw_put_event(seq, &raw)?;
    }
    let out = f.run(&["fsck"])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut problems = Vec::new();
    if out.status.code() != Some(1) {
        problems.push(format!("fsck exited {:?}, expected 1", out.status.code()));
    }
    if !stdout.contains("I9") || !stdout.contains("event #") {
        problems.push(format!("fsck does not name the corrupt record: {stdout}"));
    }
    if died_or_panicked(&out.status) {
        problems.push("fsck panicked".into());
    }
    Ok(FaultCase {
        fault: "corrupt-journal-record".into(),
        outcome: if problems.is_empty() {
            "clear-error".into()
        } else {
            "violation".into()
        },
        detail: if problems.is_empty() {
            stdout
                .lines()
                .find(|l| l.contains("I9"))
                .unwrap_or("")
                .to_string()
        } else {
            problems.join("; ")
        },
    })
}

/// Whether a process was killed by a signal or panicked (exit code 101).
fn died_or_panicked(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal().is_some() || status.code() == Some(101)
}
