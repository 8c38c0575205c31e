//! `snapjournal demo` (the README's first command): it tells the story of
//! a crash and its recovery on real images, succeeds, and leaves nothing
//! behind.

use std::process::Command;

#[test]
fn the_demo_recovers_a_killed_two_disk_delete_and_cleans_up() {
    let bin = chaos::fixture::snapjournal_bin().unwrap();
    let unused_state = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .arg("--state-dir")
        .arg(unused_state.path().join("never"))
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "killed with SIGKILL",
        "roll FORWARD",
        "fsck: clean",
        "every layer's data is where it belongs",
        "demo done",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        text.lines().count() <= 14,
        "a dozen lines, not {}:\n{text}",
        text.lines().count()
    );
    // Its scratch directory is gone, and the state directory was not used.
    let scratch = text
        .lines()
        .next()
        .and_then(|l| l.split(", in ").nth(1))
        .and_then(|l| l.split(' ').next())
        .unwrap();
    assert!(!std::path::Path::new(scratch).exists(), "{scratch} left behind");
    assert!(!unused_state.path().join("never").exists());
}
