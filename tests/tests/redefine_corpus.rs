//! libvirt's snapshot and checkpoint parser tests as a corpus (issue 21):
//! `tests/data/libvirt-corpus/` holds documents snapjournal wrote from
//! reading each of libvirt's `tests/qemudomain{snapshot,checkpoint}xml2xml
//! {in,out}/` files (same features, real image paths; `+` files are the
//! adaptation a user would make, a historic `<domain>` on real images).
//! Each is redefined on a domain shaped like libvirt's test domain (a block
//! disk, a cdrom, two qcow2 disks on overlays). docs/REDEFINE-CORPUS.md
//! states every file's outcome; this test holds the product to it: an
//! accepted document dumps back with everything libvirt keeps (name,
//! description, parent, time, state, each listed disk, the historic
//! `<domain>` byte for byte, the elements kept as written), and fsck is
//! clean; a refused one says the reason the table gives and changes
//! nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use executor::xml::checkpoint::parse_checkpoint;
use executor::xml::snapshot::parse_snapshot;
use snapjournal_tests::*;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/libvirt-corpus")
}

/// The outcomes docs/REDEFINE-CORPUS.md gives: file → `None` (accepted)
/// or `Some(words the refusal must contain)`.
fn table() -> BTreeMap<String, Option<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/REDEFINE-CORPUS.md"))
            .expect("docs/REDEFINE-CORPUS.md");
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `file` | what it exercises | outcome | reason |
        if cells.len() < 6 || !cells[1].starts_with('`') || !cells[1].ends_with(".xml`") {
            continue;
        }
        let file = cells[1].trim_matches('`').to_string();
        let outcome = match cells[3] {
            "accepted" => None,
            "refused" => Some(cells[4].trim_matches('"').to_string()),
            other => panic!("{file}: unknown outcome {other:?}"),
        };
        out.insert(file, outcome);
    }
    out
}

struct World {
    f: Fixture,
}

impl World {
    fn new() -> World {
        let f = Fixture::new(1).unwrap();
        let img = f.img.display().to_string();
        for d in ["data", "logs"] {
            let base = format!("{img}/{d}.qcow2");
            tool("qemu-img", &["create", "-q", "-f", "qcow2", &base, "16M"]).unwrap();
            tool(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    &base,
                    &format!("{img}/{d}.snap"),
                ],
            )
            .unwrap();
        }
        std::fs::write(format!("{img}/install.iso"), b"").unwrap();
        let present = std::fs::read_to_string(corpus_dir().join("snapshot-out-full_domain.xml")).unwrap();
        let dom = &present[present.find("  <domain").unwrap()..present.find("  </domain>").unwrap() + 11];
        let dom = dom
            .replace("@IMG@", &img)
            .replace("data.qcow2", "data.snap")
            .replace("logs.qcow2", "logs.snap");
        let p = f.root.path().join("QEMUGuest1.xml");
        std::fs::write(&p, dom).unwrap();
        f.ok(&["domain", "define", p.to_str().unwrap(), "--all-shared"])
            .unwrap();
        World { f }
    }

    fn doc(&self, file: &str) -> String {
        std::fs::read_to_string(corpus_dir().join(file))
            .unwrap()
            .replace("@IMG@", &self.f.img.display().to_string())
    }
}

/// The bitmaps a checkpoint document names, added (recording) to the
/// disks' active images, as a QEMU that took the checkpoint leaves them.
fn add_bitmaps(w: &World, doc: &str) {
    for part in doc.split("bitmap='").skip(1) {
        let name = &part[..part.find('\'').unwrap()];
        for d in ["data", "logs"] {
            let img = w.f.img.join(format!("{d}.snap")).display().to_string();
            let info = tool("qemu-img", &["info", "--output=json", &img]).unwrap();
            if !info.contains(&format!("\"name\": \"{name}\"")) {
                tool("qemu-img", &["bitmap", "--add", &img, name]).unwrap();
            }
        }
    }
}

fn check_snapshot_round_trip(file: &str, input: &str, dumped: &str) {
    let a = parse_snapshot(file, input).unwrap();
    let b = parse_snapshot("dump", dumped).unwrap();
    assert_eq!(a.request.name, b.request.name, "{file}: name");
    assert_eq!(
        a.request.description, b.request.description,
        "{file}: description"
    );
    assert_eq!(a.parent, b.parent, "{file}: parent");
    assert_eq!(a.creation_time, b.creation_time, "{file}: creation time");
    if a.state.is_some() {
        assert_eq!(a.state, b.state, "{file}: state");
    }
    for d in &a.request.disks {
        let got = b.request.disks.iter().find(|x| x.disk == d.disk);
        assert!(got.is_some(), "{file}: disk {} dropped:\n{dumped}", d.disk);
        let got = got.unwrap();
        assert_eq!(got.mode, d.mode, "{file}: disk {} mode", d.disk);
        assert_eq!(got.file, d.file, "{file}: disk {} file", d.disk);
    }
    assert_eq!(
        a.domain_xml, b.domain_xml,
        "{file}: the historic domain is not byte for byte"
    );
    let norm = |s: &Option<String>| {
        s.as_ref()
            .map(|x| x.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        norm(&a.extras.inactive_domain),
        norm(&b.extras.inactive_domain),
        "{file}: inactiveDomain"
    );
    assert_eq!(norm(&a.extras.cookie), norm(&b.extras.cookie), "{file}: cookie");
    for (disk, x) in &a.extras.disks {
        let y = b.extras.disks.get(disk).cloned().unwrap_or_default();
        assert_eq!(
            norm(&x.source_inner),
            norm(&y.source_inner),
            "{file}: disk {disk} <source> content"
        );
        assert_eq!(
            norm(&x.driver_inner),
            norm(&y.driver_inner),
            "{file}: disk {disk} <driver> content"
        );
    }
}

fn check_checkpoint_round_trip(file: &str, input: &str, dumped: &str) {
    let a = parse_checkpoint(file, input).unwrap();
    let b = parse_checkpoint("dump", dumped).unwrap();
    assert_eq!(a.name, b.name, "{file}: name");
    assert_eq!(a.description, b.description, "{file}: description");
    assert_eq!(a.parent, b.parent, "{file}: parent");
    assert_eq!(a.creation_time, b.creation_time, "{file}: creation time");
    for d in &a.disks {
        assert!(b.disks.contains(d), "{file}: disk {d:?} not kept:\n{dumped}");
    }
    assert_eq!(
        a.domain_xml, b.domain_xml,
        "{file}: the historic domain is not byte for byte"
    );
}

#[test]
fn every_corpus_file_has_the_outcome_the_table_states() {
    let table = table();
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let Some(expected) = table.get(file) else {
            problems.push(format!("{file}: not in docs/REDEFINE-CORPUS.md"));
            continue;
        };
        let w = World::new();
        let doc = w.doc(file);
        let checkpoint = file.starts_with("checkpoint-");
        if checkpoint {
            add_bitmaps(&w, &doc);
        }
        let p = w.f.root.path().join(file);
        std::fs::write(&p, &doc).unwrap();
        let before = w.f.state().unwrap();
        let noun = if checkpoint { "checkpoint" } else { "snapshot" };
        let out =
            w.f.run(&[noun, "redefine", "QEMUGuest1", p.to_str().unwrap()])
                .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match (expected, out.status.success()) {
            (None, true) => {
                let name = if checkpoint {
                    parse_checkpoint(file, &doc).unwrap().name.unwrap()
                } else {
                    parse_snapshot(file, &doc).unwrap().request.name.unwrap()
                };
                let dumped = w.f.ok(&[noun, "dumpxml", "QEMUGuest1", &name]).unwrap();
                if checkpoint {
                    check_checkpoint_round_trip(file, &doc, &dumped);
                } else {
                    check_snapshot_round_trip(file, &doc, &dumped);
                }
                let fsck = w.f.run(&["fsck"]).unwrap();
                if !fsck.status.success() {
                    problems.push(format!(
                        "{file}: accepted but fsck finds: {}",
                        String::from_utf8_lossy(&fsck.stdout)
                    ));
                }
            }
            (None, false) => problems.push(format!("{file}: the table says accepted, but: {stderr}")),
            (Some(words), false) => {
                if !stderr.contains(words.as_str()) || !stderr.contains("nothing was changed") {
                    problems.push(format!("{file}: refused, but not with {words:?}: {stderr}"));
                }
                if w.f.state().unwrap() != before {
                    problems.push(format!("{file}: refused, but the state changed"));
                }
            }
            (Some(words), true) => problems.push(format!(
                "{file}: the table says refused ({words}), but it was accepted"
            )),
        }
    }
    for f in table.keys() {
        if !files.contains(f) {
            problems.push(format!(
                "docs/REDEFINE-CORPUS.md names {f}, which the corpus lacks"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
