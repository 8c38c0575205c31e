//! What the journal costs next to the bare operation (issue 8), measured
//! side by side in one run on real images and a real QEMU:
//!
//! - offline create / revert / delete on 1, 2 and 4 disks: the journaled
//!   operation (library call: validation, journal, XML) against the very
//!   same qemu-img calls with nothing around them, interleaved round by
//!   round; the ratio of the medians;
//! - live create and delete (active block-commit) on 1, 2 and 4 disks
//!   against the same qemu-img and QMP calls;
//! - the CLI end to end (process start to exit) taking a snapshot of a
//!   running 2-disk domain, against virsh's 160 ms measured here;
//! - recovery of many open transactions, the journal scan and the world
//!   probes timed apart;
//! - a create and a delete on a domain with 1,000 snapshots against one
//!   with a single snapshot.
//!
//! `cargo bench --workspace --bench overhead [-- --quick]` (the figures in
//! docs/BENCHMARKS.md come from the default bench profile, release).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use executor::images::QemuImg;
use executor::live::graph::{file_node, format_node};
use executor::live::qmp::{Cmd, Qmp};
use executor::{CreateRequest, DeleteRequest, Executor, MergeChoice, RevertRequest};
use journal::{ChainImage, DiskState, DomainCore, Intent, Plan, Step};
use serde_json::json;

const SIZE: &str = "64M";

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn timed<R>(f: impl FnOnce() -> R) -> (Duration, R) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn disk_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("vd{}", (b'a' + i as u8) as char))
        .collect()
}

/// A domain `name` with `disks` fresh base images under `dir`, defined in
/// `exec`.
fn define(exec: &Executor, dir: &Path, name: &str, disks: usize) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = disk_names(disks)
        .into_iter()
        .map(|d| {
            let p = dir.join(format!("{name}-{d}.qcow2")).display().to_string();
            QemuImg::default().create(&p, "qcow2", SIZE).unwrap();
            (d, p)
        })
        .collect();
    exec.define_domain(&chaos::fixture::domain_xml(name, &pairs))
        .unwrap();
    pairs
}

/// The bare side: per disk, its chain (active first), changed with the
/// same qemu-img calls the journaled plan makes.
struct Bare {
    img: QemuImg,
    chains: Vec<Vec<String>>,
    base: Vec<String>,
    n: usize,
}

impl Bare {
    fn new(dir: &Path, disks: usize) -> Bare {
        let img = QemuImg::default();
        let base: Vec<String> = disk_names(disks)
            .iter()
            .map(|d| {
                let p = dir.join(format!("bare-{d}.qcow2")).display().to_string();
                img.create(&p, "qcow2", SIZE).unwrap();
                p
            })
            .collect();
        Bare {
            img,
            chains: base.iter().map(|b| vec![b.clone()]).collect(),
            base,
            n: 0,
        }
    }

    fn fresh(&mut self, disk: usize) -> String {
        self.n += 1;
        format!("{}.{}", self.base[disk], self.n)
    }

    fn create(&mut self) {
        for d in 0..self.chains.len() {
            let p = self.fresh(d);
            self.img
                .create_overlay(&p, &ChainImage::qcow2(self.chains[d][0].clone()))
                .unwrap();
            self.chains[d].insert(0, p);
        }
    }

    /// `qemu-img create -f qcow2 -b <active> -F qcow2 <file>` per disk,
    /// into throwaway files (the chains stay as they are).
    fn create_with_qemu_img(&mut self, dir: &Path) {
        for d in 0..self.chains.len() {
            let p = dir
                .join(format!("peer-{}-{d}.qcow2", self.n))
                .display()
                .to_string();
            let st = Command::new("qemu-img")
                .args([
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    &self.chains[d][0],
                    &p,
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }

    fn revert(&mut self) {
        for d in 0..self.chains.len() {
            let p = self.fresh(d);
            self.img
                .create_overlay(&p, &ChainImage::qcow2(self.chains[d][1].clone()))
                .unwrap();
            let old = std::mem::replace(&mut self.chains[d][0], p);
            std::fs::remove_file(old).unwrap();
        }
    }

    /// The delete of the snapshot under the active layer, merged as the
    /// journaled delete chose.
    fn delete(&mut self, choices: &[bool]) {
        for (d, commit) in choices.iter().enumerate() {
            let chain = &mut self.chains[d];
            if *commit {
                self.img.commit(&chain[0], &chain[1]).unwrap();
                std::fs::remove_file(&chain[0]).unwrap();
                chain.remove(0);
            } else {
                let below = chain.get(2).map(|p| ChainImage::qcow2(p.clone()));
                self.img.rebase(&chain[0], below.as_ref(), true).unwrap();
                let dropped = chain.remove(1);
                if dropped != self.base[d] {
                    std::fs::remove_file(dropped).unwrap();
                }
            }
        }
    }
}

fn commits(merges: &[MergeChoice]) -> Vec<bool> {
    merges
        .iter()
        .map(|m| matches!(m, MergeChoice::Commit { .. }))
        .collect()
}

/// Offline create, revert, delete: journaled against bare, per round.
fn offline(disks: usize, rounds: usize) -> BTreeMap<&'static str, (Vec<Duration>, Vec<Duration>)> {
    let root = tempfile::Builder::new().prefix("sj-ovh-").tempdir().unwrap();
    let (exec, _) = recovery::open(&root.path().join("state")).unwrap();
    define(&exec, root.path(), "vm", disks);
    let mut bare = Bare::new(root.path(), disks);
    let mut out: BTreeMap<&str, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    for r in 0..rounds {
        let name = format!("s{r}");
        // Alternate which side goes first, so neither profits from caches.
        let first = r % 2 == 0;
        let mut j = |op: &'static str, d: Duration| out.entry(op).or_default().0.push(d);
        let (jc, _) = timed(|| {
            exec.snapshot_create(&CreateRequest {
                domain: "vm".into(),
                name: name.clone(),
                ..Default::default()
            })
            .unwrap()
        });
        j("create", jc);
        let (bc, _) = timed(|| bare.create());
        out.entry("create").or_default().1.push(bc);
        // The peer a user would run: one `qemu-img create` per disk (the
        // journaled path writes its overlays in-process, no process).
        let (pc, _) = timed(|| bare.create_with_qemu_img(root.path()));
        out.entry("create/qemu-img").or_default().0.push(jc);
        out.entry("create/qemu-img").or_default().1.push(pc);
        let revert = || {
            exec.snapshot_revert(&RevertRequest {
                domain: "vm".into(),
                snapshot: name.clone(),
                overlays: BTreeMap::new(),
            })
            .unwrap()
        };
        let (jr, br) = if first {
            let (jr, _) = timed(revert);
            let (br, _) = timed(|| bare.revert());
            (jr, br)
        } else {
            let (br, _) = timed(|| bare.revert());
            let (jr, _) = timed(revert);
            (jr, br)
        };
        out.entry("revert").or_default().0.push(jr);
        out.entry("revert").or_default().1.push(br);
        let (jd, rep) = timed(|| {
            exec.snapshot_delete(&DeleteRequest {
                domain: "vm".into(),
                snapshot: name.clone(),
                ..Default::default()
            })
            .unwrap()
        });
        let choices = commits(&rep.merges);
        let (bd, _) = timed(|| bare.delete(&choices));
        out.entry("delete").or_default().0.push(jd);
        out.entry("delete").or_default().1.push(bd);
    }
    out
}

/// A QEMU of our own for the bare side, on the same kind of command line.
fn bare_qemu(dir: &Path, bare: &Bare) -> (Qmp, u32) {
    let mut disks = BTreeMap::new();
    let mut pairs = Vec::new();
    for (i, d) in disk_names(bare.base.len()).into_iter().enumerate() {
        pairs.push((d.clone(), bare.base[i].clone()));
        disks.insert(
            d.clone(),
            DiskState {
                target: d,
                chain: vec![ChainImage::qcow2(bare.base[i].clone())],
            },
        );
    }
    let core = DomainCore {
        name: "bare".into(),
        xml: chaos::fixture::domain_xml("bare", &pairs),
        disks,
        current_snapshot: None,
        runtime: None,
    };
    let sock = dir.join("bare.qmp");
    let pid = executor::live::qemu::launch(&core, &sock, &dir.join("bare.pid")).unwrap();
    let q = Qmp::connect_until(&sock, Instant::now() + Duration::from_secs(10)).unwrap();
    (q, pid)
}

fn wait_job(q: &mut Qmp, id: &str, status: &str) {
    loop {
        match q.job(id).unwrap() {
            Some(j) if j.status == status => return,
            None => panic!("job {id} vanished"),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Live create and delete (active commit): journaled against bare.
fn live(disks: usize, rounds: usize) -> BTreeMap<&'static str, (Vec<Duration>, Vec<Duration>)> {
    let root = tempfile::Builder::new().prefix("sj-ovh-").tempdir().unwrap();
    let (exec, _) = recovery::open(&root.path().join("state")).unwrap();
    define(&exec, root.path(), "vm", disks);
    exec.domain_start("vm", true).unwrap();
    let mut bare = Bare::new(root.path(), disks);
    let (mut q, pid) = bare_qemu(root.path(), &bare);
    let mut out: BTreeMap<&str, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    for r in 0..rounds {
        let name = format!("s{r}");
        let (jc, _) = timed(|| {
            exec.snapshot_create(&CreateRequest {
                domain: "vm".into(),
                name: name.clone(),
                ..Default::default()
            })
            .unwrap()
        });
        let (bc, _) = timed(|| {
            let mut actions = Vec::new();
            for d in 0..disks {
                let top = bare.chains[d][0].clone();
                let p = bare.fresh(d);
                bare.img
                    .create_overlay(&p, &ChainImage::qcow2(top.clone()))
                    .unwrap();
                q.execute(
                    Cmd::BlockdevAdd,
                    json!({"driver": "qcow2", "node-name": format_node(&p),
                           "file": {"driver": "file", "filename": p, "node-name": file_node(&p)},
                           "backing": null}),
                )
                .unwrap();
                actions.push(json!({"type": "blockdev-snapshot",
                                    "data": {"node": format_node(&top), "overlay": format_node(&p)}}));
                bare.chains[d].insert(0, p);
            }
            q.execute(Cmd::Transaction, json!({ "actions": actions }))
                .unwrap();
        });
        out.entry("live create").or_default().0.push(jc);
        out.entry("live create").or_default().1.push(bc);
        let (jd, rep) = timed(|| {
            exec.snapshot_delete(&DeleteRequest {
                domain: "vm".into(),
                snapshot: name.clone(),
                ..Default::default()
            })
            .unwrap()
        });
        let choices = commits(&rep.merges);
        let (bd, _) = timed(|| {
            for (d, commit) in choices.iter().enumerate() {
                let chain = bare.chains[d].clone();
                let id = format!("bare-{r}-{d}");
                if *commit {
                    // Active commit of the top into the image below.
                    q.execute(
                        Cmd::BlockCommit,
                        json!({"job-id": id, "device": format_node(&chain[0]), "top-node": format_node(&chain[0]),
                               "base-node": format_node(&chain[1]), "auto-dismiss": false}),
                    )
                    .unwrap();
                    wait_job(&mut q, &id, "ready");
                    q.execute(Cmd::JobComplete, json!({"id": id})).unwrap();
                    wait_job(&mut q, &id, "concluded");
                    q.execute(Cmd::JobDismiss, json!({"id": id})).unwrap();
                    q.execute(Cmd::BlockdevDel, json!({"node-name": format_node(&chain[0])}))
                        .unwrap();
                    std::fs::remove_file(&chain[0]).unwrap();
                    bare.chains[d].remove(0);
                } else {
                    // Stream the image below into the top.
                    let mut args =
                        json!({"job-id": id, "device": format_node(&chain[0]), "auto-dismiss": false});
                    if let Some(below) = chain.get(2) {
                        args["base-node"] = json!(format_node(below));
                    }
                    q.execute(Cmd::BlockStream, args).unwrap();
                    wait_job(&mut q, &id, "concluded");
                    q.execute(Cmd::JobDismiss, json!({"id": id})).unwrap();
                    q.execute(Cmd::BlockdevDel, json!({"node-name": format_node(&chain[1])}))
                        .unwrap();
                    if chain[1] != bare.base[d] {
                        std::fs::remove_file(&chain[1]).unwrap();
                    }
                    bare.chains[d].remove(1);
                }
            }
        });
        out.entry("live delete").or_default().0.push(jd);
        out.entry("live delete").or_default().1.push(bd);
    }
    let _ = q.execute(Cmd::Quit, json!({}));
    executor::live::qemu::wait_exit(pid, Duration::from_secs(10));
    exec.domain_stop("vm").unwrap();
    out
}

/// `snapjournal snapshot create` of a running 2-disk domain, process start
/// to exit.
fn cli_create(rounds: usize) -> Vec<Duration> {
    let root = tempfile::Builder::new().prefix("sj-ovh-").tempdir().unwrap();
    let state = root.path().join("state");
    {
        let (exec, _) = recovery::open(&state).unwrap();
        define(&exec, root.path(), "vm", 2);
        exec.domain_start("vm", true).unwrap();
    }
    let bin = chaos::fixture::snapjournal_bin().unwrap();
    let mut out = Vec::new();
    for r in 0..rounds {
        let (t, o) = timed(|| {
            Command::new(&bin)
                .arg("--state-dir")
                .arg(&state)
                .args(["snapshot", "create", "vm", &format!("s{r}")])
                .output()
                .unwrap()
        });
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.push(t);
    }
    let (exec, _) = recovery::open(&state).unwrap();
    exec.domain_stop("vm").unwrap();
    out
}

/// `domains` domains, each with one open snapshot-create transaction whose
/// overlays exist for every other domain; then recovery.
fn recovery_scale(domains: usize) -> (Duration, Duration, usize) {
    let root = tempfile::Builder::new().prefix("sj-ovh-").tempdir().unwrap();
    let state = root.path().join("state");
    {
        let (exec, _) = recovery::open(&state).unwrap();
        let j = exec.journal();
        for i in 0..domains {
            let name = format!("d{i}");
            let pairs = define(&exec, root.path(), &name, 1);
            let base = &pairs[0].1;
            let overlay = format!("{base}.s1");
            if i % 2 == 0 {
                QemuImg::default()
                    .create_overlay(&overlay, &ChainImage::qcow2(base.clone()))
                    .unwrap();
            }
            let dom = j.domain(&name).unwrap().unwrap();
            let plan = Plan {
                steps: vec![
                    Step::CreateOverlay {
                        disk: "vda".into(),
                        path: overlay,
                        backing: ChainImage::qcow2(base.clone()),
                    },
                    Step::SyncXml { domain: name.clone() },
                ],
                commit_index: 1,
                changes: vec![],
            };
            j.begin(
                Intent::SnapshotCreate {
                    domain: name.clone(),
                    snapshot: "s1".into(),
                },
                plan,
                Some(dom.core),
            )
            .unwrap();
        }
    }
    let (scan, exec) = timed(|| recovery::open_without_recovery(&state).unwrap());
    let (rec, report) = timed(|| recovery::recover_all(&exec, false).unwrap());
    assert!(report.all_closed());
    (scan, rec, report.transactions.len())
}

/// A create and a delete on a domain with `snapshots` snapshots defined
/// (redefined in one go, all frozen on an older image: the metadata is at
/// scale, the present chain stays short).
fn scale(snapshots: usize, rounds: usize) -> (Duration, Duration) {
    let root = tempfile::Builder::new().prefix("sj-ovh-").tempdir().unwrap();
    let (exec, _) = recovery::open(&root.path().join("state")).unwrap();
    define(&exec, root.path(), "vm", 1);
    // The old snapshots are frozen on an image of their own (an older
    // history), not on the present chain.
    let old = root.path().join("old.qcow2").display().to_string();
    QemuImg::default().create(&old, "qcow2", SIZE).unwrap();
    let dom_xml = chaos::fixture::domain_xml("vm", &[("vda".to_string(), old)]);
    let items: Vec<(String, String)> = (0..snapshots)
        .map(|i| {
            let parent = if i > 0 {
                format!("  <parent>\n    <name>old{}</name>\n  </parent>\n", i - 1)
            } else {
                String::new()
            };
            let xml = format!(
                "<domainsnapshot>\n  <name>old{i}</name>\n  <state>shutoff</state>\n{parent}  <creationTime>{}</creationTime>\n  <memory snapshot='no'/>\n  <disks>\n    <disk name='vda' snapshot='external' type='file'/>\n  </disks>\n  {dom_xml}\n</domainsnapshot>\n",
                1_700_000_000 + i
            );
            (format!("item {i}"), xml)
        })
        .collect();
    exec.snapshot_redefine(&executor::RedefineRequest {
        domain: "vm".into(),
        items,
        current: None,
        adopt_images: false,
    })
    .unwrap();
    // The redefine's files written back before the timed rounds (their
    // fsyncs would otherwise wait behind the writeback of 1,000 files).
    let _ = Command::new("sync").status();
    let mut c = Vec::new();
    let mut d = Vec::new();
    for r in 0..rounds {
        let name = format!("s{r}");
        let (t, _) = timed(|| {
            exec.snapshot_create(&CreateRequest {
                domain: "vm".into(),
                name: name.clone(),
                ..Default::default()
            })
            .unwrap()
        });
        c.push(t);
        let (t, _) = timed(|| {
            exec.snapshot_delete(&DeleteRequest {
                domain: "vm".into(),
                snapshot: name.clone(),
                ..Default::default()
            })
            .unwrap()
        });
        d.push(t);
    }
    (median(&c), median(&d))
}

/// Writes back dirty pages and, as root, drops the page cache, so that
/// both sides of a merge read their images from the disk alike (the side
/// whose images were written first would otherwise find fewer of them
/// cached).
fn settle_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Fills the first `gib` GiB of `image` with `pattern` (qemu-io, one GiB
/// per request: a single request is limited to under 2 GiB).
fn fill(image: &str, pattern: u8, gib: u64) {
    let mut args = vec!["-f".to_string(), "qcow2".to_string()];
    for g in 0..gib {
        args.push("-c".into());
        args.push(format!("write -P {pattern:#04x} {g}G 1G"));
    }
    args.push(image.to_string());
    let st = Command::new("qemu-io")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "qemu-io write into {image}");
}

/// What both merge benchmarks start from: domain `vm` (journaled) with
/// snapshots s1 and s2, its base, o1 and o2 each holding `gib` GiB, and
/// the bare twin chain base <- o1 <- o2 with the same data.
struct MergeSetup {
    root: tempfile::TempDir,
    exec: Executor,
    img: QemuImg,
    /// The twin's base, o1 and o2.
    bare: [String; 3],
}

fn merge_setup(gib: u64) -> MergeSetup {
    let root = tempfile::Builder::new().prefix("sj-merge-").tempdir().unwrap();
    let size = format!("{gib}G");
    let (exec, _) = recovery::open(&root.path().join("state")).unwrap();
    let base = root.path().join("vm-vda.qcow2").display().to_string();
    let img = QemuImg::default();
    img.create(&base, "qcow2", &size).unwrap();
    exec.define_domain(&chaos::fixture::domain_xml(
        "vm",
        &[("vda".to_string(), base.clone())],
    ))
    .unwrap();
    let active = |exec: &Executor| {
        exec.journal().domain("vm").unwrap().unwrap().core.disks["vda"].chain[0]
            .path
            .clone()
    };
    for (snap, pattern) in [("s1", 0xa1u8), ("s2", 0xa2)] {
        exec.snapshot_create(&CreateRequest {
            domain: "vm".into(),
            name: snap.into(),
            ..Default::default()
        })
        .unwrap();
        fill(&active(&exec), pattern, gib);
    }
    // The twin: base <- o1 <- o2, the same data.
    let b0 = root.path().join("bare.qcow2").display().to_string();
    img.create(&b0, "qcow2", &size).unwrap();
    let b1 = format!("{b0}.1");
    let b2 = format!("{b0}.2");
    img.create_overlay(&b1, &ChainImage::qcow2(b0.clone())).unwrap();
    fill(&b1, 0xa1, gib);
    img.create_overlay(&b2, &ChainImage::qcow2(b1.clone())).unwrap();
    fill(&b2, 0xa2, gib);
    MergeSetup {
        root,
        exec,
        img,
        bare: [b0, b1, b2],
    }
}

/// Deletes s2 of `vm` (the journaled side of both merge benchmarks).
fn delete_s2(exec: &Executor) -> executor::DeleteReport {
    exec.snapshot_delete(&DeleteRequest {
        domain: "vm".into(),
        snapshot: "s2".into(),
        ..Default::default()
    })
    .unwrap()
}

/// An offline delete that merges `gib` GiB, journaled, against the bare
/// qemu-img call on a twin chain with the same data: base, o1 and o2 each
/// hold `gib` GiB; deleting s2 merges o1 and o2 (a commit of o2 into o1,
/// or a pull of o1 into o2, whichever the journal picks as cheaper; the
/// bare side makes the same choice). Returns (journaled, bare, choice,
/// bytes moved).
fn merge_at_scale(gib: u64) -> (Duration, Duration, String, u64) {
    let MergeSetup {
        root: _root,
        exec,
        img,
        bare: [_, b1, b2],
    } = merge_setup(gib);
    // The bare side first (the choice is the journal's: it picks the
    // cheaper merge, and here o2 holds no more than o1, so a commit).
    settle_caches();
    let (b, _) = timed(|| {
        img.commit(&b2, &b1).unwrap();
        std::fs::remove_file(&b2).unwrap();
    });
    settle_caches();
    let (j, rep) = timed(|| delete_s2(&exec));
    let (choice, moved) = match rep.merges.first() {
        Some(MergeChoice::Commit { top_bytes, .. }) => ("commit", *top_bytes),
        Some(MergeChoice::Pull { base_bytes, .. }) => ("pull", *base_bytes),
        other => panic!("no merge: {other:?}"),
    };
    assert_eq!(choice, "commit", "the bare side committed");
    (j, b, choice.to_string(), moved)
}

/// A live delete that merges `gib` GiB by an active commit, journaled,
/// against the bare QMP calls (`block-commit`, `job-complete`,
/// `job-dismiss`, `blockdev-del`, `rm`) on a twin chain in a QEMU of our
/// own: base, o1 and o2 each hold `gib` GiB, written before the QEMUs
/// start; both domains paused. Returns (journaled, bare, choice, bytes
/// moved).
fn live_merge_at_scale(gib: u64) -> (Duration, Duration, String, u64) {
    let MergeSetup {
        root,
        exec,
        bare: [b0, b1, b2],
        ..
    } = merge_setup(gib);
    exec.domain_start("vm", true).unwrap();
    let core = DomainCore {
        name: "bare".into(),
        xml: chaos::fixture::domain_xml("bare", &[("vda".to_string(), b2.clone())]),
        disks: BTreeMap::from([(
            "vda".to_string(),
            DiskState {
                target: "vda".into(),
                chain: vec![
                    ChainImage::qcow2(b2.clone()),
                    ChainImage::qcow2(b1.clone()),
                    ChainImage::qcow2(b0.clone()),
                ],
            },
        )]),
        current_snapshot: None,
        runtime: None,
    };
    let sock = root.path().join("bare.qmp");
    let pid = executor::live::qemu::launch(&core, &sock, &root.path().join("bare.pid")).unwrap();
    let mut q = Qmp::connect_until(&sock, Instant::now() + Duration::from_secs(10)).unwrap();
    settle_caches();
    let (b, _) = timed(|| {
        let id = "bare-merge";
        q.execute(
            Cmd::BlockCommit,
            json!({"job-id": id, "device": format_node(&b2), "top-node": format_node(&b2),
                   "base-node": format_node(&b1), "auto-dismiss": false}),
        )
        .unwrap();
        wait_job(&mut q, id, "ready");
        q.execute(Cmd::JobComplete, json!({"id": id})).unwrap();
        wait_job(&mut q, id, "concluded");
        q.execute(Cmd::JobDismiss, json!({"id": id})).unwrap();
        q.execute(Cmd::BlockdevDel, json!({"node-name": format_node(&b2)}))
            .unwrap();
        std::fs::remove_file(&b2).unwrap();
    });
    settle_caches();
    let (j, rep) = timed(|| delete_s2(&exec));
    let _ = q.execute(Cmd::Quit, json!({}));
    executor::live::qemu::wait_exit(pid, Duration::from_secs(10));
    exec.domain_stop("vm").unwrap();
    let (choice, moved) = match rep.merges.first() {
        Some(MergeChoice::Commit { top_bytes, .. }) => ("active commit", *top_bytes),
        Some(MergeChoice::Pull { base_bytes, .. }) => ("pull", *base_bytes),
        other => panic!("no merge: {other:?}"),
    };
    assert_eq!(choice, "active commit", "the bare side committed");
    (j, b, choice.to_string(), moved)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if let Some(i) = std::env::args().position(|a| a == "--live-merge-only") {
        let gib: u64 = std::env::args()
            .nth(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let (j, b, choice, moved) = live_merge_at_scale(gib);
        println!(
            "live delete merging {gib} GiB ({choice}, {:.1} MiB moved): journaled {:.1} ms, bare QMP {:.1} ms, ratio {:.3}",
            moved as f64 / (1024.0 * 1024.0),
            ms(j),
            ms(b),
            j.as_secs_f64() / b.as_secs_f64()
        );
        return;
    }
    if let Some(i) = std::env::args().position(|a| a == "--merge-only") {
        let gib: u64 = std::env::args()
            .nth(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let (j, b, choice, moved) = merge_at_scale(gib);
        println!(
            "offline delete merging {gib} GiB ({choice}, {:.1} MiB moved): journaled {:.1} ms, bare qemu-img {:.1} ms, ratio {:.3}",
            moved as f64 / (1024.0 * 1024.0),
            ms(j),
            ms(b),
            j.as_secs_f64() / b.as_secs_f64()
        );
        return;
    }
    if std::env::args().any(|a| a == "--scale-only") {
        let (c1, d1) = scale(1, 15);
        let (cn, dn) = scale(1000, 15);
        println!(
            "create / delete with 1 snapshot: {:.2} / {:.2} ms; with 1000: {:.2} / {:.2} ms",
            ms(c1),
            ms(d1),
            ms(cn),
            ms(dn)
        );
        return;
    }
    if let Some(i) = std::env::args().position(|a| a == "--recovery-only") {
        let n: usize = std::env::args()
            .nth(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        // Side by side in one run: one after another, then on threads.
        for threads in ["1", "8"] {
            std::env::set_var("SNAPJOURNAL_RECOVERY_THREADS", threads);
            let (scan, rec, txns) = recovery_scale(n);
            println!(
                "recovery of {txns} open transactions on {n} domains, {threads} thread(s): journal open and scan {:.1} ms, probes and actions {:.1} ms",
                ms(scan),
                ms(rec)
            );
        }
        return;
    }
    let rounds = if quick { 3 } else { 15 };
    println!("op                 disks   journaled ms   bare ms   ratio   target");
    for disks in [1, 2, 4] {
        for (op, (j, b)) in offline(disks, rounds) {
            println!(
                "{op:<18} {disks:>5} {:>14.2} {:>9.2} {:>7.3}   <= 1.05",
                ms(median(&j)),
                ms(median(&b)),
                median(&j).as_secs_f64() / median(&b).as_secs_f64()
            );
        }
        for (op, (j, b)) in live(disks, rounds) {
            println!(
                "{op:<18} {disks:>5} {:>14.2} {:>9.2} {:>7.3}   <= 1.10",
                ms(median(&j)),
                ms(median(&b)),
                median(&j).as_secs_f64() / median(&b).as_secs_f64()
            );
        }
    }
    let cli = cli_create(rounds);
    println!(
        "CLI `snapshot create` of a running 2-disk domain, process start to exit: median {:.1} ms (virsh: 160 ms; target <= 32 ms)",
        ms(median(&cli))
    );
    let n = if quick { 20 } else { 1000 };
    let (scan, rec, txns) = recovery_scale(n);
    println!(
        "recovery of {txns} open transactions on {n} domains: journal open and scan {:.1} ms, probes and actions {:.1} ms",
        ms(scan),
        ms(rec)
    );
    let big = if quick { 30 } else { 1000 };
    let (c1, d1) = scale(1, rounds);
    let (cn, dn) = scale(big, rounds);
    println!(
        "create / delete with 1 snapshot: {:.2} / {:.2} ms; with {big}: {:.2} / {:.2} ms",
        ms(c1),
        ms(d1),
        ms(cn),
        ms(dn)
    );
}
