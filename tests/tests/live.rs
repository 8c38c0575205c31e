//! Live operations on a real QEMU (q35, TCG, virtio-blk on -blockdev
//! chains): guest writes through QEMU's devices before and after every
//! operation and every crash, read back through the chains once QEMU is
//! stopped.

use snapjournal_tests::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn chain(f: &Fixture, disk: &str) -> Vec<String> {
    f.state().unwrap().domains["vm"].core.disks[disk]
        .chain
        .iter()
        .map(|c| c.path.clone())
        .collect()
}

fn img(f: &Fixture, name: &str) -> String {
    f.img.join(name).display().to_string()
}

/// The journal's chains equal QEMU's, and fsck finds nothing.
fn assert_consistent(f: &Fixture) {
    let qemu = f.qemu_chains().unwrap();
    for (disk, q) in &qemu {
        assert_eq!(
            &chain(f, disk),
            q,
            "disk {disk}: QEMU's chain differs from the journal's"
        );
    }
    f.ok(&["fsck"]).unwrap();
}

/// Stops QEMU and checks every disk's active image reads `want`.
fn stop_and_assert(f: &Fixture, want: &[(u64, u8)]) {
    if f.state().unwrap().domains["vm"].core.runtime.is_some() {
        f.ok(&["domain", "stop", "vm"]).unwrap();
    }
    assert!(f.qemu_pid().is_none(), "QEMU still runs after stop");
    for d in &f.disks {
        assert_view(&chain(f, d)[0], want);
    }
}

fn with_crash(f: &Fixture, name: &str, args: &[&str]) {
    let out = f
        .command(args)
        .env("SNAPJOURNAL_CRASH_NAME", name)
        .env("SNAPJOURNAL_CRASH_AT", "1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{args:?} should have been killed at {name}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        f.state().unwrap().domains["vm"].core.runtime.is_some() || name.is_empty(),
        "the domain should still be recorded running"
    );
}

#[test]
fn start_stop_and_two_disk_create_switches_both_disks() {
    let f = Fixture::new(2).unwrap();
    f.start().unwrap();
    let list = json(&f.ok(&["--json", "domain", "list"]).unwrap());
    assert_eq!(list[0]["running"], true);
    f.guest_write(A, 0).unwrap();
    let r = json(&f.ok(&["--json", "snapshot", "create", "vm", "s1"]).unwrap());
    assert_eq!(r["overlays"].as_array().unwrap().len(), 2);
    assert_eq!(chain(&f, "vda"), vec![img(&f, "vda.s1"), img(&f, "vda.qcow2")]);
    assert_eq!(chain(&f, "vdb"), vec![img(&f, "vdb.s1"), img(&f, "vdb.qcow2")]);
    assert_consistent(&f);
    let snap = f.ok(&["snapshot", "dumpxml", "vm", "s1"]).unwrap();
    assert!(snap.contains("<state>disk-snapshot</state>"), "{snap}");
    // The guest now writes into the overlays, never into the bases.
    f.guest_write(B, 1).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B)]);
    assert_view(&f.base("vda"), &[(0, A)]);
    // A stopped domain starts again on its new chain.
    f.start().unwrap();
    assert_consistent(&f);
    f.guest_write(C, 2).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B), (2, C)]);
}

#[test]
fn live_delete_active_commit_and_intermediate_stream() {
    let f = Fixture::new(2).unwrap();
    f.start().unwrap();
    f.guest_write(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.guest_write(B, 1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    f.guest_write(C, 2).unwrap();
    // s2's overlay is the active layer: an active block-commit into vda.s1.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s2"]).unwrap());
    let merges = r["merges"].to_string();
    assert!(merges.contains("commit"), "{merges}");
    assert_eq!(chain(&f, "vda"), vec![img(&f, "vda.s1"), img(&f, "vda.qcow2")]);
    assert!(!f.img.join("vda.s2").exists(), "the committed overlay is removed");
    assert_consistent(&f);
    assert!(!f.vcpus_running().unwrap(), "a paused domain stays paused");
    f.guest_write(D, 3).unwrap();
    // Now s1 over the user's base: its data is pulled into vda.s1 with
    // block-stream (the base is not ours to write).
    f.ok(&["snapshot", "create", "vm", "s3"]).unwrap();
    f.guest_write(C, 4).unwrap();
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s1"]).unwrap());
    assert!(r["merges"].to_string().contains("pull"), "{}", r["merges"]);
    assert_eq!(chain(&f, "vda"), vec![img(&f, "vda.s3"), img(&f, "vda.s1")]);
    assert_consistent(&f);
    f.guest_write(A, 5).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B), (2, C), (3, D), (4, C), (5, A)]);
    assert_view(&f.base("vda"), &[(0, A)]);
}

/// Snapshots taken while the domain was shut off, then started: QEMU
/// opens the images below the active one read-only, and an active commit
/// (and a commit below the active image) must still be able to write into
/// its base (QEMU reopens the base read-write; its file node must not be
/// pinned read-only). Before the fix QEMU refused ("Block node is
/// read-only") after the commit point, and the transaction stayed open
/// with the domain busy.
#[test]
fn a_domain_started_on_its_snapshots_chain_deletes_them_live() {
    let f = Fixture::new(2).unwrap();
    for d in &f.disks {
        write_pattern(&f.base(d), A, 0).unwrap();
    }
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    for d in &f.disks {
        write_pattern(&chain(&f, d)[0], B, 1).unwrap();
    }
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    f.ok(&["snapshot", "create", "vm", "s3"]).unwrap();
    f.start().unwrap();
    f.guest_write(C, 2).unwrap();
    // The newest: an active commit into the read-only image below.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "vm", "s3"]).unwrap());
    assert!(r["merges"].to_string().contains("commit"), "{}", r["merges"]);
    assert_consistent(&f);
    // A middle one: a commit below the active image.
    f.ok(&["snapshot", "delete", "vm", "s2"]).unwrap();
    assert_consistent(&f);
    f.guest_write(D, 3).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B), (2, C), (3, D)]);
}

#[test]
fn live_revert_stops_reverts_and_restarts_as_it_was() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["domain", "start", "vm"]).unwrap();
    assert!(f.vcpus_running().unwrap());
    f.guest_write(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.guest_write(B, 1).unwrap();
    let r = json(&f.ok(&["--json", "snapshot", "revert", "vm", "s1"]).unwrap());
    assert_eq!(r["restarted_running"], true);
    assert!(f.vcpus_running().unwrap(), "the domain runs again");
    assert_consistent(&f);
    let active = chain(&f, "vda");
    assert_eq!(
        active[1],
        img(&f, "vda.qcow2"),
        "the new overlay stands on s1's image"
    );
    f.guest_write(C, 2).unwrap();
    stop_and_assert(&f, &[(0, A), (2, C)]);
}

/// Kills `snapshot revert` at the `n`-th crash point called `name`, then
/// recovers.
fn revert_killed_at(f: &Fixture, name: &str, n: &str) -> String {
    let out = f
        .command(&["snapshot", "revert", "vm", "s1"])
        .env("SNAPJOURNAL_CRASH_NAME", name)
        .env("SNAPJOURNAL_CRASH_AT", n)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the revert should have been killed");
    assert!(
        f.qemu_pid().is_none(),
        "the revert had stopped QEMU: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    f.ok(&["recover"]).unwrap()
}

#[test]
fn a_live_revert_killed_between_its_transactions_is_started_again_as_it_ran() {
    // Running, killed after the revert committed: forward, running again.
    let f = Fixture::new(1).unwrap();
    f.ok(&["domain", "start", "vm"]).unwrap();
    f.guest_write(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.guest_write(B, 1).unwrap();
    // The second commit point: the revert's (the first is the stop's).
    let said = revert_killed_at(&f, "commit.after", "2");
    assert!(said.contains("started it again running"), "{said}");
    assert!(f.vcpus_running().unwrap(), "the domain runs again");
    assert_eq!(
        chain(&f, "vda")[1],
        img(&f, "vda.qcow2"),
        "reverted onto s1's image"
    );
    assert_consistent(&f);
    stop_and_assert(&f, &[(0, A)]);

    // Paused, killed once QEMU was stopped (before the stop transaction
    // closed): not reverted, paused again.
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    let before = chain(&f, "vda");
    let said = revert_killed_at(&f, "finish.before", "1");
    assert!(said.contains("started it again paused"), "{said}");
    assert!(!f.vcpus_running().unwrap(), "paused, as it was");
    assert_eq!(chain(&f, "vda"), before, "the revert had not begun");
    // Said once: the next recovery has nothing to do.
    assert!(!f.ok(&["recover"]).unwrap().contains("started it again"));
    assert_consistent(&f);
}

#[test]
fn killed_after_the_switch_goes_forward() {
    let f = Fixture::new(2).unwrap();
    f.start().unwrap();
    f.guest_write(A, 0).unwrap();
    with_crash(&f, "live.switch.after", &["snapshot", "create", "vm", "s1"]);
    // QEMU already writes to the overlays: the guest keeps writing there.
    f.guest_write(B, 1).unwrap();
    let out = f.ok(&["recover"]).unwrap();
    assert!(out.contains("roll FORWARD"), "{out}");
    assert!(f.state().unwrap().domains["vm"].snapshots.contains_key("s1"));
    assert_consistent(&f);
    stop_and_assert(&f, &[(0, A), (1, B)]);
}

#[test]
fn killed_before_the_switch_goes_back_and_leaves_nothing() {
    let f = Fixture::new(2).unwrap();
    f.start().unwrap();
    f.guest_write(A, 0).unwrap();
    with_crash(&f, "live.switch.before", &["snapshot", "create", "vm", "s1"]);
    let out = f.ok(&["recover"]).unwrap();
    assert!(out.contains("roll BACK"), "{out}");
    assert!(f.state().unwrap().domains["vm"].snapshots.is_empty());
    assert!(!f.img.join("vda.s1").exists() && !f.img.join("vdb.s1").exists());
    let g = f.graph().unwrap();
    assert!(
        !g.nodes.values().any(|(_, file)| file.ends_with(".s1")),
        "the overlays' nodes are removed from QEMU: {:?}",
        g.nodes
    );
    assert_consistent(&f);
    f.guest_write(B, 1).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B)]);
}

#[test]
fn qemu_killed_after_the_switch_goes_forward_and_the_domain_is_stopped() {
    let f = Fixture::new(2).unwrap();
    f.start().unwrap();
    f.guest_write(A, 0).unwrap();
    with_crash(&f, "live.switch.after", &["snapshot", "create", "vm", "s1"]);
    f.guest_write(B, 1).unwrap();
    f.kill_qemu();
    let out = f.ok(&["recover"]).unwrap();
    assert!(out.contains("roll FORWARD"), "{out}");
    assert!(out.contains("QEMU is gone"), "{out}");
    let st = f.state().unwrap();
    assert!(st.domains["vm"].core.runtime.is_none());
    assert!(st.domains["vm"].snapshots.contains_key("s1"));
    f.ok(&["fsck"]).unwrap();
    // B went to the overlays after the switch: it must be there.
    stop_and_assert(&f, &[(0, A), (1, B)]);
}

fn two_snapshots(f: &Fixture) {
    f.guest_write(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    f.guest_write(B, 1).unwrap();
    f.ok(&["snapshot", "create", "vm", "s2"]).unwrap();
    f.guest_write(C, 2).unwrap();
}

#[test]
fn killed_while_the_commit_job_waits_in_ready_recovery_completes_it() {
    let f = Fixture::new(2).unwrap();
    f.ok(&["domain", "start", "vm"]).unwrap();
    two_snapshots(&f);
    with_crash(&f, "live.job.ready", &["snapshot", "delete", "vm", "s2"]);
    let jobs = f.qmp().unwrap().jobs().unwrap();
    assert!(
        jobs.iter().any(|j| j.status == "ready"),
        "the job outlives the agent: {jobs:?}"
    );
    let out = f.ok(&["recover"]).unwrap();
    assert!(out.contains("roll FORWARD"), "{out}");
    assert!(
        f.qmp().unwrap().jobs().unwrap().is_empty(),
        "the job is dismissed"
    );
    assert!(!f.state().unwrap().domains["vm"].snapshots.contains_key("s2"));
    assert!(!f.img.join("vda.s2").exists());
    assert!(f.vcpus_running().unwrap(), "the vCPUs run again");
    assert_consistent(&f);
    f.guest_write(D, 3).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B), (2, C), (3, D)]);
}

#[test]
fn killed_after_job_complete_with_the_guest_paused_recovery_resumes_it() {
    let f = Fixture::new(1).unwrap();
    f.ok(&["domain", "start", "vm"]).unwrap();
    two_snapshots(&f);
    with_crash(&f, "live.job.completing", &["snapshot", "delete", "vm", "s2"]);
    f.ok(&["recover"]).unwrap();
    assert!(f.vcpus_running().unwrap());
    assert_consistent(&f);
    f.guest_write(D, 3).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B), (2, C), (3, D)]);
}

#[test]
fn qemu_killed_during_the_commit_job_recovery_finishes_it_offline() {
    let f = Fixture::new(2).unwrap();
    f.start().unwrap();
    two_snapshots(&f);
    with_crash(&f, "live.job.started", &["snapshot", "delete", "vm", "s2"]);
    f.kill_qemu();
    let out = f.ok(&["recover"]).unwrap();
    assert!(out.contains("roll FORWARD"), "{out}");
    let st = f.state().unwrap();
    assert!(st.domains["vm"].core.runtime.is_none());
    assert!(!st.domains["vm"].snapshots.contains_key("s2"));
    assert!(!f.img.join("vda.s2").exists());
    f.ok(&["fsck"]).unwrap();
    stop_and_assert(&f, &[(0, A), (1, B), (2, C)]);
}

#[test]
fn attach_to_a_qemu_started_elsewhere_and_refuse_a_mismatch() {
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    let socket = f.qmp_socket();
    let pid = f.qemu_pid().unwrap().to_string();
    f.ok(&["domain", "detach", "vm"]).unwrap();
    // Same QEMU, now as someone else's: attach checks the chains.
    f.ok(&["domain", "attach", "vm", "--qmp", &socket, "--pid", &pid])
        .unwrap();
    f.guest_write(A, 0).unwrap();
    f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert_consistent(&f);
    f.ok(&["domain", "detach", "vm"]).unwrap();
    // The journal now says vda.s1 is active; QEMU agrees. Make them differ.
    f.ok(&["domain", "attach", "vm", "--qmp", &socket]).unwrap();
    f.ok(&["domain", "stop", "vm"]).unwrap();
    let err = f.fails(&["domain", "attach", "vm", "--qmp", &socket]).unwrap();
    assert!(err.contains("no QEMU answers"), "{err}");
}

#[test]
fn operations_refuse_a_running_domain_whose_qemu_is_gone() {
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    f.kill_qemu();
    // The CLI recovers first; recovery records the domain stopped, and the
    // offline create then proceeds.
    let out = f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert!(out.contains("created"), "{out}");
    assert!(f.state().unwrap().domains["vm"].core.runtime.is_none());
}

#[test]
fn library_api_live_create_delete_with_progress() {
    use std::sync::{Arc, Mutex};
    let f = Fixture::new(2).unwrap();
    let (mut exec, _) = recovery::open(&f.state).unwrap();
    let seen: Arc<Mutex<Vec<executor::live::JobProgress>>> = Arc::default();
    let sink = seen.clone();
    exec.set_progress(Box::new(move |p| sink.lock().unwrap().push(p.clone())));
    let rt = exec.domain_start("vm", true).unwrap();
    let write = |pattern: u8, region: u64| {
        exec.live()
            .with_qemu(&rt, |q| {
                for d in ["vda", "vdb"] {
                    q.guest_write(d, pattern, region * 65536, 65536)?;
                }
                Ok(())
            })
            .unwrap()
            .expect("QEMU runs");
    };
    write(A, 0);
    for s in ["s1", "s2"] {
        exec.snapshot_create(&executor::CreateRequest {
            domain: "vm".into(),
            name: s.into(),
            ..Default::default()
        })
        .unwrap();
        write(B, 1);
    }
    let r = exec
        .snapshot_delete(&executor::DeleteRequest {
            domain: "vm".into(),
            snapshot: "s2".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.merges.len(), 2);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|p| p.kind == "commit" && p.job.starts_with("sj-")),
        "block jobs report progress: {seen:?}"
    );
    exec.domain_stop("vm").unwrap();
    drop(exec);
    for d in &f.disks {
        assert_view(&chain(&f, d)[0], &[(0, A), (1, B)]);
    }
}

#[test]
fn json_delete_reports_progress_events_on_stderr() {
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    two_snapshots(&f);
    let out = f.run(&["--json", "snapshot", "delete", "vm", "s2"]).unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["event"] == "progress")
        .collect();
    assert!(!events.is_empty(), "no progress events in: {stderr}");
    assert_eq!(events[0]["progress"]["disk"], "vda");
    json(&String::from_utf8_lossy(&out.stdout));
}

#[test]
fn fsck_sees_qemu_disagreeing_with_the_journal() {
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    // Someone else switches QEMU behind the journal's back.
    let overlay = img(&f, "rogue.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &f.base("vda"),
            "-F",
            "qcow2",
            &overlay,
        ],
    )
    .unwrap();
    {
        use executor::live::qmp::Cmd;
        let mut q = f.qmp().unwrap();
        q.execute(
            Cmd::BlockdevAdd,
            serde_json::json!({"driver": "qcow2", "node-name": "rogue",
                "file": {"driver": "file", "filename": overlay}, "backing": null}),
        )
        .unwrap();
        let top = executor::live::graph::format_node(&f.base("vda"));
        q.execute(
            Cmd::Transaction,
            serde_json::json!({"actions": [{"type": "blockdev-snapshot", "data": {"node": top, "overlay": "rogue"}}]}),
        )
        .unwrap();
    }
    let out = f.run(&["fsck"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("QEMU's chain"), "{text}");
    // And operations refuse to plan on it.
    let err = f.fails(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert!(err.contains("differs from the journal's"), "{err}");
}

#[test]
fn start_runs_the_machine_the_definition_describes_and_refuses_what_it_cannot() {
    let f = Fixture::new(1).unwrap();
    let out = json(&f.ok(&["--json", "domain", "start", "vm", "--paused"]).unwrap());
    let accel = out["accel"].as_str().unwrap_or_default().to_string();
    assert!(accel == "kvm" || accel == "tcg", "{out}");
    let pid = f.qemu_pid().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ");
    // The fixture's definition: 128 MiB, one vCPU, q35.
    assert!(
        cmdline.contains("-m 128 -smp 1") && cmdline.contains("-machine q35"),
        "{cmdline}"
    );
    f.ok(&["domain", "stop", "vm"]).unwrap();
    // A definition with devices snapjournal does not start is refused, by
    // name, before anything is written.
    let img9 = f.img.join("vm9.qcow2").display().to_string();
    tool("qemu-img", &["create", "-q", "-f", "qcow2", &img9, "4M"]).unwrap();
    let xml = domain_xml("vm9", &[("vda".into(), img9)]).replace(
        "<devices>",
        "<devices>\n    <interface type='network'><source network='default'/></interface>",
    );
    let p = f.root.path().join("vm9.xml");
    std::fs::write(&p, xml).unwrap();
    f.ok(&["domain", "define", p.to_str().unwrap()]).unwrap();
    let err = f.fails(&["domain", "start", "vm9"]).unwrap();
    assert!(
        err.contains("<interface> type 'network'")
            && err.contains("domain attach")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(f.state().unwrap().domains["vm9"].core.runtime.is_none());
}
