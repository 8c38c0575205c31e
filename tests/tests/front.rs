//! The `snapjournal` front: it becomes the engine (same process) when no
//! server holds the state directory, says clearly when the engine cannot
//! be run (and changes nothing), and stays small: it does not link
//! libvirt, whose loading is what made every CLI start slow.

use std::process::Command;

use chaos::fixture::Fixture;

#[test]
fn without_a_server_the_front_becomes_the_engine_in_the_same_process() {
    let f = Fixture::new(1).unwrap();
    // A snapshot through the front, no server running: the engine beside
    // it opened the state directory.
    let out = f.ok(&["snapshot", "create", "vm", "s1"]).unwrap();
    assert!(out.contains("s1"), "{out}");
    let list = f.ok(&["snapshot", "list", "vm", "--json"]).unwrap();
    assert!(list.contains("\"s1\""), "{list}");
    // The same process: the front's pid is the engine's (whoever waits
    // for or signals the CLI reaches the engine). `sh -c 'echo $$; exec …'`
    // prints the pid the front starts with; the engine reports its own in
    // the journal's actor ("pid N") of the transaction it begins.
    let script = format!(
        "echo $$; exec '{}' --state-dir '{}' snapshot create vm s2 --json",
        f.bin.display(),
        f.state.display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text.lines().next().unwrap().trim().to_string();
    let history = f.ok(&["domain", "history", "vm", "--json"]).unwrap();
    let h: serde_json::Value = serde_json::from_str(&history).unwrap();
    let s2 = h
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["what"].as_str().is_some_and(|w| w.contains("snapshot s2")))
        .unwrap_or_else(|| panic!("no transaction for s2 in {history}"));
    assert_eq!(
        s2["actor"].as_str(),
        Some(format!("pid {pid}").as_str()),
        "the transaction of s2 was begun by the front's process {pid}: {s2}"
    );
}

#[test]
fn an_engine_that_cannot_be_run_is_a_clear_error_and_changes_nothing() {
    let f = Fixture::new(1).unwrap();
    let out = f
        .command(&["snapshot", "create", "vm", "s1"])
        .env("SNAPJOURNAL_ENGINE", "/nonexistent/snapjournal-engine")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot run /nonexistent/snapjournal-engine") && err.contains("nothing was changed"),
        "{err}"
    );
    let list = f.ok(&["snapshot", "list", "vm", "--json"]).unwrap();
    assert!(!list.contains("\"s1\""), "{list}");
}

#[test]
fn the_front_does_not_link_libvirt() {
    let f = Fixture::new(1).unwrap();
    let out = Command::new("ldd").arg(&f.bin).output().unwrap();
    assert!(out.status.success());
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(!libs.contains("libvirt"), "the front links libvirt:\n{libs}");
    // The engine does (the libvirt backend lives there).
    let engine = f.bin.with_file_name("snapjournal-engine");
    let out = Command::new("ldd").arg(&engine).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("libvirt"));
}
