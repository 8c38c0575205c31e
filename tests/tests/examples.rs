//! The examples in cli/examples/, run as an agent author would run them,
//! on real images (built by `cargo build --workspace --examples`, which
//! scripts/test does).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chaos::fixture::{region_holds, write_pattern, Fixture, REGION};

fn example(name: &str) -> PathBuf {
    let bin = chaos::fixture::snapjournal_bin().unwrap();
    let p = bin.parent().unwrap().join("examples").join(name);
    assert!(
        p.is_file(),
        "{} is not built: cargo build --workspace --examples",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_agent_loop_survives_being_killed_and_carries_on() {
    // A running domain: the agent's snapshots switch QEMU onto overlays
    // and its deletes merge with block jobs.
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    let xml = f.root.path().join("vm.xml");
    let agent = |rounds: &str, env: &[(&str, &str)]| {
        let mut c = Command::new(example("agent_loop"));
        c.arg(&f.state).arg(&xml).args([rounds, "2"]);
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c)
    };
    let first = agent("3", &[]);
    assert!(first.status.success(), "{}", text(&first));
    // Killed at its second commit point: in the middle of the run.
    let killed = agent(
        "5",
        &[
            ("SNAPJOURNAL_CRASH_NAME", "commit.after"),
            ("SNAPJOURNAL_CRASH_AT", "2"),
        ],
    );
    assert!(!killed.status.success(), "{}", text(&killed));
    // Started again: it recovers and carries on.
    let again = agent("2", &[]);
    assert!(again.status.success(), "{}", text(&again));
    let out = text(&again);
    assert!(out.contains("recovered txn-"), "{out}");
    let list = f.ok(&["--json", "snapshot", "list", "vm"]).unwrap();
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&list)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("auto-")), "{names:?}");
    assert_eq!(f.run(&["fsck"]).unwrap().status.code(), Some(0));
    f.ok(&["domain", "stop", "vm"]).unwrap();
}

#[test]
fn the_backup_flow_copies_the_frozen_image_and_keeps_the_checkpoint() {
    let f = Fixture::new(1).unwrap();
    write_pattern(&f.base("vda"), 0xab, 0).unwrap();
    // On a running domain: the snapshot is merged by a block job (here a
    // stream of the user's base into the overlay, whose bitmap keeps
    // recording).
    f.start().unwrap();
    let out_dir = f.root.path().join("backups");
    std::fs::create_dir_all(&out_dir).unwrap();
    let o = run(Command::new(example("backup"))
        .arg(&f.state)
        .arg("vm")
        .arg(&out_dir));
    assert!(o.status.success(), "{}", text(&o));
    let copies: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(region_holds(&copies[0].display().to_string(), 0xab, 0).unwrap());
    let sj = snapjournal::Snapjournal::open(&f.state).unwrap();
    assert!(
        sj.snapshots("vm").unwrap().is_empty(),
        "the snapshot was merged away"
    );
    assert!(f.root.path().join("state").exists());
    drop(sj);
    let cps = f.ok(&["checkpoint", "list", "vm"]).unwrap();
    assert!(cps.contains("backup-"), "{cps}");
    assert_eq!(f.run(&["fsck"]).unwrap().status.code(), Some(0));
    // The checkpoint records the guest's next writes: the next backup's
    // increment.
    f.guest_write(0xcd, 1).unwrap();
    let g = f.graph().unwrap();
    let active = &g.devices.iter().find(|d| d.id == "vda").unwrap().chain[0];
    let bitmaps = &g.bitmaps[&active.node];
    assert!(
        bitmaps
            .iter()
            .any(|b| b.name.starts_with("backup-") && b.recording && b.count == REGION),
        "{bitmaps:?}"
    );
    f.ok(&["domain", "stop", "vm"]).unwrap();
    assert_eq!(f.run(&["fsck"]).unwrap().status.code(), Some(0));
}

#[test]
fn the_embedded_server_serves_the_cli_until_sigterm() {
    let f = Fixture::new(1).unwrap();
    let mut child = Command::new(example("embedded_server"))
        .arg(&f.state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = f.state.join("snapjournal.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the embedded server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The agent holds the directory; the CLI goes through its server.
    assert!(f
        .ok(&["snapshot", "create", "vm", "s1"])
        .unwrap()
        .contains("created"));
    assert!(f.ok(&["snapshot", "list", "vm"]).unwrap().contains("s1"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!socket.exists());
}
