//! Scale of redefine: N snapshots (default 10,000: 100 branches of 100) on
//! real qcow2 images, redefined in ONE transaction through the library;
//! then `snapjournal snapshot list --tree` end to end (process start to
//! exit) on that domain, and the resident memory of that process.
//!
//! `cargo bench -p snapjournal-tests --bench redefine [-- --snapshots N]`
//! (figures in docs/BENCHMARKS.md come from the release profile:
//! `--profile release`, with `SNAPJOURNAL_BIN` pointing at a release build).

use std::process::Command;
use std::time::{Duration, Instant};

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).status().expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

fn domain_xml(source: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>vm</name>\n  <memory unit='KiB'>131072</memory>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{source}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>"
    )
}

fn snapshot_xml(name: &str, parent: Option<&str>, frozen: &str, overlay: &str, t: i64) -> String {
    let parent = parent
        .map(|p| format!("  <parent>\n    <name>{p}</name>\n  </parent>\n"))
        .unwrap_or_default();
    format!(
        "<domainsnapshot>\n  <name>{name}</name>\n  <state>disk-snapshot</state>\n{parent}  <creationTime>{t}</creationTime>\n  <memory snapshot='no'/>\n  <disks>\n    <disk name='vda' snapshot='external' type='file'>\n      <driver type='qcow2'/>\n      <source file='{overlay}'/>\n    </disk>\n  </disks>\n  {}\n</domainsnapshot>\n",
        domain_xml(frozen)
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let n: usize = args
        .iter()
        .position(|a| a == "--snapshots")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 400 } else { 10_000 });
    let width = (n as f64).sqrt().ceil() as usize;
    let root = tempfile::Builder::new().prefix("sj-bench-").tempdir().unwrap();
    let img = root.path().join("img");
    std::fs::create_dir(&img).unwrap();
    let p = |name: &str| img.join(name).display().to_string();
    let base = p("vda.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "16M"]);

    // Images: branch b is base <- b-0 <- b-1 <- … (created without opening
    // the backing chain, two at a time).
    let started = Instant::now();
    let mut plan = Vec::new();
    for i in 0..n {
        let (b, d) = (i / width, i % width);
        let frozen = if d == 0 {
            base.clone()
        } else {
            p(&format!("b{b}-{}", d - 1))
        };
        plan.push((format!("b{b}-{d}"), frozen, p(&format!("b{b}-{d}"))));
    }
    std::thread::scope(|s| {
        for part in plan.chunks(plan.len().div_ceil(2)) {
            s.spawn(move || {
                for (_, frozen, overlay) in part {
                    qemu_img(&[
                        "create", "-q", "-f", "qcow2", "-u", "-b", frozen, "-F", "qcow2", overlay, "16M",
                    ]);
                }
            });
        }
    });
    eprintln!("{n} images created in {:.1} s", started.elapsed().as_secs_f64());

    let state = root.path().join("state");
    let (exec, _) = recovery::open(&state).unwrap();
    let last = plan.last().map(|(_, _, o)| o.clone()).unwrap();
    exec.define_domain(&domain_xml(&last)).unwrap();
    let items: Vec<(String, String)> = plan
        .iter()
        .enumerate()
        .map(|(i, (name, frozen, overlay))| {
            let d = i % width;
            let parent = (d > 0).then(|| format!("b{}-{}", i / width, d - 1));
            (
                format!("item {i}"),
                snapshot_xml(name, parent.as_deref(), frozen, overlay, 1_700_000_000 + i as i64),
            )
        })
        .collect();
    let started = Instant::now();
    let r = exec
        .snapshot_redefine(&executor::RedefineRequest {
            domain: "vm".into(),
            items,
            current: plan.last().map(|(n, _, _)| n.clone()),
            adopt_images: false,
        })
        .unwrap();
    let redefine = started.elapsed();
    assert_eq!(r.defined.len(), n);
    drop(exec);
    println!(
        "redefine {n} snapshots in one transaction: {:.2} s (target < 5 s)",
        redefine.as_secs_f64()
    );

    let bin = chaos::fixture::snapjournal_bin().unwrap();
    let list = |json: bool| {
        let mut c = Command::new(&bin);
        c.arg("--state-dir").arg(&state);
        if json {
            c.arg("--json");
        }
        c.args(["snapshot", "list", "vm", "--tree"]);
        let t = Instant::now();
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (t.elapsed(), out.stdout.len())
    };
    let runs: Vec<Duration> = (0..if quick { 3 } else { 11 }).map(|_| list(false).0).collect();
    let (_, bytes) = list(false);
    println!(
        "snapshot list --tree on {n} snapshots, whole CLI process: median {:.1} ms ({bytes} bytes of output; target < 50 ms)",
        median(runs).as_secs_f64() * 1000.0
    );
    // Resident memory of the CLI with all of them loaded.
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg(&bin)
        .arg("--state-dir")
        .arg(&state)
        .args(["snapshot", "list", "vm"])
        .output();
    if let Ok(o) = out {
        let err = String::from_utf8_lossy(&o.stderr);
        if let Some(kb) = err.lines().last().and_then(|l| l.trim().parse::<u64>().ok()) {
            println!(
                "resident memory of `snapshot list` with {n} snapshots: {:.1} MiB",
                kb as f64 / 1024.0
            );
        }
    }
    // SNAPJOURNAL_BENCH_KEEP=1 keeps the state directory for profiling.
    if std::env::var_os("SNAPJOURNAL_BENCH_KEEP").is_some() {
        #[allow(deprecated)]
        let kept = root.into_path();
        eprintln!("kept {}", kept.display());
    }
}
