//! The server's benchmarks (docs/BENCHMARKS.md records the figures and this
//! command): `cargo bench --workspace --bench serve [-- --quick]`.
//!
//! - `snapjournal snapshot create` of a running, paused 2-disk domain,
//!   process start to exit, in one run: the CLI opening the state directory
//!   itself, the CLI through a running server, and (when a libvirtd answers
//!   on qemu:///system) `virsh snapshot-create-as --disk-only` on a libvirt
//!   domain of the same shape, rounds interleaved.
//! - 64 clients on 64 domains, each taking 20 offline snapshots through
//!   the server, against one client taking the same 1,280 in a row:
//!   throughput and p99 latency.
//! - Load: 10,000 requests from 32 clients in a random mix (reads,
//!   creates, deletes, busy refusals, malformed requests): unexpected
//!   errors, lost replies, and the server's RSS after the first and the
//!   last thousand.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use snapjournal::api::{ErrorKind, Request, PROTOCOL_VERSION};
use snapjournal::client::Client;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).status().unwrap();
    assert!(st.success(), "qemu-img {args:?}");
}

/// A state directory with `domains` domains of `disks` disks each.
fn world(root: &Path, domains: usize, disks: usize) -> PathBuf {
    let state = root.join("state");
    let bin = chaos::fixture::snapjournal_bin().unwrap();
    for d in 0..domains {
        let name = format!("d{d}");
        let mut pairs = Vec::new();
        for k in 0..disks {
            let target = format!("vd{}", (b'a' + k as u8) as char);
            let p = root.join(format!("{name}-{target}.qcow2")).display().to_string();
            qemu_img(&["create", "-q", "-f", "qcow2", &p, "64M"]);
            pairs.push((target, p));
        }
        let xml = root.join(format!("{name}.xml"));
        std::fs::write(&xml, chaos::fixture::domain_xml(&name, &pairs)).unwrap();
        let st = Command::new(&bin)
            .arg("--state-dir")
            .arg(&state)
            .args(["domain", "define"])
            .arg(&xml)
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    }
    state
}

fn cli(state: &Path, args: &[&str]) -> Duration {
    let bin = chaos::fixture::snapjournal_bin().unwrap();
    let t = Instant::now();
    let o = Command::new(bin)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    let d = t.elapsed();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    d
}

fn serve(state: &Path) -> Child {
    let bin = chaos::fixture::snapjournal_bin().unwrap();
    let child = Command::new(bin)
        .arg("--state-dir")
        .arg(state)
        .arg("serve")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = state.join("snapjournal.sock");
    while UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

fn req(cmd: Value) -> Request {
    Request {
        v: PROTOCOL_VERSION,
        cmd: serde_json::from_value(cmd).unwrap(),
        json: true,
        inputs: Default::default(),
        detach: false,
    }
}

/// A libvirt domain like ours (2 qcow2 disks, paused), if a libvirtd runs.
fn virsh_domain(root: &Path, tag: &str) -> Option<String> {
    let up = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .ok()?;
    if !up.status.success() {
        return None;
    }
    let name = format!("sjbench{}{tag}", std::process::id());
    let mut disks = String::new();
    for t in ["vda", "vdb"] {
        let p = root.join(format!("lv{tag}-{t}.qcow2")).display().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &p, "64M"]);
        disks.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{p}'/><target dev='{t}' bus='virtio'/></disk>"
        ));
    }
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{disks}</devices></domain>"
    );
    let path = root.join(format!("lv{tag}.xml"));
    std::fs::write(&path, xml).unwrap();
    let ok = |args: &[&str]| {
        Command::new("virsh")
            .args(["-c", "qemu:///system"])
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !ok(&["define", &path.display().to_string()]) || !ok(&["start", "--paused", &name]) {
        let _ = ok(&["undefine", &name]);
        return None;
    }
    Some(name)
}

fn virsh_done(name: &str) {
    for args in [
        vec!["destroy", name],
        vec!["undefine", name, "--snapshots-metadata"],
    ] {
        let _ = Command::new("virsh")
            .args(["-c", "qemu:///system"])
            .args(&args)
            .output();
    }
}

/// Process start to exit: the CLI direct, through a server, and virsh;
/// and the same create from a client library (no process start).
fn cli_side_by_side(rounds: usize) {
    // libvirt's QEMU runs as libvirt-qemu: the images live where it can
    // reach them.
    let root = tempfile::Builder::new()
        .prefix("sj-serve-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // One domain per block, so each block starts on the same chain depth
    // (a running domain's create costs a little more per layer).
    let state = world(root.path(), 3, 2);
    for d in ["d0", "d1", "d2"] {
        cli(&state, &["domain", "start", d, "--paused"]);
    }
    let virsh = virsh_domain(root.path(), "");
    // The same shape again, adopted: snapjournal operating a domain
    // libvirt runs, through libvirt's API.
    // Two, so each block starts at the same chain depth (libvirt's work
    // per snapshot grows with the chain it relabels).
    let adopted = virsh_domain(root.path(), "a");
    let adopted_b = virsh_domain(root.path(), "b");
    for a in adopted.iter().chain(adopted_b.iter()) {
        cli(&state, &["domain", "adopt", a, "--libvirt"]);
    }
    let (mut direct, mut served, mut library, mut lv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut lv_direct, mut lv_served) = (Vec::new(), Vec::new());
    if let Some(a) = &adopted {
        for r in 0..rounds {
            lv_direct.push(cli(&state, &["snapshot", "create", a, &format!("la{r}")]));
        }
    }
    // Blocks of `rounds`, the server started once (a warm-up request
    // first, not counted), on the same domain, in one run.
    for r in 0..rounds {
        direct.push(cli(&state, &["snapshot", "create", "d0", &format!("a{r}")]));
    }
    let server = serve(&state);
    cli(&state, &["snapshot", "list", "d0"]);
    for r in 0..rounds {
        served.push(cli(&state, &["snapshot", "create", "d1", &format!("b{r}")]));
    }
    if let Some(a) = &adopted_b {
        for r in 0..rounds {
            lv_served.push(cli(&state, &["snapshot", "create", a, &format!("lb{r}")]));
        }
    }
    let mut client = Client::connect(&state.join("snapjournal.sock")).unwrap();
    for r in 0..rounds {
        let t = Instant::now();
        let d = client
            .call(
                &req(json!({"snapshot": {"create": {"domain": "d0", "name": format!("c{r}")}}})),
                |_| {},
            )
            .unwrap();
        library.push(t.elapsed());
        assert_eq!(d.code, 0, "{:?}", d.error);
    }
    drop(client);
    stop(server);
    if let Some(name) = &virsh {
        for r in 0..rounds {
            let t = Instant::now();
            let o = Command::new("virsh")
                .args([
                    "-c",
                    "qemu:///system",
                    "snapshot-create-as",
                    name,
                    &format!("v{r}"),
                    "--disk-only",
                    "--atomic",
                ])
                .output()
                .unwrap();
            lv.push(t.elapsed());
            assert!(
                o.status.success(),
                "virsh: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    for d in ["d0", "d1", "d2"] {
        cli(&state, &["domain", "stop", d]);
    }
    for name in virsh.iter().chain(adopted.iter()).chain(adopted_b.iter()) {
        virsh_done(name);
    }
    let med = |v: &mut Vec<Duration>| percentile(v, 0.5);
    let (d, s, l) = (med(&mut direct), med(&mut served), med(&mut library));
    print!(
        "snapshot create, running 2-disk domain, {rounds} rounds each, median: CLI direct {:.1} ms, CLI through the server {:.1} ms ({:.2}x faster), a client library through the server {:.1} ms",
        ms(d),
        ms(s),
        d.as_secs_f64() / s.as_secs_f64(),
        ms(l)
    );
    if virsh.is_some() {
        let v = med(&mut lv);
        println!(
            ", virsh snapshot-create-as --disk-only {:.1} ms (CLI through the server {:.2}x virsh's speed)",
            ms(v),
            v.as_secs_f64() / s.as_secs_f64()
        );
    } else {
        println!("; virsh not measured (no libvirtd on qemu:///system)");
    }
    if adopted.is_some() && virsh.is_some() {
        let v = med(&mut lv);
        let (a, b) = (med(&mut lv_direct), med(&mut lv_served));
        println!(
            "snapshot create of a libvirt domain (same shape), through libvirt's API, median: snapjournal CLI direct {:.1} ms ({:.2}x virsh's speed), through the server {:.1} ms ({:.2}x), virsh snapshot-create-as --disk-only --atomic {:.1} ms",
            ms(a),
            v.as_secs_f64() / a.as_secs_f64(),
            ms(b),
            v.as_secs_f64() / b.as_secs_f64(),
            ms(v)
        );
    }
}

/// `clients` clients on as many domains, `each` creates per client.
fn throughput(clients: usize, each: usize) -> (Duration, Vec<Duration>) {
    let root = tempfile::Builder::new().prefix("sj-serve-").tempdir().unwrap();
    let state = world(root.path(), clients, 1);
    let server = serve(&state);
    let socket = state.join("snapjournal.sock");
    let lat = Arc::new(Mutex::new(Vec::new()));
    let t = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.clone();
            let lat = lat.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket).unwrap();
                for i in 0..each {
                    let t = Instant::now();
                    let d = client
                        .call(&req(json!({"snapshot": {"create": {"domain": format!("d{c}"), "name": format!("s{i}")}}})), |_| {})
                        .unwrap();
                    assert_eq!(d.code, 0, "{:?}", d.error);
                    lat.lock().unwrap().push(t.elapsed());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = t.elapsed();
    stop(server);
    let lat = lat.lock().unwrap().clone();
    (total, lat)
}

/// One client doing the same work in a row: `each` creates on each of
/// `domains` domains.
fn one_client(domains: usize, each: usize) -> Duration {
    let root = tempfile::Builder::new().prefix("sj-serve-").tempdir().unwrap();
    let state = world(root.path(), domains, 1);
    let server = serve(&state);
    let mut client = Client::connect(&state.join("snapjournal.sock")).unwrap();
    let t = Instant::now();
    for i in 0..each {
        for d in 0..domains {
            let r = client
                .call(
                    &req(
                        json!({"snapshot": {"create": {"domain": format!("d{d}"), "name": format!("s{i}")}}}),
                    ),
                    |_| {},
                )
                .unwrap();
            assert_eq!(r.code, 0);
        }
    }
    let total = t.elapsed();
    stop(server);
    total
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `total` requests from `clients` clients in a random mix; with
/// `changes` false, only reads, refused reverts and malformed requests
/// (nothing is written: the server's memory must stay flat).
fn load(clients: usize, total: usize, changes: bool) {
    let root = tempfile::Builder::new().prefix("sj-serve-").tempdir().unwrap();
    let domains = 8;
    let state = world(root.path(), domains, 1);
    let server = serve(&state);
    let pid = server.id();
    let socket = state.join("snapjournal.sock");
    let next = Arc::new(AtomicUsize::new(0));
    let unexpected = Arc::new(Mutex::new(Vec::<String>::new()));
    let counts = Arc::new(Mutex::new(
        std::collections::BTreeMap::<&'static str, usize>::new(),
    ));
    let rss = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (socket, next, unexpected, counts, rss) = (
                socket.clone(),
                next.clone(),
                unexpected.clone(),
                counts.clone(),
                rss.clone(),
            );
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket).unwrap();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
                let mut rand = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut made = 0;
                // This client's snapshots still defined: (domain, name).
                let mut mine: Vec<(String, String)> = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        break;
                    }
                    if (n + 1) % 1000 == 0 {
                        rss.lock().unwrap().push((n + 1, rss_kib(pid)));
                    }
                    let dom = format!("d{}", rand() % domains as u64);
                    let kind: &'static str = match rand() % 10 {
                        4..=7 if !changes => "read",
                        0..=3 => "read",
                        4..=5 => "create",
                        6..=7 => "delete",
                        8 => "missing",
                        _ => "malformed",
                    };
                    *counts.lock().unwrap().entry(kind).or_default() += 1;
                    if kind == "malformed" {
                        // A raw connection: half a document, then garbage.
                        let mut s = UnixStream::connect(&socket).unwrap();
                        let _ = s.write_all(b"{\"v\":1,\"cmd\":{\"snapshot\"\n");
                        let mut line = String::new();
                        let _ = BufReader::new(&s).read_line(&mut line);
                        if !line.contains("bad-request") {
                            unexpected.lock().unwrap().push(format!("malformed got {line}"));
                        }
                        continue;
                    }
                    // Deletes take the oldest snapshot this client made
                    // (the state stays bounded: what grows is a leak).
                    let (kind, target) = match kind {
                        "delete" if mine.is_empty() => ("read", None),
                        "delete" => ("delete", Some(mine.remove(0))),
                        k => (k, None),
                    };
                    let cmd = match (kind, &target) {
                        ("read", _) => json!({"snapshot": {"list": {"domain": dom}}}),
                        ("create", _) => {
                            made += 1;
                            json!({"snapshot": {"create": {"domain": dom, "name": format!("c{c}-{made}")}}})
                        }
                        ("delete", Some((d, n))) => json!({"snapshot": {"delete": {"domain": d, "name": n}}}),
                        _ => json!({"snapshot": {"revert": {"domain": dom, "name": "never-made"}}}),
                    };
                    match client.call(&req(cmd), |_| {}) {
                        Err(e) => unexpected.lock().unwrap().push(format!("lost reply: {e}")),
                        Ok(d) => match (kind, &d.error) {
                            ("create", None) => mine.push((dom.clone(), format!("c{c}-{made}"))),
                            (_, None) => {}
                            // Another request holds the domain: refused,
                            // nothing changed; a delete is tried again later.
                            (_, Some(e)) if e.kind == ErrorKind::Busy => {
                                *counts.lock().unwrap().entry("(busy refusals)").or_default() += 1;
                                if let (true, Some(t)) = (kind == "delete", target) {
                                    mine.push(t);
                                }
                            }
                            ("missing", Some(e)) if e.kind == ErrorKind::Invalid => {}
                            (_, Some(e)) => unexpected.lock().unwrap().push(format!("{kind}: {:?}", e)),
                        },
                    }
                }
            })
        })
        .collect();
    let t = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    let took = t.elapsed();
    stop(server);
    let rss = rss.lock().unwrap().clone();
    let unexpected = unexpected.lock().unwrap().clone();
    println!(
        "load{}: {total} requests from {clients} clients in {:.1} s ({:?}); unexpected errors or lost replies: {}; server RSS after each thousand (KiB): {:?}",
        if changes { "" } else { " (no changes)" },
        took.as_secs_f64(),
        counts.lock().unwrap(),
        unexpected.len(),
        rss
    );
    for u in unexpected.iter().take(5) {
        println!("  unexpected: {u}");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 30 };
    cli_side_by_side(rounds);
    let (clients, each) = if quick { (8, 3) } else { (64, 20) };
    let one = one_client(clients, each);
    let (many, mut lat) = throughput(clients, each);
    let n = clients * each;
    println!(
        "{clients} clients x {each} creates on {clients} domains: {:.1} creates/s (one client doing the same {n} in a row: {:.1}/s; {:.2}x); latency p50 {:.1} ms, p99 {:.1} ms",
        n as f64 / many.as_secs_f64(),
        n as f64 / one.as_secs_f64(),
        one.as_secs_f64() / many.as_secs_f64(),
        ms(percentile(&mut lat, 0.5)),
        ms(percentile(&mut lat, 0.99))
    );
    let (lc, lt) = if quick { (4, 200) } else { (32, 10_000) };
    load(lc, lt, true);
    load(lc, lt, false);
}
