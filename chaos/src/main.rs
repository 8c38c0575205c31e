//! `snapjournal-chaos`: enumerate every crash point of every operation,
//! crash there, recover, check every invariant; inject faults; report.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use chaos::faults;
use chaos::livechaos::{self, LiveOp};
use chaos::report::Report;
use chaos::runner::{recovery_trace, reference, run_case_on, Case, Prepared, Reference};
use chaos::scenario::Op;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// CI: every operation on 1 and 2 disks at every crash point, double
    /// faults on a sample, every fault.
    Bounded,
    /// Every operation on 1–4 disks at every crash point, each with every
    /// recovery crash point, every fault.
    Full,
    /// One case (reproduction): --op, --disks, --crash-at.
    One,
    /// Seeded random schedules: --seed, --schedules, --steps.
    Random,
    /// Only the live operations on a real QEMU (every crash point, QEMU
    /// surviving or killed, double faults at the live commit points).
    Live,
    /// Live operations SIGKILLed at seeded random moments while the guest
    /// writes: --seed, --cases, --live-op.
    LiveRandom,
    /// Power cuts on a FUSE file system that keeps only what was synced:
    /// every offline operation (--op, --disks) cut at every crash point
    /// and before every sync, under several policies.
    PowerCut,
    /// The operations (--op) sent through `snapjournal serve`, the server
    /// killed at every crash point, restarted, checked.
    Served,
    /// The libvirt backend: a domain libvirt runs, adopted; each operation
    /// (--libvirt-op) crashed at every crash point, also with libvirtd
    /// SIGKILLed and restarted or QEMU killed at the points around the
    /// libvirt calls; running and shut off. Needs a libvirtd
    /// (`bash scripts/libvirtd start`).
    Libvirt,
}

#[derive(Parser)]
#[command(
    name = "snapjournal-chaos",
    about = "Crash every crash point, recover, check every invariant"
)]
struct Args {
    #[arg(long, value_enum, default_value = "bounded")]
    mode: Mode,
    /// Only these operations (create, create-on-chain, revert, delete-root, delete-leaf, delete-middle,
    /// delete-metadata-only, redefine, checkpoint-create, snapshot-with-checkpoint, checkpoint-delete,
    /// delete-with-checkpoints).
    #[arg(long = "op")]
    ops: Vec<String>,
    /// Only these disk counts.
    #[arg(long)]
    disks: Vec<usize>,
    #[arg(long)]
    crash_at: Option<u64>,
    #[arg(long)]
    recovery_crash_at: Option<u64>,
    /// Only these live operations (live-create, live-delete-active-commit,
    /// live-delete-stream, live-revert, live-snapshot-with-checkpoint, live-checkpoint-delete,
    /// live-delete-with-checkpoints, live-revert-with-checkpoints).
    #[arg(long = "live-op")]
    live_ops: Vec<String>,
    /// Leave out the live operations (bounded and full modes).
    #[arg(long)]
    no_live: bool,
    /// Parallel cases.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 4)]
    schedules: u64,
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// Leave out the power-cut sample (bounded mode).
    #[arg(long)]
    no_power_cut: bool,
    /// Only these cut policies in power-cut mode (drop-unsynced,
    /// keep-names, random, torn); all by default.
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Disks of the live operations' domain (live and power-cut modes).
    #[arg(long, default_value_t = 2)]
    live_disks: usize,
    /// Cases of the live-random mode (the bounded mode runs 6).
    #[arg(long, default_value_t = 24)]
    cases: u64,
    /// Only these operations of the libvirt mode (create, delete-middle,
    /// delete-leaf, delete-root, revert).
    #[arg(long = "libvirt-op")]
    libvirt_ops: Vec<String>,
    /// Leave out the libvirt backend's sample (bounded mode).
    #[arg(long)]
    no_libvirt: bool,
    /// Libvirt mode: only the running domain's cases.
    #[arg(long)]
    libvirt_live: bool,
    /// Libvirt mode: only the shut-off domain's cases.
    #[arg(long, conflicts_with = "libvirt_live")]
    libvirt_offline: bool,
    /// Libvirt mode: only this kind of kill (agent, libvirtd, qemu).
    #[arg(long)]
    libvirt_kill: Option<String>,
}

struct Job {
    op: Op,
    disks: usize,
    reference: Arc<Reference>,
    crash_at: u64,
    recovery_crash_at: Option<u64>,
    recovery_point: Option<String>,
}

fn run_jobs(jobs: Vec<Job>, parallel: usize) -> Vec<Case> {
    let total = jobs.len();
    // Popped from the end: reversed so cases run in order, grouped by
    // operation (each thread keeps few prepared fixtures alive).
    let mut list: Vec<(usize, Job)> = jobs.into_iter().enumerate().collect();
    list.reverse();
    let queue = Arc::new(Mutex::new(list));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for _ in 0..parallel.max(1) {
        let queue = queue.clone();
        let results = results.clone();
        threads.push(std::thread::spawn(move || {
            // One prepared fixture per (operation, disks) and thread.
            let mut prepared: HashMap<(&'static str, usize), Prepared> = HashMap::new();
            loop {
                let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                let Some((i, j)) = next else { break };
                let result = match prepared.entry((j.op.name(), j.disks)) {
                    Entry::Occupied(e) => Ok(e.into_mut()),
                    Entry::Vacant(v) => Prepared::new(j.op, j.disks).map(|p| v.insert(p)),
                }
                .and_then(|p| {
                    run_case_on(
                        p,
                        &j.reference,
                        j.crash_at,
                        j.recovery_crash_at,
                        j.recovery_point.clone(),
                    )
                });
                let case = result.unwrap_or_else(|e| Case {
                    op: j.op.name().into(),
                    disks: j.disks,
                    crash_at: j.crash_at,
                    point: "?".into(),
                    recovery_crash_at: j.recovery_crash_at,
                    recovery_point: j.recovery_point.clone(),
                    outcome: chaos::runner::Outcome::Violation(vec![format!(
                        "the case could not run: {e:#}"
                    )]),
                    millis: 0,
                });
                if let Ok(mut r) = results.lock() {
                    r.push((i, case));
                    if r.len() % 50 == 0 {
                        eprintln!("  {} / {total} cases", r.len());
                    }
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    let mut r = Arc::try_unwrap(results)
        .map(|m| m.into_inner().unwrap_or_default())
        .unwrap_or_default();
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, c)| c).collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let ops: Vec<Op> = if args.ops.is_empty() {
        Op::ALL.to_vec()
    } else {
        args.ops
            .iter()
            .map(|o| Op::parse(o).ok_or_else(|| anyhow::anyhow!("unknown operation {o}")))
            .collect::<Result<_>>()?
    };
    let disks: Vec<usize> = if !args.disks.is_empty() {
        args.disks.clone()
    } else if args.mode == Mode::Full {
        vec![1, 2, 3, 4]
    } else {
        vec![1, 2]
    };
    let mut report = Report {
        mode: match args.mode {
            Mode::Bounded => "bounded",
            Mode::Full => "full",
            Mode::One => "one",
            Mode::Random => "random",
            Mode::Live => "live",
            Mode::LiveRandom => "live-random",
            Mode::PowerCut => "power-cut",
            Mode::Served => "served",
            Mode::Libvirt => "libvirt",
        }
        .into(),
        ..Default::default()
    };
    let segfaults_before = chaos::witness::kernel_qemu_segfaults();
    let live_ops: Vec<LiveOp> = if args.live_ops.is_empty() {
        LiveOp::ALL.to_vec()
    } else {
        args.live_ops
            .iter()
            .map(|o| LiveOp::parse(o).ok_or_else(|| anyhow::anyhow!("unknown live operation {o}")))
            .collect::<Result<_>>()?
    };

    if args.mode == Mode::Random {
        let mut bad = 0;
        for s in 0..args.schedules {
            let seed = args.seed + s;
            for d in &disks {
                let sch = chaos::random::run_schedule(seed, *d, args.steps)?;
                println!(
                    "seed {seed}, {d} disk(s): {} steps, {} violations",
                    sch.steps.len(),
                    sch.violations.len()
                );
                if !sch.violations.is_empty() {
                    bad += 1;
                    for l in &sch.steps {
                        println!("    {l}");
                    }
                    for v in &sch.violations {
                        println!("  VIOLATION {v}");
                    }
                    println!("  reproduce: snapjournal-chaos --mode random --seed {seed} --schedules 1 --disks {d} --steps {}", args.steps);
                }
            }
        }
        if bad > 0 {
            std::process::exit(1);
        }
        return Ok(());
    }

    if args.mode == Mode::PowerCut || (args.mode == Mode::Bounded && !args.no_power_cut) {
        use chaos::powercut::model::Policy;
        type Plan = (Vec<Op>, Vec<usize>, Vec<LiveOp>, Vec<Policy>, Vec<Policy>);
        let (pc_ops, pc_disks, pc_live, points, syncs): Plan = if args.mode == Mode::PowerCut {
            (
                if args.ops.is_empty() && !args.live_ops.is_empty() {
                    vec![]
                } else {
                    ops.clone()
                },
                disks.clone(),
                if args.no_live || (!args.ops.is_empty() && args.live_ops.is_empty()) {
                    vec![]
                } else {
                    live_ops.clone()
                },
                vec![
                    Policy::DropAll,
                    Policy::KeepNames,
                    Policy::Random(args.seed),
                    Policy::Torn(args.seed),
                ],
                vec![Policy::DropAll, Policy::KeepNames, Policy::Torn(args.seed)],
            )
        } else {
            // CI's sample: the offline operations that create, rename
            // and remove files, on one disk, and the live create.
            (
                vec![Op::Create, Op::Revert, Op::DeleteLeaf],
                vec![1],
                if args.no_live {
                    vec![]
                } else {
                    vec![LiveOp::Create]
                },
                vec![Policy::DropAll],
                vec![Policy::DropAll],
            )
        };
        let wanted = |p: &Policy| {
            args.policies.is_empty()
                || args
                    .policies
                    .iter()
                    .any(|w| p.name() == *w || p.name().starts_with(&format!("{w}-")))
        };
        let points: Vec<Policy> = points.into_iter().filter(wanted).collect();
        let syncs: Vec<Policy> = syncs.into_iter().filter(wanted).collect();
        let mut jobs = chaos::powercut::jobs(&pc_ops, &pc_disks, &[], 2, &points, &syncs)?;
        // CI's live sample: crash points only (its time budget).
        let live_syncs: &[Policy] = if args.mode == Mode::Bounded { &[] } else { &syncs };
        jobs.extend(chaos::powercut::jobs(
            &[],
            &[],
            &pc_live,
            args.live_disks,
            &points,
            live_syncs,
        )?);
        eprintln!("running {} power-cut cases with {} jobs", jobs.len(), args.jobs);
        report.cases.extend(chaos::powercut::run_jobs(jobs, args.jobs));
    }

    if matches!(args.mode, Mode::Served | Mode::Bounded | Mode::Full) {
        // CI's sample: a create and a delete through a killed server.
        let served_ops: Vec<Op> = if args.mode == Mode::Served {
            ops.clone()
        } else {
            vec![Op::Create, Op::DeleteLeaf]
        };
        eprintln!("running the served cases (a killed server)");
        report.cases.extend(chaos::served::run(&served_ops, args.jobs)?);
    }

    if args.mode == Mode::Libvirt || (matches!(args.mode, Mode::Bounded | Mode::Full) && !args.no_libvirt) {
        use chaos::libvirtchaos::{Kill, LvOp};
        let all = args.mode != Mode::Bounded;
        let mut lv_ops: Vec<LvOp> = if all {
            LvOp::ALL.to_vec()
        } else {
            // CI's sample: the live commit point, snapjournal killed at
            // every crash point and libvirtd at the libvirt points (below:
            // also a merge with libvirtd killed); QEMU kills and the other
            // operations run in `--mode libvirt`.
            vec![LvOp::Create]
        };
        if !args.libvirt_ops.is_empty() {
            lv_ops.retain(|o| args.libvirt_ops.iter().any(|n| n == o.name()));
            if lv_ops.is_empty() {
                anyhow::bail!("no libvirt operation matches --libvirt-op {:?}", args.libvirt_ops);
            }
        }
        let running: &[bool] = if args.libvirt_offline {
            &[false]
        } else if args.libvirt_live || !all {
            &[true]
        } else {
            &[true, false]
        };
        let kills: &[Kill] = if let Some(k) = &args.libvirt_kill {
            match k.as_str() {
                "agent" => &[Kill::Agent],
                "libvirtd" => &[Kill::Libvirtd],
                "qemu" => &[Kill::Qemu],
                other => anyhow::bail!("--libvirt-kill {other}: agent, libvirtd or qemu"),
            }
        } else if all {
            &[Kill::Agent, Kill::Libvirtd, Kill::Qemu]
        } else {
            &[Kill::Agent, Kill::Libvirtd]
        };
        let d = if args.disks.is_empty() { 2 } else { args.disks[0] };
        eprintln!("running the libvirt backend's crash cases");
        report.cases.extend(chaos::libvirtchaos::run(
            &lv_ops,
            d,
            running,
            args.jobs,
            kills,
            args.crash_at,
            all,
        )?);
        if !all && args.libvirt_ops.is_empty() && args.libvirt_kill.is_none() {
            // libvirtd killed as a block commit ends (it can lose the
            // job's end: recovery judges it from QEMU's graph).
            report.cases.extend(chaos::libvirtchaos::run(
                &[LvOp::DeleteMiddle],
                d,
                running,
                args.jobs,
                &[Kill::Libvirtd],
                args.crash_at,
                all,
            )?);
        }
    }

    let mut jobs = Vec::new();
    let offline_ops: &[Op] = if matches!(
        args.mode,
        Mode::Live | Mode::LiveRandom | Mode::PowerCut | Mode::Served | Mode::Libvirt
    ) {
        &[]
    } else {
        &ops
    };
    for op in offline_ops {
        for d in &disks {
            // CI's bounded mode runs the checkpoint operations on one disk
            // (their multi-disk atomicity is the snapshot machinery's,
            // crashed on two disks above); full mode runs them on all.
            if args.mode == Mode::Bounded && op.is_checkpoint_op() && *d > 1 && args.disks.is_empty() {
                continue;
            }
            let r = Arc::new(reference(*op, *d)?);
            eprintln!("{} on {d} disk(s): {} crash points", op.name(), r.trace.len());
            let points: Vec<u64> = match (args.mode, args.crash_at) {
                (Mode::One, Some(c)) => vec![c],
                _ => (1..=r.trace.len() as u64).collect(),
            };
            for &c in &points {
                jobs.push(Job {
                    op: *op,
                    disks: *d,
                    reference: r.clone(),
                    crash_at: c,
                    recovery_crash_at: None,
                    recovery_point: None,
                });
            }
            // Double faults: crash recovery at each of its own points.
            let double: Vec<u64> = match args.mode {
                Mode::Full => points.clone(),
                // A sample: every 9th crash point of the 1-disk runs.
                Mode::Bounded if *d == 1 => points.iter().copied().filter(|c| c % 9 == 2).collect(),
                Mode::One => args.recovery_crash_at.map(|_| points.clone()).unwrap_or_default(),
                _ => vec![],
            };
            for c in double {
                let rt = recovery_trace(*op, *d, c)?;
                let js: Vec<u64> = match (args.mode, args.recovery_crash_at) {
                    (Mode::One, Some(j)) => vec![j],
                    _ => (1..=rt.len() as u64).collect(),
                };
                for j in js {
                    jobs.push(Job {
                        op: *op,
                        disks: *d,
                        reference: r.clone(),
                        crash_at: c,
                        recovery_crash_at: Some(j),
                        recovery_point: rt.get(j as usize - 1).cloned(),
                    });
                }
            }
        }
    }
    if args.mode == Mode::One {
        jobs.retain(|j| j.recovery_crash_at == args.recovery_crash_at);
    }
    eprintln!("running {} crash cases with {} jobs", jobs.len(), args.jobs);
    report.cases.extend(run_jobs(jobs, args.jobs));

    if matches!(args.mode, Mode::LiveRandom | Mode::Bounded | Mode::Full) && !args.no_live {
        let cases = if args.mode == Mode::Bounded { 6 } else { args.cases };
        eprintln!(
            "running {cases} live cases killed at random moments (seed {})",
            args.seed
        );
        report
            .cases
            .extend(chaos::livekill::run(&live_ops, args.seed, cases)?);
    }

    if matches!(args.mode, Mode::Live | Mode::Bounded | Mode::Full) && !args.no_live {
        let jobs = livechaos::jobs(&live_ops, args.mode != Mode::Bounded, args.live_disks)?;
        eprintln!("running {} live crash cases with {} jobs", jobs.len(), args.jobs);
        report.cases.extend(livechaos::run_jobs(jobs, args.jobs));
        if args.mode != Mode::One {
            eprintln!("running live fault cases");
            for (op, command) in [
                (LiveOp::Create, "blockdev-add"),
                (LiveOp::Create, "transaction"),
                (LiveOp::DeleteActive, "block-commit"),
                (LiveOp::DeleteActive, "job-complete"),
                (LiveOp::DeleteActive, "blockdev-del"),
                (LiveOp::DeleteStream, "block-stream"),
                (LiveOp::Revert, "quit"),
                (LiveOp::SnapshotWithCheckpoint, "transaction"),
                (LiveOp::CheckpointDelete, "transaction"),
                (LiveOp::DeleteWithCheckpoints, "transaction"),
            ] {
                if live_ops.contains(&op) {
                    report.faults.push(livechaos::reply_lost(op, command)?);
                }
            }
        }
    }

    if !matches!(
        args.mode,
        Mode::One | Mode::Live | Mode::LiveRandom | Mode::PowerCut | Mode::Served | Mode::Libvirt
    ) {
        eprintln!("running fault cases");
        report.faults.push(faults::storage_fault("readonly")?);
        report.faults.push(faults::storage_fault("full")?);
        report.faults.push(faults::xml_folder_unwritable()?);
        report.faults.push(faults::corrupt_record()?);
        let fault_ops: &[(Op, usize)] = if args.mode == Mode::Full {
            &[
                (Op::Create, 2),
                (Op::Revert, 2),
                (Op::DeleteLeaf, 2),
                (Op::DeleteRoot, 2),
            ]
        } else {
            &[(Op::Create, 2), (Op::DeleteLeaf, 1)]
        };
        for (op, d) in fault_ops {
            for n in 1..=8 {
                report.faults.push(faults::qemu_img_fails(*op, *d, n)?);
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.qemu.suite_deaths = report.count_qemu_deaths();
    report.qemu.kernel_segfaults = match (segfaults_before, chaos::witness::kernel_qemu_segfaults()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    print!("{}", report.table());
    if let Some(p) = &args.report {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", p.display());
    }
    if report.violations() > 0 {
        std::process::exit(1);
    }
    Ok(())
}
