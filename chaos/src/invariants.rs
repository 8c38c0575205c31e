//! Checks every invariant on a fixture after recovery.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::Serialize;

use crate::fixture::{region_holds, Fixture};
use crate::scenario::{Op, View};

/// Paths in a summary are relative to the fixture, so two fixtures compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub chains: BTreeMap<String, Vec<String>>,
    pub snapshots: BTreeMap<String, Option<String>>,
    pub current: Option<String>,
    /// Checkpoint → parent.
    pub checkpoints: BTreeMap<String, Option<String>>,
}

/// The shape of the fixture's domain, for comparing pre/post states (I6).
pub fn summary(f: &Fixture) -> Result<Summary> {
    let s = f.state()?;
    let root = f.root.path().to_string_lossy().into_owned();
    let rel = |p: &str| p.strip_prefix(&root).unwrap_or(p).to_string();
    let d = s
        .domains
        .get(&f.domain)
        .ok_or_else(|| anyhow::anyhow!("domain {} is gone", f.domain))?;
    Ok(Summary {
        chains: d
            .core
            .disks
            .values()
            .map(|x| (x.target.clone(), x.chain.iter().map(|c| rel(&c.path)).collect()))
            .collect(),
        snapshots: d
            .snapshots
            .values()
            .map(|s| (s.name.clone(), s.parent.clone()))
            .collect(),
        current: d.core.current_snapshot.clone(),
        checkpoints: d
            .checkpoints
            .values()
            .map(|c| (c.name.clone(), c.parent.clone()))
            .collect(),
    })
}

fn check_view(image: &str, v: &View, regions: u64, what: &str, out: &mut Vec<String>) -> Result<()> {
    for r in 0..regions {
        let want = v.get(&r).copied().unwrap_or(0);
        match region_holds(image, want, r) {
            Ok(true) => {}
            Ok(false) => out.push(format!(
                "I5 {what}: region {r} of {image} does not hold {want:#04x}"
            )),
            // A missing or unreadable image loses the data it held.
            Err(e) => {
                out.push(format!("I5 {what}: {image} cannot be read: {e:#}"));
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Every invariant; returns the violations (empty: all hold).
pub fn check(
    f: &Fixture,
    op: Op,
    pre: &Summary,
    post: &Summary,
    user_sums: &[(String, u32)],
) -> Result<Vec<String>> {
    check_with(f, op, pre, post, user_sums, false)
}

/// The fsck findings that report lost change tracking.
pub fn is_lost_tracking(kind: recovery::FindingKind) -> bool {
    use recovery::FindingKind as K;
    matches!(kind, K::MissingBitmap | K::InconsistentBitmap | K::BitmapState)
}

/// [`check`]; with `lost_tracking_reported`, fsck reporting lost change
/// tracking is expected (the crash hit a process that held the bitmaps).
pub fn check_with(
    f: &Fixture,
    op: Op,
    pre: &Summary,
    post: &Summary,
    user_sums: &[(String, u32)],
    lost_tracking_reported: bool,
) -> Result<Vec<String>> {
    let mut v = Vec::new();
    // I1–I4, I7, I9 and the event fold, through fsck.
    {
        let exec = recovery::open_without_recovery(&f.state)?;
        let report = recovery::fsck(&exec, None, false)?;
        for x in &report.findings {
            if lost_tracking_reported && is_lost_tracking(x.kind) {
                continue;
            }
            v.push(format!("{} {} {}: {}", x.invariant, x.kind, x.subject, x.message));
        }
        for x in &report.could_not_check {
            v.push(format!("fsck could not check: {x}"));
        }
    }
    // I7: a second recovery is a no-op.
    let again = f.ok(&["--json", "recover"])?;
    let again: serde_json::Value = serde_json::from_str(&again)?;
    if again["transactions"]
        .as_array()
        .map(|a| !a.is_empty())
        .unwrap_or(true)
    {
        v.push(format!("I7 a second recovery found work: {again}"));
    }
    // I6: the state is the pre-op or the post-op state, all disks or none.
    let now = summary(f)?;
    let outcome_post = if &now == post {
        true
    } else if &now == pre {
        false
    } else {
        v.push(format!(
            "I6 the state is neither the pre-op nor the post-op state:\n  now  {now:?}\n  pre  {pre:?}\n  post {post:?}"
        ));
        return Ok(v);
    };
    // I3 (beyond fsck): no stray file in the image directory.
    let state = f.state()?;
    let dom = state.domains.get(&f.domain).expect("checked by summary");
    let referenced = dom.referenced_images();
    let users: BTreeSet<String> = user_sums.iter().map(|(p, _)| p.clone()).collect();
    for e in std::fs::read_dir(&f.img)? {
        let p = e?.path().to_string_lossy().into_owned();
        if !referenced.contains(&p) && !users.contains(&p) {
            v.push(format!("I3 orphan file {p} in the image directory"));
        }
    }
    // I8: user files untouched.
    for (p, sum) in user_sums {
        match std::fs::read(p) {
            Ok(b) if crc32c::crc32c(&b) == *sum => {}
            Ok(_) => v.push(format!("I8 user image {p} was modified")),
            Err(_) => v.push(format!("I8 user image {p} was deleted")),
        }
    }
    // I5: every view reads what was written.
    let regions = 5;
    let present = if outcome_post {
        op.present_after()
    } else {
        op.present_before()
    };
    for d in dom.core.disks.values() {
        check_view(
            &d.chain[0].path,
            &present,
            regions,
            &format!("present view of {}", d.target),
            &mut v,
        )?;
    }
    let views = op.snapshot_views();
    for s in dom.snapshots.values() {
        let Some(want) = views.get(s.name.as_str()) else {
            continue;
        };
        for sd in &s.disks {
            if let Some(fz) = &sd.frozen {
                check_view(
                    &fz.path,
                    want,
                    regions,
                    &format!("snapshot {} disk {}", s.name, sd.disk),
                    &mut v,
                )?;
            }
        }
    }
    Ok(v)
}
