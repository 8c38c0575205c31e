//! The chaos report: operation × crash point × outcome, totals, time.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::faults::FaultCase;
use crate::runner::{Case, Outcome};

/// The whole report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub mode: String,
    pub cases: Vec<Case>,
    pub faults: Vec<FaultCase>,
    pub seconds: f64,
}

impl Report {
    /// Number of invariant violations.
    pub fn violations(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Violation(_)))
            .count()
            + self.faults.iter().filter(|f| f.outcome == "violation").count()
    }

    /// Crash cases that reached their crash point.
    pub fn crash_cases(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| c.outcome != Outcome::NotReached)
            .count()
    }

    /// A table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut per: BTreeMap<(String, usize, bool), [usize; 4]> = BTreeMap::new();
        for c in &self.cases {
            let e = per
                .entry((c.op.clone(), c.disks, c.recovery_crash_at.is_some()))
                .or_default();
            match c.outcome {
                Outcome::RolledBack => e[0] += 1,
                Outcome::RolledForward => e[1] += 1,
                Outcome::NotReached => e[2] += 1,
                Outcome::Violation(_) => e[3] += 1,
            }
        }
        out.push_str(&format!(
            "{:<22} {:>5} {:>7} {:>11} {:>14} {:>11} {:>10}\n",
            "operation", "disks", "double", "rolled-back", "rolled-forward", "not-reached", "VIOLATION"
        ));
        for ((op, disks, double), n) in &per {
            out.push_str(&format!(
                "{:<22} {:>5} {:>7} {:>11} {:>14} {:>11} {:>10}\n",
                op,
                disks,
                if *double { "yes" } else { "no" },
                n[0],
                n[1],
                n[2],
                n[3]
            ));
        }
        for c in &self.cases {
            if let Outcome::Violation(v) = &c.outcome {
                out.push_str(&format!(
                    "VIOLATION {} {} disk(s), crash at #{} ({}){}:\n  {}\n",
                    c.op,
                    c.disks,
                    c.crash_at,
                    c.point,
                    c.recovery_crash_at
                        .map(|j| format!(
                            ", recovery crashed at #{j} ({})",
                            c.recovery_point.clone().unwrap_or_default()
                        ))
                        .unwrap_or_default(),
                    v.join("\n  ")
                ));
                if c.op.starts_with("live-") {
                    // Live cases are run per operation, every crash point.
                    let op = c.op.trim_end_matches("+qemu-killed");
                    out.push_str(&format!(
                        "  reproduce: snapjournal-chaos --mode live --live-op {op} (this case: crash point #{})\n",
                        c.crash_at
                    ));
                } else {
                    out.push_str(&format!(
                        "  reproduce: snapjournal-chaos --mode one --op {} --disks {} --crash-at {}{}\n",
                        c.op,
                        c.disks,
                        c.crash_at,
                        c.recovery_crash_at
                            .map(|j| format!(" --recovery-crash-at {j}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        out.push_str("\nfaults:\n");
        for f in &self.faults {
            out.push_str(&format!(
                "  {:<44} {:<12} {}\n",
                f.fault,
                f.outcome,
                first_line(&f.detail)
            ));
        }
        out.push_str(&format!(
            "\n{} crash cases ({} reached their crash point), {} fault cases, {} violations, {:.1} s\n",
            self.cases.len(),
            self.crash_cases(),
            self.faults.len(),
            self.violations(),
            self.seconds
        ));
        out
    }
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    if l.len() > 110 {
        &l[..l
            .char_indices()
            .take_while(|(i, _)| *i < 110)
            .last()
            .map(|(i, _)| i)
            .unwrap_or(0)]
    } else {
        l
    }
}
