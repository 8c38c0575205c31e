//! A backup flow: a checkpoint and a snapshot in one transaction, the
//! frozen images copied out while the domain goes on writing to its new
//! overlays, then the snapshot deleted (merged) and the checkpoint kept as
//! the base of the next incremental backup. The domain may be running (the
//! merge is then a block job that carries the checkpoint's bitmap along) or
//! shut off.
//!
//! `backup STATE_DIR DOMAIN OUT_DIR`

use std::process::Command;

use snapjournal::{CreateSnapshot, DeleteSnapshot, Snapjournal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: backup STATE_DIR DOMAIN OUT_DIR".into());
    }
    let (dir, domain, out_dir) = (&args[1], &args[2], std::path::Path::new(&args[3]));
    let sj = Snapjournal::open(dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let name = format!("backup-{stamp}");

    // 1. Freeze: one transaction takes the snapshot and the checkpoint.
    let r = sj.snapshot_create(&CreateSnapshot::new(domain, &name).with_checkpoint(&name))?;
    println!("snapshot and checkpoint {name} taken ({})", r.txn);

    // 2. Read the frozen images (the guest writes to the overlays now).
    let snap = sj
        .snapshots(domain)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or("the snapshot just taken is not listed")?;
    for (disk, frozen) in &snap.disks {
        let Some(frozen) = frozen else { continue };
        let target = out_dir.join(format!("{domain}-{disk}-{name}.qcow2"));
        // -U: a running QEMU holds the chain; the frozen image is not
        // written to any more.
        let st = Command::new("qemu-img")
            .args(["convert", "-U", "-O", "qcow2", frozen])
            .arg(&target)
            .status()?;
        if !st.success() {
            return Err(format!("copying {frozen} failed; the snapshot {name} is kept").into());
        }
        println!("{disk}: {frozen} -> {}", target.display());
    }

    // 3. Merge the snapshot away; the checkpoint stays.
    let d = sj.snapshot_delete(&DeleteSnapshot::new(domain, &name))?;
    println!("snapshot {name} deleted ({}); checkpoint {name} kept", d.txn);
    Ok(())
}
