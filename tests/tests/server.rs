//! `snapjournal serve` end to end: the CLI as its client, domains in
//! parallel, busy refusals naming the transaction, hostile requests, a
//! clean stop, a killed server, and the Python client, on real images (and
//! a real QEMU for progress).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chaos::fixture::Fixture;
use serde_json::{json, Value};
use snapjournal::api::{ErrorKind, Frame, Request, PROTOCOL_VERSION};
use snapjournal::client::{CallError, Client};
use snapjournal::commands::Cmd;

/// A running `snapjournal serve`, stopped (SIGTERM) when dropped.
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    fn start(f: &Fixture, env: &[(&str, &str)], extra: &[&str]) -> Served {
        // The server logs to the fixture's server.log (a pipe nobody reads
        // could fill and stall it).
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let child = chaos::served::start_server_with(f, &env, extra).expect("serve starts and listens");
        Served {
            child,
            socket: f.state.join("snapjournal.sock"),
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn request(cmd: Value) -> Request {
    Request {
        v: PROTOCOL_VERSION,
        cmd: serde_json::from_value::<Cmd>(cmd).unwrap(),
        json: true,
        inputs: Default::default(),
        detach: false,
    }
}

fn create(domain: &str, name: &str) -> Request {
    request(json!({"snapshot": {"create": {"domain": domain, "name": name}}}))
}

/// Sends one raw line and returns the frames up to `done` (or the end).
fn raw(socket: &Path, bytes: &[u8]) -> Vec<Value> {
    let mut s = UnixStream::connect(socket).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    BufReader::new(s)
        .lines()
        .map_while(|l| l.ok())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

fn done_error(frames: &[Value]) -> &Value {
    let done = frames.last().expect("a reply");
    assert_eq!(done["event"], "done", "{frames:?}");
    &done["error"]
}

#[test]
fn the_cli_goes_through_the_server_with_the_same_output_and_exit_codes() {
    let f = Fixture::new(2).unwrap();
    let _s = Served::start(&f, &[], &[]);
    // The server holds the state directory: only its client can succeed.
    let out = f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert!(out.starts_with("Domain snapshot s1 created (txn-"), "{out}");
    let list: Value = serde_json::from_str(&f.ok(&["--json", "snapshot", "list", "vm"]).unwrap()).unwrap();
    assert_eq!(list[0]["name"], "s1");
    assert!(f
        .ok(&["snapshot", "dumpxml", "vm", "s1"])
        .unwrap()
        .contains("<domainsnapshot>"));
    let err = f.fails(&["snapshot", "delete", "vm", "nope"]).unwrap();
    assert!(err.starts_with("error: ") && err.contains("nope"), "{err}");
    let json_err = f.run(&["--json", "snapshot", "delete", "vm", "nope"]).unwrap();
    assert_eq!(json_err.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&json_err.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("nope"));
    assert_eq!(
        (v["kind"].as_str(), v["changed"].as_bool(), v["reason"].as_str()),
        (Some("invalid"), Some(false), Some("no-such-snapshot")),
        "{v}"
    );
    // A document is read by the client and sent.
    let doc = f.root.path().join("s2.xml");
    std::fs::write(
        &doc,
        "<domainsnapshot><name>s2</name><description>from a file</description></domainsnapshot>",
    )
    .unwrap();
    f.ok(&["snapshot", "create", "vm", "--xml", "s2.xml"]).unwrap();
    assert!(f
        .ok(&["snapshot", "dumpxml", "vm", "s2"])
        .unwrap()
        .contains("from a file"));
    f.ok(&["snapshot", "delete", "vm", "s1"]).unwrap();
    let fsck = f.run(&["fsck"]).unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // Typed errors for a library client.
    let mut c = _s.client();
    let d = c
        .call(
            &request(json!({"snapshot": {"delete": {"domain": "vm", "name": "nope"}}})),
            |_| {},
        )
        .unwrap();
    let e = d.error.expect("an error");
    assert_eq!(
        (e.kind, e.changed, e.domain.as_deref()),
        (ErrorKind::Invalid, Some(false), Some("vm"))
    );
}

#[test]
fn domains_run_in_parallel_reads_do_not_wait_and_a_busy_domain_names_its_transaction() {
    let f = Fixture::new(1).unwrap();
    f.add_domain("b", 1).unwrap();
    // Every transaction holds for 3 s before its commit point.
    let s = Served::start(&f, &[("SNAPJOURNAL_PAUSE_AT", "commit.before:3000")], &[]);
    let (began_tx, began_rx) = mpsc::channel();
    let run = |domain: &'static str, began: mpsc::Sender<(String, String)>| {
        let mut c = s.client();
        std::thread::spawn(move || {
            let d = c
                .call(&create(domain, "s1"), |fr| {
                    if let Frame::Began { txn, .. } = fr {
                        let _ = began.send((domain.to_string(), txn.clone()));
                    }
                })
                .unwrap();
            (d, Instant::now())
        })
    };
    let a = run("vm", began_tx.clone());
    let (_, vm_txn) = began_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let b = run("b", began_tx);
    // b begins while vm's transaction still runs.
    let (dom, _) = began_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(dom, "b");
    assert!(
        !a.is_finished(),
        "vm's create ended before b's began: no parallelism"
    );
    // A second change to vm is refused, naming the running transaction.
    let busy = s.client().call(&create("vm", "s2"), |_| {}).unwrap();
    let e = busy.error.expect("busy");
    assert_eq!(e.kind, ErrorKind::Busy, "{e:?}");
    assert_eq!(e.txn.as_deref(), Some(vm_txn.as_str()));
    assert!(e.message.contains("create snapshot s1"), "{}", e.message);
    assert_eq!(busy.code, 1);
    // Reads do not wait for it.
    let list = s
        .client()
        .call(&request(json!({"snapshot": {"list": {"domain": "vm"}}})), |_| {})
        .unwrap();
    assert_eq!(list.result, Some(json!([])));
    assert!(!a.is_finished(), "the read waited for the create");
    let (da, _) = a.join().unwrap();
    let (db, _) = b.join().unwrap();
    assert_eq!((da.code, db.code), (0, 0), "{:?} {:?}", da.error, db.error);
    // Through the CLI, the refusal is the CLI's error and exit code 1.
    drop(s);
    let s = Served::start(&f, &[("SNAPJOURNAL_PAUSE_AT", "commit.before:3000")], &[]);
    let mut c = s.client();
    let (tx, rx) = mpsc::channel();
    let first = std::thread::spawn(move || {
        c.call(&create("vm", "s3"), |fr| {
            if let Frame::Began { txn, .. } = fr {
                let _ = tx.send(txn.clone());
            }
        })
        .unwrap()
    });
    let txn = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let err = f.fails(&["snapshot", "create", "vm", "s4"]).unwrap();
    assert!(err.contains(&format!("busy with transaction {txn}")), "{err}");
    assert_eq!(first.join().unwrap().code, 0);
}

#[test]
fn hostile_requests_get_clear_errors_and_the_server_keeps_serving() {
    let f = Fixture::new(1).unwrap();
    let s = Served::start(&f, &[], &["--idle-timeout", "1"]);
    let sock = s.socket.clone();
    let kind = |frames: &[Value]| done_error(frames)["kind"].as_str().unwrap().to_string();
    assert_eq!(kind(&raw(&sock, b"this is not json\n")), "bad-request");
    assert_eq!(
        kind(&raw(&sock, br#"{"v":1,"cmd":{"snapshot":{"explode":{}}}}"#.as_slice().iter().chain(b"\n").copied().collect::<Vec<_>>().as_slice())),
        "bad-request"
    );
    assert_eq!(
        kind(&raw(&sock, b"{\"v\":99,\"cmd\":{\"domain\":\"list\"}}\n")),
        "bad-request"
    );
    // Half a JSON document, then the client goes away.
    assert_eq!(kind(&raw(&sock, b"{\"v\":1,\"cmd\":{\"snap")), "bad-request");
    // A document far over the limit.
    let mut big = b"{\"v\":1,\"cmd\":{\"domain\":\"list\"},\"inputs\":{\"x\":\"".to_vec();
    big.resize(65 * 1024 * 1024, b'a');
    let frames = raw(&sock, &big);
    assert!(done_error(&frames)["message"]
        .as_str()
        .unwrap()
        .contains("longer than"));
    // A client that connects and never writes is closed after the idle
    // timeout with a reason.
    let silent = UnixStream::connect(&sock).unwrap();
    let lines: Vec<String> = BufReader::new(silent).lines().map_while(|l| l.ok()).collect();
    assert!(
        lines.len() == 1 && lines[0].contains("no complete request"),
        "{lines:?}"
    );
    // Path traversal in a name changes nothing.
    let e = f
        .fails(&["snapshot", "create", "vm", "../../etc/passwd"])
        .unwrap();
    assert!(e.contains("nothing was changed"), "{e}");
    // A document the request names but did not send.
    let mut c = s.client();
    let d = c
        .call(
            &request(json!({"domain": {"define": {"file": "/etc/shadow"}}})),
            |_| {},
        )
        .unwrap();
    let e = d.error.unwrap();
    assert!(e.message.contains("was not sent"), "{}", e.message);
    // And everyone else is still served.
    f.ok(&["snapshot", "create", "vm", "ok"]).unwrap();
    assert!(f.ok(&["snapshot", "list", "vm"]).unwrap().contains("ok"));
}

#[test]
fn sigterm_lets_the_running_transaction_finish_and_removes_the_socket() {
    let f = Fixture::new(1).unwrap();
    let mut s = Served::start(&f, &[("SNAPJOURNAL_PAUSE_AT", "commit.before:2000")], &[]);
    let mut c = s.client();
    let (tx, rx) = mpsc::channel();
    let op = std::thread::spawn(move || {
        c.call(&create("vm", "s1"), |fr| {
            if matches!(fr, Frame::Began { .. }) {
                let _ = tx.send(());
            }
        })
        .unwrap()
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let status = s.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(op.join().unwrap().code, 0, "the running create finished");
    assert!(!s.socket.exists(), "the socket is removed");
    // Without a server the CLI opens the directory itself again.
    assert!(f.ok(&["snapshot", "list", "vm"]).unwrap().contains("s1"));
}

#[test]
fn a_killed_server_names_the_transaction_and_recovery_finishes_it() {
    let f = Fixture::new(2).unwrap();
    let s = Served::start(
        &f,
        &[
            ("SNAPJOURNAL_CRASH_NAME", "commit.after"),
            ("SNAPJOURNAL_CRASH_AT", "1"),
        ],
        &[],
    );
    let out = f.run(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the server stopped while running transaction txn-")
            && err.contains("recovery finishes it"),
        "{err}"
    );
    drop(s);
    // The restarted server recovers it (committed: forward).
    let _s = Served::start(&f, &[], &[]);
    assert!(f.ok(&["snapshot", "list", "vm"]).unwrap().contains("s1"));
    let fsck = f.run(&["fsck"]).unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // A Rust client sees the same as a typed error.
    drop(_s);
    let s = Served::start(
        &f,
        &[
            ("SNAPJOURNAL_CRASH_NAME", "step.apply.after"),
            ("SNAPJOURNAL_CRASH_AT", "1"),
        ],
        &[],
    );
    match s.client().call(&create("vm", "s2"), |_| {}) {
        Err(CallError::ServerGone {
            began: Some((txn, what)),
        }) => {
            assert!(txn.starts_with("txn-") && what.contains("s2"), "{txn} {what}")
        }
        other => panic!("expected ServerGone with a transaction: {other:?}"),
    }
    drop(s);
    // Not committed: recovery at the next open rolls it back.
    assert!(!f.ok(&["snapshot", "list", "vm"]).unwrap().contains("s2"));
    assert_eq!(f.run(&["fsck"]).unwrap().status.code(), Some(0));
}

#[test]
fn the_python_client_creates_lists_deletes_with_progress_and_meets_busy() {
    let f = Fixture::new(1).unwrap();
    f.start().unwrap();
    let s = Served::start(&f, &[("SNAPJOURNAL_PAUSE_AT", "commit.before:1500")], &[]);
    let client_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let script = client_dir.join("e2e_test.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&f.state)
        .env("PYTHONPATH", &client_dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
    drop(s);
    f.ok(&["domain", "stop", "vm"]).unwrap();
}

#[test]
fn detach_returns_at_once_and_journal_wait_follows_the_transaction() {
    let f = Fixture::new(1).unwrap();
    let _s = Served::start(&f, &[("SNAPJOURNAL_PAUSE_AT", "commit.before:1500")], &[]);
    let out: Value = serde_json::from_str(
        &f.ok(&["--json", "--detach", "snapshot", "create", "vm", "s1"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(out["detached"], true, "{out}");
    let txn = out["txn"].as_str().unwrap().to_string();
    // Still running: shown open; the domain is busy.
    let shown: Value = serde_json::from_str(&f.ok(&["--json", "journal", "show", &txn]).unwrap()).unwrap();
    assert_eq!(shown["outcome"], "open", "{shown}");
    assert!(f
        .fails(&["snapshot", "create", "vm", "s2"])
        .unwrap()
        .contains("busy"));
    // wait returns once it is closed, with its outcome.
    let waited: Value = serde_json::from_str(&f.ok(&["--json", "journal", "wait", &txn]).unwrap()).unwrap();
    assert_eq!(waited["outcome"], "finished", "{waited}");
    assert!(f.ok(&["snapshot", "list", "vm"]).unwrap().contains("s1"));
    // Without a server, --detach is refused and changes nothing.
    drop(_s);
    let e = f.fails(&["--detach", "snapshot", "create", "vm", "s3"]).unwrap();
    assert!(e.contains("--detach needs a running server"), "{e}");
    assert!(!f.ok(&["snapshot", "list", "vm"]).unwrap().contains("s3"));
    // The same typed error without a server.
    let direct = f.run(&["--json", "snapshot", "delete", "vm", "nope"]).unwrap();
    let v: Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["domain"].as_str(), v["reason"].as_str()),
        (Some("invalid"), Some("vm"), Some("no-such-snapshot")),
        "{v}"
    );
    let e = f.fails(&["journal", "show", "txn-999"]).unwrap();
    assert!(e.contains("no transaction txn-999"), "{e}");
}
