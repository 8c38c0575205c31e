//! An agent that snapshots a domain on a schedule and keeps the newest
//! few, and that may be killed at any moment: started again, it recovers
//! (inside `Snapjournal::open`) and carries on where it stopped.
//!
//! `agent_loop STATE_DIR DOMAIN_XML ROUNDS KEEP [INTERVAL_MS]`

use std::time::Duration;

use snapjournal::{CreateSnapshot, DeleteSnapshot, Snapjournal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: agent_loop STATE_DIR DOMAIN_XML ROUNDS KEEP [INTERVAL_MS]".into());
    }
    let (dir, xml_path) = (&args[1], &args[2]);
    let rounds: u32 = args[3].parse()?;
    let keep: usize = args[4].parse()?;
    let interval = Duration::from_millis(args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(0));

    // Opening recovers whatever a killed run left half done.
    let sj = Snapjournal::open(dir)?;
    for t in &sj.recovered().transactions {
        println!(
            "recovered {} ({}): {}",
            t.plan.txn, t.plan.what, t.plan.decision.reason
        );
    }
    let xml = std::fs::read_to_string(xml_path)?;
    let domain = xml
        .split("<name>")
        .nth(1)
        .and_then(|s| s.split("</name>").next())
        .ok_or("the domain XML has no <name>")?
        .to_string();
    if !sj.domains()?.iter().any(|d| d.name == domain) {
        sj.define_domain(&xml)?;
        println!("defined {domain}");
    }

    for _ in 0..rounds {
        // The next number after the newest snapshot this agent took.
        let snaps = sj.snapshots(&domain)?;
        let next = snaps
            .iter()
            .filter_map(|s| s.name.strip_prefix("auto-")?.parse::<u64>().ok())
            .max()
            .map_or(1, |n| n + 1);
        let name = format!("auto-{next}");
        let r = sj.snapshot_create(&CreateSnapshot::new(&domain, &name))?;
        println!("created {name} ({})", r.txn);
        // Keep the newest `keep`: delete the oldest of ours.
        let mut ours: Vec<(u64, String)> = sj
            .snapshots(&domain)?
            .into_iter()
            .filter_map(|s| Some((s.name.strip_prefix("auto-")?.parse().ok()?, s.name)))
            .collect();
        ours.sort();
        while ours.len() > keep {
            let (_, old) = ours.remove(0);
            let r = sj.snapshot_delete(&DeleteSnapshot::new(&domain, &old))?;
            println!("deleted {old} ({})", r.txn);
        }
        std::thread::sleep(interval);
    }
    Ok(())
}
