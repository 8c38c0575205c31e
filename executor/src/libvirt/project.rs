//! libvirt's metadata as a projection of the journal: the persistent
//! definition, the snapshot and checkpoint metadata and the current
//! snapshot of a domain libvirt runs are rewritten from the journal after
//! every commit (`REDEFINE`, metadata-only deletes), the way the XML files
//! of the state directory are. Idempotent; libvirt's own snapshot
//! metadata is never the truth.

use std::collections::{BTreeMap, BTreeSet};

use super::view::disks;
use super::{checkpoints, Libvirt, LibvirtError, LvResult};

/// What libvirt must show for one domain, rendered from the journal.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    /// The persistent definition.
    pub domain_xml: String,
    /// (disk, active image) of every managed disk.
    pub active: BTreeMap<String, String>,
    /// (disk, chain: active image first) of every managed disk. A
    /// persistent definition may list no `<backingStore>` (libvirt reads
    /// the chain from the headers at start) or exactly this chain; a stale
    /// one (libvirtd lost the end of a block job) stops the next start.
    pub chains: BTreeMap<String, Vec<String>>,
    /// The snapshots' names, parents first (their documents are rendered
    /// only for those rewritten: [`Moment`]).
    pub snapshots: Vec<String>,
    pub current: Option<String>,
    /// The checkpoints' names, parents first.
    pub checkpoints: Vec<String>,
    /// Snapshots and checkpoints whose metadata changed (`None`: any may
    /// have; all are rewritten).
    pub touched: Option<(BTreeSet<String>, BTreeSet<String>)>,
}

/// A snapshot or checkpoint whose document [`Libvirt::project`] asks for.
#[derive(Debug, Clone, Copy)]
pub enum Moment<'a> {
    Snapshot(&'a str),
    Checkpoint(&'a str),
}

/// How libvirt's view differs from the journal's, for fsck and the probe
/// (empty: in sync).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub findings: Vec<String>,
}

/// Whether a persistent definition's disks agree with `p`: each managed
/// disk on its active image, with no `<backingStore>` listed or exactly the
/// journal's chain.
fn persistent_agrees(
    view: &BTreeMap<String, super::view::DiskView>,
    p: &Projection,
    findings: &mut Vec<String>,
) {
    for (disk, image) in &p.active {
        let seen = view.get(disk);
        let active = seen.and_then(|v| v.active());
        if active != Some(image.as_str()) {
            findings.push(format!(
                "libvirt's definition gives disk {disk} the source {}, the journal {image}",
                active.unwrap_or("(none)")
            ));
            continue;
        }
        let listed = seen.map(|v| v.chain.as_slice()).unwrap_or_default();
        if listed.len() > 1 && p.chains.get(disk).is_some_and(|c| c.as_slice() != listed) {
            findings.push(format!(
                "libvirt's definition lists the chain {} for disk {disk}, the journal {}",
                listed.join(" -> "),
                p.chains[disk].join(" -> ")
            ));
        }
    }
}

impl Libvirt {
    fn snapshot_names(&self, uri: &str, name: &str, d: &virt::domain::Domain) -> LvResult<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for s in d
            .list_all_snapshots(0)
            .map_err(|e| LibvirtError::from_virt(uri, Some(name), "list snapshots", e))?
        {
            out.insert(
                s.name()
                    .map_err(|e| LibvirtError::from_virt(uri, Some(name), "read a snapshot's name", e))?,
            );
        }
        Ok(out)
    }

    fn current_name(&self, uri: &str, name: &str, d: &virt::domain::Domain) -> LvResult<Option<String>> {
        match d.current_snapshot(0) {
            Ok(s) => Ok(s.name().ok()),
            Err(e) if e.code().to_raw() == virt_sys::VIR_ERR_NO_DOMAIN_SNAPSHOT => Ok(None),
            Err(e) => Err(LibvirtError::from_virt(
                uri,
                Some(name),
                "read the current snapshot",
                e,
            )),
        }
    }

    /// How libvirt's view of domain `name` differs from `p`: the
    /// persistent definition's disk sources, the snapshot and checkpoint
    /// names, the current snapshot.
    pub fn drift(&self, uri: &str, name: &str, p: &Projection) -> LvResult<Drift> {
        let d = self.domain(uri, name)?;
        let mut findings = Vec::new();
        let inactive = self.xml(uri, name, true)?;
        let view = disks(&format!("persistent definition of {name}"), &inactive).map_err(|e| {
            LibvirtError::new(uri, Some(name), "read the persistent definition", e.to_string())
        })?;
        persistent_agrees(&view, p, &mut findings);
        let have = self.snapshot_names(uri, name, &d)?;
        let want: BTreeSet<String> = p.snapshots.iter().cloned().collect();
        for n in have.difference(&want) {
            findings.push(format!("libvirt has snapshot {n}, which the journal does not"));
        }
        for n in want.difference(&have) {
            findings.push(format!("libvirt lacks snapshot {n}"));
        }
        if !want.is_empty() {
            let cur = self.current_name(uri, name, &d)?;
            if cur != p.current && p.current.is_some() {
                findings.push(format!(
                    "libvirt's current snapshot is {}, the journal's {}",
                    cur.as_deref().unwrap_or("(none)"),
                    p.current.as_deref().unwrap_or("(none)")
                ));
            }
        }
        let have: BTreeSet<String> = checkpoints::names(uri, name, &d)?.into_iter().collect();
        let want: BTreeSet<String> = p.checkpoints.iter().cloned().collect();
        for n in have.difference(&want) {
            findings.push(format!("libvirt has checkpoint {n}, which the journal does not"));
        }
        for n in want.difference(&have) {
            findings.push(format!("libvirt lacks checkpoint {n}"));
        }
        Ok(Drift { findings })
    }

    /// The snapshots of domain `name` whose disks libvirt marked
    /// `<snapshotDeleteInProgress/>` (a libvirt delete that did not
    /// complete; libvirt refuses to delete them), with the marked disks.
    /// Reads every snapshot's document: fsck's check, not the probe's.
    pub fn delete_markers(&self, uri: &str, name: &str) -> LvResult<Vec<(String, Vec<String>)>> {
        let d = self.domain(uri, name)?;
        let mut out = Vec::new();
        for s in d
            .list_all_snapshots(0)
            .map_err(|e| LibvirtError::from_virt(uri, Some(name), "list snapshots", e))?
        {
            let sname = s
                .name()
                .map_err(|e| LibvirtError::from_virt(uri, Some(name), "read a snapshot's name", e))?;
            let xml = s
                .xml_desc(0)
                .map_err(|e| LibvirtError::from_virt(uri, Some(name), format!("read snapshot {sname}"), e))?;
            let marked = super::view::delete_markers(&format!("snapshot {sname}"), &xml).map_err(|e| {
                LibvirtError::new(uri, Some(name), format!("read snapshot {sname}"), e.to_string())
            })?;
            if !marked.is_empty() {
                out.push((sname, marked));
            }
        }
        Ok(out)
    }

    /// Makes libvirt's view of domain `name` equal `p`; `render` gives the
    /// document of a snapshot or checkpoint that must be (re)defined.
    pub fn project(
        &self,
        uri: &str,
        name: &str,
        p: &Projection,
        render: &dyn Fn(Moment) -> Result<String, String>,
    ) -> LvResult<()> {
        let rendered = |m: Moment| {
            render(m).map_err(|e| LibvirtError::new(uri, Some(name), "render a document from the journal", e))
        };
        let c = self.connect(uri)?;
        // A transaction that did not (re)define the domain changed at most
        // its disk sources, and libvirt's own snapshot already wrote those
        // into the persistent definition of a running domain: defining it
        // again (~20 ms in libvirtd) is skipped when they agree.
        let sources_agree = || -> LvResult<bool> {
            let inactive = self.xml(uri, name, true)?;
            let view = disks(&format!("persistent definition of {name}"), &inactive).map_err(|e| {
                LibvirtError::new(uri, Some(name), "read the persistent definition", e.to_string())
            })?;
            let mut differ = Vec::new();
            persistent_agrees(&view, p, &mut differ);
            Ok(differ.is_empty())
        };
        if p.touched.is_none() || !sources_agree()? {
            c.define_domain_xml(&p.domain_xml).map_err(|e| {
                LibvirtError::from_virt(uri, Some(name), "define the domain from the journal", e)
            })?;
        }
        let d = self.domain(uri, name)?;
        // Snapshots: the ones the journal lacks go (metadata only), the
        // missing and changed ones are redefined parents first.
        let have = self.snapshot_names(uri, name, &d)?;
        let want: BTreeSet<&str> = p.snapshots.iter().map(String::as_str).collect();
        for n in have.iter().filter(|n| !want.contains(n.as_str())) {
            match virt::domain::Domain::lookup_snapshot_by_name(&d, n, 0) {
                Ok(s) => s
                    .delete(virt_sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
                    .map_err(|e| {
                        LibvirtError::from_virt(
                            uri,
                            Some(name),
                            format!("remove the metadata of snapshot {n}"),
                            e,
                        )
                    })?,
                Err(e) if e.code().to_raw() == virt_sys::VIR_ERR_NO_DOMAIN_SNAPSHOT => {}
                Err(e) => {
                    return Err(LibvirtError::from_virt(
                        uri,
                        Some(name),
                        format!("look up snapshot {n}"),
                        e,
                    ))
                }
            }
        }
        let current_now = self.current_name(uri, name, &d)?;
        for n in &p.snapshots {
            let is_current = p.current.as_deref() == Some(n.as_str());
            let rewrite = !have.contains(n)
                || p.touched.as_ref().is_none_or(|(s, _)| s.contains(n))
                || (is_current && current_now.as_deref() != Some(n.as_str()));
            if !rewrite {
                continue;
            }
            let mut flags = virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
            if is_current {
                flags |= virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
            }
            d.create_snapshot_xml(&rendered(Moment::Snapshot(n))?, flags)
                .map_err(|e| LibvirtError::from_virt(uri, Some(name), format!("redefine snapshot {n}"), e))?;
        }
        let have: BTreeSet<String> = checkpoints::names(uri, name, &d)?.into_iter().collect();
        let want: BTreeSet<&str> = p.checkpoints.iter().map(String::as_str).collect();
        for n in have.iter().filter(|n| !want.contains(n.as_str())) {
            checkpoints::forget(uri, name, &d, n)?;
        }
        for n in &p.checkpoints {
            let rewrite = !have.contains(n) || p.touched.as_ref().is_none_or(|(_, c)| c.contains(n));
            if rewrite {
                checkpoints::redefine(uri, name, &d, n, &rendered(Moment::Checkpoint(n))?)?;
            }
        }
        Ok(())
    }
}
