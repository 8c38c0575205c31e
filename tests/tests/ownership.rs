//! Who owns which image: a domain's own disk may be merged into and is
//! removed once nothing uses it; a shared one (a template, a disk marked
//! shared) is never modified, and the output names it when it falls out of
//! use. A merge that cannot fit is refused with the numbers.

use std::path::Path;
use std::process::Command;

use snapjournal_tests::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Defines domain `name` on `disks` (target, image), with extra `define`
/// arguments; returns the `--json` output.
fn define(f: &Fixture, name: &str, disks: &[(&str, &str)], extra: &[&str]) -> serde_json::Value {
    let pairs: Vec<(String, String)> = disks
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    let xml = f.root.path().join(format!("{name}.xml"));
    std::fs::write(&xml, domain_xml(name, &pairs)).unwrap();
    let mut args = vec!["--json", "domain", "define", xml.to_str().unwrap()];
    args.extend_from_slice(extra);
    json(&f.ok(&args).unwrap())
}

fn image(f: &Fixture, name: &str, mib: u32) -> String {
    let p = f.img.join(name).display().to_string();
    tool("qemu-img", &["create", "-q", "-f", "qcow2", &p, "64M"]).unwrap();
    if mib > 0 {
        let cmd = format!("write -P 0x5a 1M {}M", mib);
        tool("qemu-io", &["-f", "qcow2", "-c", &cmd, &p]).unwrap();
    }
    p
}

#[test]
fn deleting_the_first_snapshot_commits_into_the_domains_own_disk() {
    let f = Fixture::new(1).unwrap();
    let a = image(&f, "a.qcow2", 4);
    let d = define(&f, "a", &[("vda", &a)], &[]);
    assert_eq!(d["owned"][0]["image"], a.as_str(), "{d}");
    let r = json(&f.ok(&["--json", "snapshot", "create", "a", "s1"]).unwrap());
    let overlay = r["overlays"][0]["file"].as_str().unwrap().to_string();
    write_pattern(&overlay, 0xab, 0).unwrap();
    // 64 KiB written after the snapshot: committed into a.qcow2 (the
    // domain's own), not 4 MiB pulled into the overlay.
    let r = json(&f.ok(&["--json", "snapshot", "delete", "a", "s1"]).unwrap());
    let merge = r["merges"][0].as_str().unwrap();
    assert!(
        merge.contains(&format!("commit {overlay} into {a} ({REGION} bytes")),
        "{r}"
    );
    assert_eq!(r["removed"][0], overlay.as_str(), "{r}");
    assert!(!Path::new(&overlay).exists());
    let state = f.state().unwrap();
    assert_eq!(state.domains["a"].core.disks["vda"].chain[0].path, a);
    assert!(region_holds(&a, 0xab, 0).unwrap());
    f.ok(&["fsck"]).unwrap();
}

#[test]
fn an_owned_disk_nothing_uses_goes_with_the_transaction_a_shared_one_is_named() {
    let f = Fixture::new(1).unwrap();
    for (name, extra) in [("own", &[][..]), ("shr", &["--shared", "vda"][..])] {
        let base = image(&f, &format!("{name}.qcow2"), 0);
        write_pattern(&base, 0x5a, 5).unwrap();
        let d = define(&f, name, &[("vda", &base)], extra);
        let r = json(&f.ok(&["--json", "snapshot", "create", name, "s1"]).unwrap());
        let overlay = r["overlays"][0]["file"].as_str().unwrap().to_string();
        // More data above than below: the base is pulled up.
        for region in 0..5 {
            write_pattern(&overlay, 0xcd, region).unwrap();
        }
        let r = json(&f.ok(&["--json", "snapshot", "delete", name, "s1"]).unwrap());
        assert!(r["merges"][0].as_str().unwrap().contains("pull"), "{r}");
        if extra.is_empty() {
            assert_eq!(d["owned"][0]["image"], base.as_str(), "{d}");
            assert_eq!(r["removed"], serde_json::json!([base]), "{r}");
            assert!(
                !Path::new(&base).exists(),
                "the domain's own base, unused, is removed"
            );
        } else {
            assert_eq!(d["shared"][0]["why"], "defined as shared", "{d}");
            assert_eq!(r["unused_shared"][0]["image"], base.as_str(), "{r}");
            assert!(r["unused_shared"][0]["bytes"].as_u64().unwrap() >= REGION, "{r}");
            assert!(Path::new(&base).exists(), "a shared image is left");
            let text = f.ok(&["snapshot", "create", name, "s2"]).unwrap();
            assert!(text.contains("created"), "{text}");
        }
        f.ok(&["fsck"]).unwrap();
    }
    // A template below the disk is never the domain's; marked disks and an
    // image another domain owns are shared.
    let template = image(&f, "template.qcow2", 1);
    let child = f.img.join("child.qcow2").display().to_string();
    tool(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &template, &child,
        ],
    )
    .unwrap();
    let d = define(&f, "t", &[("vda", &child)], &[]);
    assert_eq!(
        d["owned"],
        serde_json::json!([{"disk": "vda", "image": child}]),
        "{d}"
    );
    assert!(!f.state().unwrap().images.contains_key(&template));
    let e = f
        .fails(&["domain", "define", "/nonexistent.xml", "--shared", "vdz"])
        .unwrap();
    assert!(e.contains("nonexistent"), "{e}");
    let xml = f.root.path().join("t2.xml");
    std::fs::write(&xml, domain_xml("t2", &[("vda".into(), child.clone())])).unwrap();
    let e = f
        .fails(&["domain", "define", xml.to_str().unwrap(), "--shared", "vdz"])
        .unwrap();
    assert!(
        e.contains("names disk vdz") && e.contains("nothing was changed"),
        "{e}"
    );
}

/// A tmpfs of `mib` MiB mounted for the test's life (root only, as CI).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root (CI runs as root)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_merge_that_cannot_fit_is_refused_with_the_numbers() {
    let f = Fixture::new(1).unwrap();
    let small = f.root.path().join("small");
    let _fs = Tmpfs::mount(&small, 12);
    let base = small.join("b.qcow2").display().to_string();
    tool("qemu-img", &["create", "-q", "-f", "qcow2", &base, "64M"]).unwrap();
    tool("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 4M", &base]).unwrap();
    define(&f, "b", &[("vda", &base)], &[]);
    let r = json(&f.ok(&["--json", "snapshot", "create", "b", "s1"]).unwrap());
    let overlay = r["overlays"][0]["file"].as_str().unwrap().to_string();
    tool("qemu-io", &["-f", "qcow2", "-c", "write -P 0x22 8M 5M", &overlay]).unwrap();
    // The cheaper merge commits 4 MiB... or pulls 4 MiB; either way it
    // needs more than the ~3 MiB left.
    let before = f.state().unwrap();
    let e = f.fails(&["snapshot", "delete", "b", "s1"]).unwrap();
    assert!(
        e.contains("merges up to 4.1 MiB")
            && e.contains("free")
            && e.contains(&small.display().to_string())
            && e.matches("nothing was changed").count() == 1,
        "{e}"
    );
    assert_eq!(f.state().unwrap(), before);
    // Metadata alone still goes.
    f.ok(&["snapshot", "delete", "b", "s1", "--metadata-only"])
        .unwrap();
    f.ok(&["fsck"]).unwrap();
}

/// A chain another tool made (as libvirt does: base ← o1 ← o2), its two
/// snapshots' documents, and domain `lv` defined on the top overlay.
fn imported_chain(f: &Fixture) -> (String, String, String, Vec<std::path::PathBuf>) {
    let base = image(f, "lv.qcow2", 0);
    write_pattern(&base, 0xa1, 0).unwrap();
    let o1 = f.img.join("lv.s1").display().to_string();
    let o2 = f.img.join("lv.s2").display().to_string();
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &o1],
    )
    .unwrap();
    write_pattern(&o1, 0xb2, 1).unwrap();
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &o1, &o2],
    )
    .unwrap();
    write_pattern(&o2, 0xc3, 2).unwrap();
    define(f, "lv", &[("vda", &o2)], &["--all-shared"]);
    let mut docs = Vec::new();
    for (name, parent, frozen, overlay) in [("s1", None, &base, &o1), ("s2", Some("s1"), &o1, &o2)] {
        let historic = domain_xml("lv", &[("vda".into(), frozen.to_string())]);
        let parent = parent
            .map(|p| format!("<parent><name>{p}</name></parent>"))
            .unwrap_or_default();
        let doc = format!(
            "<domainsnapshot><name>{name}</name><state>shutoff</state>{parent}<creationTime>1700000000</creationTime><memory snapshot='no'/><disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='{overlay}'/></disk></disks>{}</domainsnapshot>",
            historic.trim()
        );
        let p = f.root.path().join(format!("lv-{name}.xml"));
        std::fs::write(&p, doc).unwrap();
        docs.push(p);
    }
    (base, o1, o2, docs)
}

#[test]
fn imported_snapshots_can_be_merged_once_their_overlays_are_adopted() {
    let f = Fixture::new(1).unwrap();
    let (base, o1, o2, docs) = imported_chain(&f);
    let mut args = vec!["snapshot", "redefine", "lv"];
    args.extend(docs.iter().map(|p| p.to_str().unwrap()));
    f.ok(&args).unwrap();
    let before = f.state().unwrap();
    let e = f.fails(&["snapshot", "delete", "lv", "s1"]).unwrap();
    assert!(
        e.contains("did not create") && e.contains("--adopt-images"),
        "{e}"
    );
    assert_eq!(f.state().unwrap(), before);
    // Adopted: the overlays are the domain's; the base stays the user's.
    args.push("--adopt-images");
    f.ok(&args).unwrap();
    let state = f.state().unwrap();
    assert!(state.images.contains_key(&o1) && state.images.contains_key(&o2));
    assert!(!state.images.contains_key(&base));
    let base_bytes = std::fs::read(&base).unwrap();
    f.ok(&["snapshot", "delete", "lv", "s1"]).unwrap();
    f.ok(&["snapshot", "delete", "lv", "s2"]).unwrap();
    f.ok(&["fsck"]).unwrap();
    assert!(
        std::fs::read(&base).unwrap() == base_bytes,
        "the base was modified"
    );
    let active = f.state().unwrap().domains["lv"].core.disks["vda"].chain[0]
        .path
        .clone();
    for (r, p) in [(0, 0xa1), (1, 0xb2), (2, 0xc3)] {
        assert!(region_holds(&active, p, r).unwrap(), "region {r}");
    }
}
