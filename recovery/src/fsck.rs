//! fsck: checks the invariants I1–I9 and, on request, repairs what is safe.

use std::collections::BTreeSet;
use std::path::Path;

use executor::metadata::TEMP_PREFIX;
use executor::Executor;
use journal::{Intent, Plan, State, StateChange, Step};
use serde::Serialize;

use crate::error::Result;

/// What kind of finding, with the invariant it breaks. Serialized as its
/// stable kebab-case name (`chain-mismatch`, …), which `--json` reports
/// and a client matches on.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FindingKind {
    /// I9: a journal record does not decode.
    CorruptRecord,
    /// I9: the stored state is not the fold of the events.
    ProjectionMismatch,
    /// I7: a transaction is still open.
    OpenTransaction,
    /// I9: a snapshot or checkpoint lacks its historic domain document.
    HistoricDocumentMissing,
    /// I1: a rendered XML file is missing.
    XmlMissing,
    /// I1: a rendered XML file differs from the state.
    XmlDiffers,
    /// I1: a rendered XML file does not parse (half written).
    XmlHalfWritten,
    /// I1: a file the state does not have.
    XmlExtra,
    /// I1: a temp file a crashed writer left.
    XmlStrayTemp,
    /// I4: a disk image is missing.
    MissingImage,
    /// I2: the chain on disk differs from the journal.
    ChainMismatch,
    /// I4: an image header does not read.
    UnreadableImage,
    /// I4: a snapshot image is a disk's active layer.
    FrozenImageWritable,
    /// I4: a checkpoint bitmap is shared in a way that is unsafe.
    BitmapShared,
    /// I3: an image the journal created that nothing references.
    OrphanImage,
    /// I1: libvirt's definition or metadata differ from the journal.
    LibvirtMetadataDiffers,
    /// I1: libvirt marked a snapshot with an unfinished delete.
    LibvirtDeleteMarker,
    /// I1: libvirt's live view is behind QEMU, which runs the journal's chain.
    LibvirtLiveViewStale,
    /// I2: libvirt and QEMU run a chain other than the journal's.
    LibvirtChainMismatch,
    /// I7: a block job runs in libvirt with no transaction open.
    LibvirtStrayJob,
    /// I2: the domain is recorded running but its QEMU is gone.
    QemuGone,
    /// I2: QEMU runs a chain other than the journal's.
    QemuChainMismatch,
    /// I3: QEMU holds a node outside the chains.
    QemuStrayNode,
    /// I7: a block job is left in QEMU.
    QemuStrayJob,
    /// I4: a checkpoint's bitmap is missing.
    MissingBitmap,
    /// I4: a checkpoint's bitmap is marked inconsistent.
    InconsistentBitmap,
    /// I2: a checkpoint's bitmap records when it must not, or the reverse.
    BitmapState,
}

impl FindingKind {
    /// Every kind.
    pub const ALL: &'static [FindingKind] = &[
        FindingKind::CorruptRecord,
        FindingKind::ProjectionMismatch,
        FindingKind::OpenTransaction,
        FindingKind::HistoricDocumentMissing,
        FindingKind::XmlMissing,
        FindingKind::XmlDiffers,
        FindingKind::XmlHalfWritten,
        FindingKind::XmlExtra,
        FindingKind::XmlStrayTemp,
        FindingKind::MissingImage,
        FindingKind::ChainMismatch,
        FindingKind::UnreadableImage,
        FindingKind::FrozenImageWritable,
        FindingKind::BitmapShared,
        FindingKind::OrphanImage,
        FindingKind::LibvirtMetadataDiffers,
        FindingKind::LibvirtDeleteMarker,
        FindingKind::LibvirtLiveViewStale,
        FindingKind::LibvirtChainMismatch,
        FindingKind::LibvirtStrayJob,
        FindingKind::QemuGone,
        FindingKind::QemuChainMismatch,
        FindingKind::QemuStrayNode,
        FindingKind::QemuStrayJob,
        FindingKind::MissingBitmap,
        FindingKind::InconsistentBitmap,
        FindingKind::BitmapState,
    ];

    /// The invariant (`I1` … `I9`) a finding of this kind breaks.
    pub fn invariant(self) -> &'static str {
        match self {
            FindingKind::XmlMissing
            | FindingKind::XmlDiffers
            | FindingKind::XmlStrayTemp
            | FindingKind::XmlHalfWritten
            | FindingKind::XmlExtra
            | FindingKind::LibvirtMetadataDiffers
            | FindingKind::LibvirtDeleteMarker
            | FindingKind::LibvirtLiveViewStale => "I1",
            FindingKind::ChainMismatch
            | FindingKind::LibvirtChainMismatch
            | FindingKind::QemuGone
            | FindingKind::QemuChainMismatch
            | FindingKind::BitmapState => "I2",
            FindingKind::OrphanImage | FindingKind::QemuStrayNode => "I3",
            FindingKind::MissingImage
            | FindingKind::UnreadableImage
            | FindingKind::FrozenImageWritable
            | FindingKind::BitmapShared
            | FindingKind::MissingBitmap
            | FindingKind::InconsistentBitmap => "I4",
            FindingKind::OpenTransaction | FindingKind::LibvirtStrayJob | FindingKind::QemuStrayJob => "I7",
            FindingKind::CorruptRecord
            | FindingKind::ProjectionMismatch
            | FindingKind::HistoricDocumentMissing => "I9",
        }
    }

    /// The stable name (`chain-mismatch`, …).
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::CorruptRecord => "corrupt-record",
            FindingKind::ProjectionMismatch => "projection-mismatch",
            FindingKind::OpenTransaction => "open-transaction",
            FindingKind::HistoricDocumentMissing => "historic-document-missing",
            FindingKind::XmlMissing => "xml-missing",
            FindingKind::XmlDiffers => "xml-differs",
            FindingKind::XmlHalfWritten => "xml-half-written",
            FindingKind::XmlExtra => "xml-extra",
            FindingKind::XmlStrayTemp => "xml-stray-temp",
            FindingKind::MissingImage => "missing-image",
            FindingKind::ChainMismatch => "chain-mismatch",
            FindingKind::UnreadableImage => "unreadable-image",
            FindingKind::FrozenImageWritable => "frozen-image-writable",
            FindingKind::BitmapShared => "bitmap-shared",
            FindingKind::OrphanImage => "orphan-image",
            FindingKind::LibvirtMetadataDiffers => "libvirt-metadata-differs",
            FindingKind::LibvirtDeleteMarker => "libvirt-delete-marker",
            FindingKind::LibvirtLiveViewStale => "libvirt-live-view-stale",
            FindingKind::LibvirtChainMismatch => "libvirt-chain-mismatch",
            FindingKind::LibvirtStrayJob => "libvirt-stray-job",
            FindingKind::QemuGone => "qemu-gone",
            FindingKind::QemuChainMismatch => "qemu-chain-mismatch",
            FindingKind::QemuStrayNode => "qemu-stray-node",
            FindingKind::QemuStrayJob => "qemu-stray-job",
            FindingKind::MissingBitmap => "missing-bitmap",
            FindingKind::InconsistentBitmap => "inconsistent-bitmap",
            FindingKind::BitmapState => "bitmap-state",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing fsck found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// The invariant it breaks (`I1` … `I9`).
    pub invariant: &'static str,
    /// What kind of finding (serialized as its stable name).
    pub kind: FindingKind,
    /// The file, domain, snapshot or transaction concerned.
    pub subject: String,
    pub message: String,
    /// What `--repair` does about it.
    pub repair: String,
    /// Whether this run repaired it.
    pub repaired: bool,
}

/// What fsck found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FsckReport {
    pub findings: Vec<Finding>,
    /// Checks that could not run, with why.
    pub could_not_check: Vec<String>,
}

impl FsckReport {
    /// 0 clean, 1 findings left, 2 something could not be checked.
    pub fn exit_code(&self) -> i32 {
        if !self.could_not_check.is_empty() {
            2
        } else if self.findings.iter().any(|f| !f.repaired) {
            1
        } else {
            0
        }
    }
}

fn finding(
    kind: FindingKind,
    subject: impl Into<String>,
    message: impl Into<String>,
    repair: impl Into<String>,
) -> Finding {
    Finding {
        invariant: kind.invariant(),
        kind,
        subject: subject.into(),
        message: message.into(),
        repair: repair.into(),
        repaired: false,
    }
}

const NO_REPAIR: &str = "nothing automatic: an operator must look at it";
const LOST_TRACKING: &str = "nothing automatic: the change tracking since the checkpoint cannot be trusted; delete the checkpoint (`checkpoint delete`) and take a full backup";

/// Checks every invariant (for one domain, or all) and repairs what is
/// safe when `repair` is set: re-render XML, remove stray temp files,
/// remove orphan images the journal created that hold no data. It never
/// deletes a file the journal did not create or one that may hold guest
/// data.
pub fn fsck(exec: &Executor, only: Option<&str>, repair: bool) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    let journal = exec.journal();

    // I9: every record decodes and its checksum holds.
    let mut corrupt = false;
    match journal.verify_records() {
        Ok(bad) => {
            corrupt = !bad.is_empty();
            for e in bad {
                report.findings.push(finding(
                    FindingKind::CorruptRecord,
                    "journal",
                    e.to_string(),
                    NO_REPAIR,
                ));
            }
        }
        Err(e) => report.could_not_check.push(format!("journal records: {e}")),
    }
    let state = journal.state()?;
    // Event sourcing: the projection equals the fold of the log.
    match journal.fold_events() {
        Ok(folded) if folded != state => report.findings.push(finding(
            FindingKind::ProjectionMismatch,
            "journal",
            "the stored state projection differs from the fold of the event log",
            NO_REPAIR,
        )),
        Ok(_) => {}
        // A corrupt record is already a finding; the fold cannot pass it.
        Err(_) if corrupt => {}
        Err(e) => report.could_not_check.push(format!("event fold: {e}")),
    }
    // I7: no open transaction.
    for o in journal.open_transactions()? {
        if only.is_some_and(|d| d != o.domain) {
            continue;
        }
        report.findings.push(finding(
            FindingKind::OpenTransaction,
            o.txn.to_string(),
            format!("{} ({}) is still open", o.txn, o.intent.describe()),
            "run `snapjournal recover` (fsck does not finish transactions)",
        ));
    }
    let mut domains: BTreeSet<String> = state.domains.keys().cloned().collect();
    domains.extend(exec.metadata().domains_on_disk());
    for dom in domains {
        if only.is_some_and(|d| d != dom) {
            continue;
        }
        if let Err(e) = check_domain(exec, &state, &dom, repair, &mut report) {
            report.could_not_check.push(format!("domain {dom}: {e}"));
        }
    }
    Ok(report)
}

/// I9: every snapshot and checkpoint has its historic `<domain>` in the
/// journal (without it, its XML cannot be rendered and revert to it is
/// refused).
fn check_historic_documents(
    exec: &Executor,
    state: &State,
    dom: &str,
    report: &mut FsckReport,
) -> Result<()> {
    let Some(d) = state.domains.get(dom) else {
        return Ok(());
    };
    let journal = exec.journal();
    let snapshots = journal.snapshot_domain_xmls(dom)?;
    let checkpoints = journal.checkpoint_domain_xmls(dom)?;
    let missing = d
        .snapshots
        .keys()
        .filter(|n| !snapshots.contains_key(*n))
        .map(|n| ("snapshot", n))
        .chain(
            d.checkpoints
                .keys()
                .filter(|n| !checkpoints.contains_key(*n))
                .map(|n| ("checkpoint", n)),
        );
    for (kind, name) in missing {
        report.findings.push(finding(
        FindingKind::HistoricDocumentMissing,
            format!("{dom}/{name}"),
            format!(
                "{kind} {name} of domain {dom} has no historic <domain> in the journal: its XML cannot be rendered{}",
                if kind == "snapshot" { " and revert to it is refused" } else { "" }
            ),
            NO_REPAIR,
        ));
    }
    Ok(())
}

fn check_domain(
    exec: &Executor,
    state: &State,
    dom: &str,
    repair: bool,
    report: &mut FsckReport,
) -> Result<()> {
    let busy = exec.journal().busy_with(dom)?.is_some();
    check_historic_documents(exec, state, dom, report)?;
    // I1: XML files = rendering of the state.
    let meta = exec.metadata();
    let expected = meta.expected_files(exec.journal(), state, dom)?;
    let present = meta.present_files(dom)?;
    let mut xml_findings = Vec::new();
    for (path, content) in &expected {
        match std::fs::read(path) {
            Err(_) => xml_findings.push(finding(
                FindingKind::XmlMissing,
                path.display().to_string(),
                format!("{} is missing", path.display()),
                "re-render it from the journal",
            )),
            Ok(b) if b != content.as_bytes() => {
                let parses = executor::xml::tree::parse("file", &String::from_utf8_lossy(&b)).is_ok();
                xml_findings.push(finding(
                    if parses {
                        FindingKind::XmlDiffers
                    } else {
                        FindingKind::XmlHalfWritten
                    },
                    path.display().to_string(),
                    format!(
                        "{} {} the journal's state",
                        path.display(),
                        if parses {
                            "differs from"
                        } else {
                            "does not parse and differs from"
                        }
                    ),
                    "re-render it from the journal",
                ));
            }
            Ok(_) => {}
        }
    }
    for p in &present {
        if expected.contains_key(p) {
            continue;
        }
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (kind, msg) = if name.starts_with(TEMP_PREFIX) {
            (
                FindingKind::XmlStrayTemp,
                format!("stray temporary file {}", p.display()),
            )
        } else {
            (
                FindingKind::XmlExtra,
                format!("{} is not in the journal's state", p.display()),
            )
        };
        xml_findings.push(finding(kind, p.display().to_string(), msg, "remove it"));
    }
    if !xml_findings.is_empty() && repair && !busy {
        meta.sync_domain(exec.journal(), state, dom)?;
        for f in &mut xml_findings {
            f.repaired = true;
        }
    }
    report.findings.extend(xml_findings);

    let Some(d) = state.domains.get(dom) else {
        return Ok(());
    };
    // I2 and I4: real chains equal the state; referenced images exist.
    for disk in d.core.disks.values() {
        let Some(active) = disk.active() else { continue };
        if !Path::new(&active.path).exists() {
            report.findings.push(finding(
                FindingKind::MissingImage,
                active.path.clone(),
                format!(
                    "domain {dom}, disk {}: active image {} does not exist",
                    disk.target, active.path
                ),
                NO_REPAIR,
            ));
            continue;
        }
        match exec.images().chain(&active.path) {
            Ok(real) if real != disk.chain => report.findings.push(finding(
                FindingKind::ChainMismatch,
                format!("{dom}/{}", disk.target),
                format!(
                    "domain {dom}, disk {}: the chain on disk is {} but the journal says {}",
                    disk.target,
                    show(&real),
                    show(&disk.chain)
                ),
                NO_REPAIR,
            )),
            Ok(_) => {}
            Err(e) => report.findings.push(finding(
                FindingKind::UnreadableImage,
                active.path.clone(),
                format!("domain {dom}, disk {}: {e}", disk.target),
                NO_REPAIR,
            )),
        }
    }
    let libvirt = exec.libvirt_uri(dom)?;
    if let Some(uri) = &libvirt {
        check_libvirt(exec, d, uri, busy, repair, report);
    }
    // libvirt keeps every checkpoint's bitmap recording (a checkpoint's
    // changes are its bitmap alone); the journal's own operations disable
    // the older one. Both are right for the union the journal reads.
    let all_may_record = libvirt.is_some();
    if let Some(rt) = &d.core.runtime {
        check_running(exec, d, rt, busy, report);
    } else if !busy && !d.checkpoints.is_empty() {
        match &libvirt {
            Some(uri) if exec.libvirt().is_active(uri, dom).unwrap_or(false) => {
                // QEMU holds the bitmaps: the files' flags are stale.
                let jobs = d
                    .core
                    .disks
                    .keys()
                    .any(|t| !matches!(exec.libvirt().job(uri, dom, t), Ok(None)));
                match (jobs, exec.libvirt().block_graph(uri, dom)) {
                    (false, Ok(graph)) => check_bitmaps(
                        d,
                        |disk| Some(bitmaps_from_graph(&graph, disk)),
                        all_may_record,
                        report,
                    ),
                    (true, _) => report
                        .could_not_check
                        .push(format!("domain {dom}: the bitmaps (a block job runs in libvirt)")),
                    (false, Err(e)) => report
                        .could_not_check
                        .push(format!("domain {dom}: the bitmaps: {e}")),
                }
            }
            _ => check_bitmaps(d, |disk| bitmaps_from_images(exec, disk), all_may_record, report),
        }
    }
    for s in d.snapshots.values() {
        for sd in &s.disks {
            if let Some(f) = &sd.frozen {
                if let Some(w) = d.disk_writing_into(&f.path) {
                    report.findings.push(finding(
        FindingKind::FrozenImageWritable,
                        format!("{dom}/{}", s.name),
                        format!(
                            "domain {dom}, snapshot {}, disk {}: the snapshot's image {} is the active layer of disk {} — the domain still writes into it, so the snapshot protects nothing and a revert would bring back later data",
                            s.name, sd.disk, f.path, w.target
                        ),
                        "nothing automatic: delete the snapshot with --metadata-only, or point the domain's disk at an overlay on the image",
                    ));
                }
                if !Path::new(&f.path).exists() {
                    report.findings.push(finding(
                        FindingKind::MissingImage,
                        f.path.clone(),
                        format!(
                            "domain {dom}, snapshot {}, disk {}: image {} does not exist",
                            s.name, sd.disk, f.path
                        ),
                        NO_REPAIR,
                    ));
                }
            }
        }
    }
    // A bitmap belongs to one checkpoint (what redefine enforces).
    let mut owner: std::collections::BTreeMap<(&str, &str), &str> = Default::default();
    for c in d.checkpoints.values() {
        for (disk, bitmap) in c.bitmaps() {
            if let Some(other) = owner.insert((disk, bitmap), c.name.as_str()) {
                report.findings.push(finding(
        FindingKind::BitmapShared,
                    format!("{dom}/{}", c.name),
                    format!(
                        "domain {dom}, disk {disk}: checkpoints {other} and {} both name bitmap {bitmap}; deleting either would destroy the other's change tracking",
                        c.name
                    ),
                    "nothing automatic: delete one of the checkpoints with --metadata-only",
                ));
            }
        }
    }
    // I3: images the journal created that nothing references.
    if !busy {
        let referenced = d.referenced_images();
        let mut removable = Vec::new();
        for img in state.images_of(dom) {
            if referenced.contains(&img.path) {
                continue;
            }
            let exists = Path::new(&img.path).exists();
            let data = if exists {
                exec.images()
                    .allocated_bytes(&img.path, "qcow2")
                    .unwrap_or(u64::MAX)
            } else {
                0
            };
            let mut f = finding(
                FindingKind::OrphanImage,
                img.path.clone(),
                format!(
                    "{} was created by the journal for domain {dom} and nothing references it{}",
                    img.path,
                    if exists { "" } else { " (the file is already gone)" }
                ),
                if data == 0 {
                    "remove it (it holds no data)".to_string()
                } else {
                    format!("nothing: it holds {data} bytes that may be guest data, so it is kept")
                },
            );
            if data == 0 && repair {
                removable.push(img.path.clone());
                f.repaired = true;
            }
            report.findings.push(f);
        }
        if !removable.is_empty() {
            let mut steps: Vec<Step> = removable
                .iter()
                .map(|p| Step::RemoveImage { path: p.clone() })
                .collect();
            steps.push(Step::SyncXml { domain: dom.into() });
            let changes = removable
                .iter()
                .map(|p| StateChange::ImageRemoved { path: p.clone() })
                .collect();
            exec.run(
                Intent::OrphanImagesRemove {
                    domain: dom.into(),
                    count: removable.len() as u32,
                },
                Plan {
                    steps,
                    commit_index: 0,
                    changes,
                },
                Some(d),
            )?;
        }
    }
    Ok(())
}

/// A domain libvirt runs: libvirt's metadata equals the journal's
/// rendering (I1: its definition's disk sources, snapshots, checkpoints,
/// current snapshot; `--repair` rewrites it from the journal), and while
/// it runs, libvirt's chains equal the journal's (I2) and no block job is
/// left on a disk (I7).
fn check_libvirt(
    exec: &Executor,
    d: &journal::DomainState,
    uri: &str,
    busy: bool,
    repair: bool,
    report: &mut FsckReport,
) {
    let dom = &d.core.name;
    let world = exec.world();
    let drift = match world.libvirt_drift(dom) {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            report
                .could_not_check
                .push(format!("domain {dom}: libvirt's view: {e}"));
            return;
        }
    };
    let mut found: Vec<Finding> = drift
        .findings
        .iter()
        .map(|m| {
            finding(
                FindingKind::LibvirtMetadataDiffers,
                dom.clone(),
                format!("domain {dom}: {m}"),
                "rewrite libvirt's definition and metadata from the journal",
            )
        })
        .collect();
    let lv = exec.libvirt();
    // Markers libvirt leaves on a snapshot whose delete it did not complete:
    // libvirt refuses to delete that snapshot until a redefinition clears it.
    let mut marked = std::collections::BTreeSet::new();
    match lv.delete_markers(uri, dom) {
        Ok(m) => {
            for (snapshot, disks) in m.into_iter().filter(|(s, _)| d.snapshots.contains_key(s)) {
                found.push(finding(
        FindingKind::LibvirtDeleteMarker,
                    dom.clone(),
                    format!(
                        "domain {dom}: libvirt marks disk(s) {} of snapshot {snapshot} as the target of a snapshot delete that did not complete (<snapshotDeleteInProgress/>); libvirt refuses to delete it",
                        disks.join(", ")
                    ),
                    "redefine the snapshot in libvirt from the journal",
                ));
                marked.insert(snapshot);
            }
        }
        Err(e) => report
            .could_not_check
            .push(format!("domain {dom}: libvirt's snapshot documents: {e}")),
    }
    if !found.is_empty() && repair && !busy {
        // Markers alone: only those snapshots are redefined.
        let touched = if drift.findings.is_empty() {
            Some((marked, Default::default()))
        } else {
            None
        };
        match world.sync_libvirt(dom, touched) {
            Ok(()) => found.iter_mut().for_each(|f| f.repaired = true),
            Err(e) => report
                .could_not_check
                .push(format!("domain {dom}: rewriting libvirt's metadata failed: {e}")),
        }
    }
    report.findings.extend(found);
    match lv.is_active(uri, dom) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            report.could_not_check.push(format!("domain {dom}: {e}"));
            return;
        }
    }
    let live = match lv
        .xml(uri, dom, false)
        .map(|x| executor::libvirt::view::disks("live definition", &x))
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            report
                .could_not_check
                .push(format!("domain {dom}: libvirt's live XML: {e}"));
            return;
        }
        Err(e) => {
            report.could_not_check.push(format!("domain {dom}: {e}"));
            return;
        }
    };
    for disk in d.core.disks.values() {
        let ours: Vec<&str> = disk.chain.iter().map(|c| c.path.as_str()).collect();
        let real: Vec<&str> = live
            .get(&disk.target)
            .map(|v| v.chain.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if real != ours && !busy {
            // libvirtd killed as a block job ended can keep the chain as it
            // was while QEMU runs the journal's: libvirt's view is stale,
            // the runtime is right.
            let qemu = lv
                .qemu_chain_of(uri, dom, &[ours.first().copied().unwrap_or_default()])
                .ok()
                .flatten();
            if qemu
                .as_ref()
                .is_some_and(|q| q.iter().map(String::as_str).eq(ours.iter().copied()))
            {
                let mut f = finding(
        FindingKind::LibvirtLiveViewStale,
                    format!("{dom}/{}", disk.target),
                    format!(
                        "domain {dom}, disk {}: libvirt's live view lists {} while QEMU runs the journal's chain {} (libvirtd lost the end of a block job); the data is right, libvirt's view is not",
                        disk.target,
                        real.join(" -> "),
                        ours.join(" -> ")
                    ),
                    "refresh libvirt's view with a pull that copies nothing (possible when the stale image sat right below the active one; otherwise libvirt's view corrects itself when the domain next starts)",
                );
                if repair {
                    let q = qemu.unwrap_or_default();
                    let refreshed = lv.resync_view(uri, dom, &disk.target, &q).is_ok()
                        && lv
                            .xml(uri, dom, false)
                            .ok()
                            .and_then(|x| executor::libvirt::view::disks("live definition", &x).ok())
                            .and_then(|v| v.get(&disk.target).map(|v| v.chain == q))
                            .unwrap_or(false);
                    f.repaired = refreshed;
                }
                report.findings.push(f);
            } else {
                report.findings.push(finding(
                    FindingKind::LibvirtChainMismatch,
                    format!("{dom}/{}", disk.target),
                    format!(
                        "domain {dom}, disk {}: libvirt's chain is {} but the journal says {}",
                        disk.target,
                        if real.is_empty() {
                            "(none)".to_string()
                        } else {
                            real.join(" -> ")
                        },
                        ours.join(" -> ")
                    ),
                    NO_REPAIR,
                ));
            }
        }
        if busy {
            continue;
        }
        match lv.job(uri, dom, &disk.target) {
            Ok(Some(j)) => report.findings.push(finding(
        FindingKind::LibvirtStrayJob,
                format!("{dom}/{}", disk.target),
                format!(
                    "domain {dom}, disk {}: a block job (type {}, {}/{}) runs in libvirt with no transaction open",
                    disk.target, j.kind, j.cur, j.end
                ),
                NO_REPAIR,
            )),
            Ok(None) => {}
            Err(e) => report.could_not_check.push(format!("domain {dom}: {e}")),
        }
    }
}

/// A running domain: QEMU's chains equal the journal's (I2), no node of an
/// image outside the chains and no block job is left in QEMU (I3, I7).
fn check_running(
    exec: &Executor,
    d: &journal::DomainState,
    rt: &journal::Runtime,
    busy: bool,
    report: &mut FsckReport,
) {
    let dom = &d.core.name;
    let read = exec.live().with_qemu(rt, |q| {
        let g = executor::live::graph::BlockGraph::read(q)?;
        Ok((g, q.jobs()?))
    });
    let (graph, jobs) = match read {
        Ok(Some(x)) => x,
        Ok(None) => {
            report.findings.push(finding(
                FindingKind::QemuGone,
                dom.clone(),
                format!(
                    "domain {dom} is recorded running on {} but its QEMU is gone",
                    rt.qmp_socket
                ),
                "`snapjournal recover` records it stopped",
            ));
            return;
        }
        Err(e) => {
            report
                .could_not_check
                .push(format!("domain {dom}: QEMU's block graph: {e}"));
            return;
        }
    };
    if !busy {
        check_bitmaps(d, |disk| Some(bitmaps_from_graph(&graph, disk)), false, report);
    }
    let mut in_chains = std::collections::BTreeSet::new();
    for disk in d.core.disks.values() {
        let active = disk.active().map(|a| a.path.as_str()).unwrap_or_default();
        let ours: Vec<&str> = disk.chain.iter().map(|c| c.path.as_str()).collect();
        in_chains.extend(ours.iter().map(|s| s.to_string()));
        let real: Option<Vec<&str>> = graph
            .device(&disk.target, active)
            .map(|x| x.chain.iter().map(|l| l.path.as_str()).collect());
        if real.as_deref() != Some(&ours[..]) {
            report.findings.push(finding(
                FindingKind::QemuChainMismatch,
                format!("{dom}/{}", disk.target),
                format!(
                    "domain {dom}, disk {}: QEMU's chain is {} but the journal says {}",
                    disk.target,
                    real.map(|r| r.join(" -> ")).unwrap_or_else(|| "no device".into()),
                    ours.join(" -> ")
                ),
                NO_REPAIR,
            ));
        }
    }
    if busy {
        return;
    }
    for (node, (drv, file)) in &graph.nodes {
        if (drv == "qcow2" || drv == "raw") && !in_chains.contains(file) {
            report.findings.push(finding(
                FindingKind::QemuStrayNode,
                format!("{dom}/{node}"),
                format!("domain {dom}: QEMU still holds node {node} on {file}, which no disk uses"),
                NO_REPAIR,
            ));
        }
    }
    for j in jobs {
        report.findings.push(finding(
            FindingKind::QemuStrayJob,
            format!("{dom}/{}", j.id),
            format!(
                "domain {dom}: block job {} ({}) is {} in QEMU with no transaction open",
                j.id, j.kind, j.status
            ),
            NO_REPAIR,
        ));
    }
}

fn show(chain: &[journal::ChainImage]) -> String {
    chain
        .iter()
        .map(|c| c.path.as_str())
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// The bitmaps of each image of a disk's chain (active first): from the
/// images of a stopped domain, or from the graph of a running QEMU.
type ChainBitmaps = Vec<(String, Vec<executor::images::BitmapInfo>)>;

/// The bitmaps of a stopped domain's chains, read from the images; `None`
/// when an image cannot be read (already an I2/I4 finding).
fn bitmaps_from_images(exec: &Executor, disk: &journal::DiskState) -> Option<ChainBitmaps> {
    let mut out = Vec::new();
    for image in disk.chain.iter().filter(|i| i.format == "qcow2") {
        out.push((image.path.clone(), exec.images().bitmaps(&image.path).ok()?));
    }
    Some(out)
}

/// The bitmaps of a running domain's chain, as its QEMU holds them.
fn bitmaps_from_graph(graph: &executor::live::graph::BlockGraph, disk: &journal::DiskState) -> ChainBitmaps {
    disk.chain
        .iter()
        .map(|image| {
            let list = graph
                .format_node_of(&image.path)
                .and_then(|n| graph.bitmaps.get(n))
                .map(|l| {
                    l.iter()
                        .map(|b| executor::images::BitmapInfo {
                            name: b.name.clone(),
                            enabled: b.recording,
                            in_use: b.inconsistent,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (image.path.clone(), list)
        })
        .collect()
}

/// The checkpoints' bitmaps: every bitmap a checkpoint names is in an image
/// of its disk's chain, consistent; on each disk the newest checkpoint's
/// bitmap is in the active image and records writes, and no other
/// checkpoint's bitmap there does.
/// `all_may_record`: an older checkpoint's bitmap that still records is
/// right too (libvirt's checkpoints all record).
fn check_bitmaps(
    d: &journal::DomainState,
    mut read: impl FnMut(&journal::DiskState) -> Option<ChainBitmaps>,
    all_may_record: bool,
    report: &mut FsckReport,
) {
    let dom = &d.core.name;
    for disk in d.core.disks.values() {
        if !d
            .checkpoints
            .values()
            .any(|c| c.bitmap_on(&disk.target).is_some())
        {
            continue;
        }
        let Some(per_image) = read(disk) else { continue };
        let newest = d.newest_checkpoint(Some(&disk.target));
        for c in d.checkpoints.values() {
            let Some(b) = c.bitmap_on(&disk.target) else {
                continue;
            };
            let subject = format!("{dom}/{}/{b}", disk.target);
            let found: Vec<(&str, &executor::images::BitmapInfo)> = per_image
                .iter()
                .filter_map(|(p, l)| l.iter().find(|x| x.name == b).map(|x| (p.as_str(), x)))
                .collect();
            if found.is_empty() {
                report.findings.push(finding(
        FindingKind::MissingBitmap,
                    subject,
                    format!(
                        "domain {dom}, disk {}: checkpoint {} names bitmap {b}, which no image of the chain holds (a QEMU that died before storing it loses it)",
                        disk.target, c.name
                    ),
                    LOST_TRACKING,
                ));
                continue;
            }
            if let Some((path, _)) = found.iter().find(|(_, x)| x.in_use) {
                report.findings.push(finding(
        FindingKind::InconsistentBitmap,
                    subject,
                    format!(
                        "domain {dom}, disk {}: bitmap {b} of checkpoint {} in {path} is marked in use: a QEMU stopped without storing it, so it is inconsistent",
                        disk.target, c.name
                    ),
                    LOST_TRACKING,
                ));
                continue;
            }
            let active = per_image.first();
            let in_active = active.and_then(|(_, l)| l.iter().find(|x| x.name == b));
            let is_newest = newest.is_some_and(|n| n.name == c.name);
            let wrong = match (is_newest, in_active) {
                (true, Some(x)) => (!x.enabled).then_some("does not record writes in the active image"),
                (true, None) => Some("is not in the active image, so writes go untracked"),
                (false, Some(x)) => (x.enabled && !all_may_record)
                    .then_some("records writes although a newer checkpoint does"),
                (false, None) => None,
            };
            if let Some(what) = wrong {
                report.findings.push(finding(
        FindingKind::BitmapState,
                    subject,
                    format!(
                        "domain {dom}, disk {}: bitmap {b} of checkpoint {} {what} (a QEMU that died loses the bitmap changes it had not stored)",
                        disk.target, c.name
                    ),
                    LOST_TRACKING,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind serializes as its stable name (what `--json` reported
    /// before the enum) and names an invariant.
    #[test]
    fn finding_kinds_serialize_as_their_stable_names() {
        let mut seen = std::collections::BTreeSet::new();
        for k in FindingKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.name()));
            assert!(k.invariant().starts_with('I'), "{k}");
            assert!(seen.insert(k.name()), "{k} twice");
        }
        assert_eq!(
            FindingKind::LibvirtLiveViewStale.name(),
            "libvirt-live-view-stale"
        );
        assert_eq!(FindingKind::ChainMismatch.invariant(), "I2");
    }
}
