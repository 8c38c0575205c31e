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
    /// QEMU deaths: what the kernel logged against what the suite saw.
    pub qemu: QemuAudit,
}

/// QEMU crashes during a run, counted twice: by the kernel (segfault
/// lines in `dmesg`) and by the suite's witness (violations naming a QEMU
/// that died unexplained). They must agree: a segfault the suite did not
/// report is a violation of its own.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QemuAudit {
    /// QEMU segfault lines the kernel logged during the run (`None`: the
    /// kernel log cannot be read here).
    pub kernel_segfaults: Option<usize>,
    /// Unexplained QEMU deaths the suite reported.
    pub suite_deaths: usize,
}

impl QemuAudit {
    /// Whether the kernel saw QEMU segfaults the suite did not report.
    pub fn disagrees(&self) -> bool {
        self.kernel_segfaults.is_some_and(|k| k > self.suite_deaths)
    }
}

impl Report {
    /// Number of invariant violations.
    pub fn violations(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Violation(_)))
            .count()
            + self.faults.iter().filter(|f| f.outcome == "violation").count()
            + usize::from(self.qemu.disagrees())
    }

    /// Counts the unexplained QEMU deaths the cases and faults reported.
    pub fn count_qemu_deaths(&self) -> usize {
        let case_lines = self.cases.iter().flat_map(|c| match &c.outcome {
            Outcome::Violation(v) => v.clone(),
            _ => Vec::new(),
        });
        let fault_lines = self.faults.iter().map(|f| f.detail.clone());
        case_lines
            .chain(fault_lines)
            .map(|l| l.matches(", which the test did not cause").count())
            .sum()
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
            "{:<42} {:>5} {:>7} {:>11} {:>14} {:>11} {:>10}\n",
            "operation", "disks", "double", "rolled-back", "rolled-forward", "not-reached", "VIOLATION"
        ));
        for ((op, disks, double), n) in &per {
            out.push_str(&format!(
                "{:<42} {:>5} {:>7} {:>11} {:>14} {:>11} {:>10}\n",
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
                if c.op.ends_with("+random-kill") {
                    out.push_str(&format!(
                        "  reproduce: snapjournal-chaos --mode live-random with the same --seed and --live-op, --cases {} (this is its last case)\n",
                        c.crash_at
                    ));
                } else if let Some(rest) = c.op.strip_prefix("libvirt-") {
                    // libvirt-{live|offline}-{op}[+libvirtd|+qemu]
                    let (side, rest) = rest.split_once('-').unwrap_or(("live", rest));
                    let (op, kill) = rest.split_once('+').unwrap_or((rest, "agent"));
                    out.push_str(&format!(
                        "  reproduce: snapjournal-chaos --mode libvirt --libvirt-op {op} --libvirt-{side} --libvirt-kill {kill} --disks {} --crash-at {}\n",
                        c.disks, c.crash_at
                    ));
                } else if c.op.starts_with("live-") {
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
            "\nQEMU deaths the test did not cause: {} reported by the suite, {}\n",
            self.qemu.suite_deaths,
            match self.qemu.kernel_segfaults {
                Some(k) => format!("{k} QEMU segfaults in the kernel log"),
                None => "kernel log not readable here".into(),
            }
        ));
        if self.qemu.disagrees() {
            out.push_str("VIOLATION the kernel logged QEMU segfaults that no case reported\n");
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
