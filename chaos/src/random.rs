//! Seeded random schedules: random operations with random crashes on one
//! fixture; after every crash, recovery, fsck and the user-file check.

use std::os::unix::process::ExitStatusExt;

use anyhow::Result;
use serde::Serialize;

use crate::fixture::Fixture;

/// A small deterministic generator (xorshift64*), so a seed reproduces a run.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n.max(1)
    }
}

/// The result of one schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub seed: u64,
    pub steps: Vec<String>,
    pub violations: Vec<String>,
}

/// Runs `steps` random operations with crashes, seeded by `seed`.
pub fn run_schedule(seed: u64, disks: usize, steps: usize) -> Result<Schedule> {
    let mut rng = Rng::new(seed);
    let f = Fixture::new(disks)?;
    // Several domains share the state directory; operations interleave.
    let domains = ["vm", "vm2"];
    f.add_domain("vm2", disks)?;
    let mut log = Vec::new();
    let mut violations = Vec::new();
    let mut next = 1;
    for _ in 0..steps {
        let dom = domains[rng.below(domains.len() as u64) as usize];
        let snaps: Vec<String> = f.state()?.domains[dom].snapshots.keys().cloned().collect();
        let pattern = 0x10 + rng.below(0xe0) as u8;
        let region = rng.below(6);
        f.write_present_of(dom, pattern, region)?;
        let sums = f.user_file_sums()?;
        let args: Vec<String> = match rng.below(4) {
            0 | 1 => {
                next += 1;
                vec![
                    "snapshot".into(),
                    "create".into(),
                    "vm".into(),
                    format!("r{next}"),
                ]
            }
            2 if !snaps.is_empty() => {
                let s = &snaps[rng.below(snaps.len() as u64) as usize];
                vec!["snapshot".into(), "revert".into(), dom.into(), s.clone()]
            }
            _ if !snaps.is_empty() => {
                let s = &snaps[rng.below(snaps.len() as u64) as usize];
                let mut a = vec!["snapshot".into(), "delete".into(), dom.into(), s.clone()];
                if rng.below(4) == 0 {
                    a.push("--children".into());
                }
                a
            }
            _ => continue,
        };
        let crash = if rng.below(2) == 0 {
            Some(1 + rng.below(30))
        } else {
            None
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = f.command(&argv);
        if let Some(c) = crash {
            cmd.env("SNAPJOURNAL_CRASH_AT", c.to_string());
        }
        let st = cmd.output()?;
        let killed = st.status.signal() == Some(libc::SIGKILL);
        log.push(format!(
            "{}{} -> {}",
            args.join(" "),
            crash.map(|c| format!(" (crash at #{c})")).unwrap_or_default(),
            if killed {
                "killed".to_string()
            } else if st.status.success() {
                "ok".into()
            } else {
                format!("refused: {}", String::from_utf8_lossy(&st.stderr).trim())
            }
        ));
        let rec = f.run(&["recover"])?;
        if !rec.status.success() {
            violations.push(format!(
                "recover failed: {}",
                String::from_utf8_lossy(&rec.stderr)
            ));
            break;
        }
        let exec = recovery::open_without_recovery(&f.state)?;
        let report = recovery::fsck(&exec, None, false)?;
        drop(exec);
        for x in report.findings {
            violations.push(format!(
                "after `{}`: {} {}: {}",
                args.join(" "),
                x.invariant,
                x.kind,
                x.message
            ));
        }
        for (p, sum) in &sums {
            if std::fs::read(p).map(|b| crc32c::crc32c(&b)).ok() != Some(*sum) {
                violations.push(format!("I8 user image {p} changed"));
            }
        }
        if !violations.is_empty() {
            break;
        }
    }
    Ok(Schedule {
        seed,
        steps: log,
        violations,
    })
}
