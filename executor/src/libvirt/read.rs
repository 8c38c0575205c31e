//! What `domain adopt --libvirt` reads from libvirt: the persistent
//! definition, the live one when the domain runs, every snapshot (parents
//! first) and checkpoint with its XML, and the current snapshot.

use super::{checkpoints, Libvirt, LibvirtError, LvResult};

/// A libvirt domain as adoption reads it.
#[derive(Debug, Clone, Default)]
pub struct LibvirtDomain {
    /// The persistent definition (`VIR_DOMAIN_XML_INACTIVE`).
    pub inactive_xml: String,
    /// The live definition, when the domain runs.
    pub live_xml: Option<String>,
    /// Whether the domain runs with its vCPUs running (not paused).
    pub vcpus_running: bool,
    /// (name, `<domainsnapshot>` with its `<domain>`), parents first.
    pub snapshots: Vec<(String, String)>,
    pub current: Option<String>,
    /// (name, `<domaincheckpoint>`), in libvirt's order.
    pub checkpoints: Vec<(String, String)>,
}

impl Libvirt {
    /// Reads domain `name` at `uri` for adoption.
    pub fn read_domain(&self, uri: &str, name: &str) -> LvResult<LibvirtDomain> {
        let d = self.domain(uri, name)?;
        let fail = |what: &str| {
            let what = what.to_string();
            move |e: virt::error::Error| LibvirtError::from_virt(uri, Some(name), what, e)
        };
        let inactive_xml = d
            .xml_desc(virt_sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(fail("read the persistent definition"))?;
        let active = d.is_active().map_err(fail("ask whether the domain runs"))?;
        let live_xml = if active {
            Some(d.xml_desc(0).map_err(fail("read the live definition"))?)
        } else {
            None
        };
        let vcpus_running = active && self.vcpus_running(uri, name)?;
        let mut snapshots = Vec::new();
        for s in d
            .list_all_snapshots(virt_sys::VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
            .map_err(fail("list snapshots"))?
        {
            let sname = s.name().map_err(fail("read a snapshot's name"))?;
            let xml = s.xml_desc(0).map_err(fail(&format!("read snapshot {sname}")))?;
            snapshots.push((sname, xml));
        }
        let current = if snapshots.is_empty() {
            None
        } else {
            match d.current_snapshot(0) {
                Ok(s) => Some(s.name().map_err(fail("read the current snapshot's name"))?),
                Err(e) if e.code().to_raw() == virt_sys::VIR_ERR_NO_DOMAIN_SNAPSHOT => None,
                Err(e) => return Err(fail("read the current snapshot")(e)),
            }
        };
        let checkpoints = checkpoints::list(uri, name, &d)?;
        Ok(LibvirtDomain {
            inactive_xml,
            live_xml,
            vcpus_running,
            snapshots,
            current,
            checkpoints,
        })
    }
}
