//! Domains libvirt runs: snapjournal reaches their QEMU only through
//! libvirt's public API (crate `virt`, raw `virt-sys` calls where it has no
//! wrapper), never through the monitor, so libvirt keeps track of every
//! change to the block graph.
//!
//! - `view.rs`: libvirt's view of a domain's disks (its live XML's sources
//!   and `<backingStore>` chains);
//! - `read.rs`: what adoption reads (definition, snapshots, checkpoints);
//! - `checkpoints.rs`: the checkpoint API (raw calls);
//! - `jobs.rs`: the snapshot commit point and the block jobs;
//! - `project.rs`: libvirt's definition and snapshot/checkpoint metadata
//!   rewritten from the journal (a projection, like the XML files).
//!
//! Every call blocks (the executor runs on a blocking thread); libvirt's
//! errors are thread-local, read right after each call by `virt`.

pub mod checkpoints;
pub mod jobs;
pub mod project;
pub mod read;
pub mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once};

use virt::connect::Connect;
use virt::domain::Domain;

/// The URI `domain adopt --libvirt` uses unless told otherwise.
pub const DEFAULT_URI: &str = "qemu:///system";

/// A libvirt call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("libvirt at {uri}{}: {action}: {message}", domain.as_ref().map(|d| format!(", domain {d}")).unwrap_or_default())]
pub struct LibvirtError {
    pub uri: String,
    pub domain: Option<String>,
    /// What was being done (`look up the domain`, `block commit of …`).
    pub action: String,
    /// libvirt's message.
    pub message: String,
    /// libvirt's error number (`virErrorNumber`; 0 when not from libvirt).
    pub code: i32,
}

impl LibvirtError {
    pub(crate) fn new(
        uri: &str,
        domain: Option<&str>,
        action: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        LibvirtError {
            uri: uri.into(),
            domain: domain.map(String::from),
            action: action.into(),
            message: message.into(),
            code: 0,
        }
    }

    fn from_virt(uri: &str, domain: Option<&str>, action: impl Into<String>, e: virt::error::Error) -> Self {
        LibvirtError {
            code: e.code().to_raw() as i32,
            ..Self::new(uri, domain, action, e.message())
        }
    }

    /// The libvirt error of the last call on this thread.
    pub(crate) fn last(uri: &str, domain: Option<&str>, action: impl Into<String>) -> Self {
        Self::from_virt(uri, domain, action, virt::error::Error::last_error())
    }
}

/// Result of a libvirt call.
pub type LvResult<T> = std::result::Result<T, LibvirtError>;

/// Open connections to libvirt, one per URI, kept for the life of the
/// executor and opened again when libvirtd restarted.
#[derive(Default)]
pub struct Libvirt {
    conns: Mutex<BTreeMap<String, Arc<Connect>>>,
}

static QUIET: Once = Once::new();

impl Libvirt {
    /// The connection to `uri`.
    pub fn connect(&self, uri: &str) -> LvResult<Arc<Connect>> {
        // libvirt prints every error on stderr unless told not to.
        QUIET.call_once(virt::error::clear_error_callback);
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.get(uri) {
            if c.is_alive().unwrap_or(false) {
                return Ok(c.clone());
            }
            conns.remove(uri);
        }
        let c = Connect::open(Some(uri)).map_err(|e| {
            let mut err = LibvirtError::from_virt(uri, None, "connect", e);
            err.message = format!("{} (is libvirtd running?)", err.message);
            err
        })?;
        let c = Arc::new(c);
        conns.insert(uri.to_string(), c.clone());
        Ok(c)
    }

    /// Domain `name` at `uri` (`None`: libvirt has no such domain).
    pub fn lookup(&self, uri: &str, name: &str) -> LvResult<Option<Domain>> {
        let c = self.connect(uri)?;
        match c.lookup_domain_by_name(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code().to_raw() == virt_sys::VIR_ERR_NO_DOMAIN => Ok(None),
            Err(e) => Err(LibvirtError::from_virt(uri, Some(name), "look up the domain", e)),
        }
    }

    /// Domain `name` at `uri`; an error naming both when libvirt lacks it.
    pub fn domain(&self, uri: &str, name: &str) -> LvResult<Domain> {
        self.lookup(uri, name)?.ok_or_else(|| {
            LibvirtError::new(
                uri,
                Some(name),
                "look up the domain",
                "libvirt has no domain of that name",
            )
        })
    }

    /// Whether libvirt runs domain `name` (running or paused).
    pub fn is_active(&self, uri: &str, name: &str) -> LvResult<bool> {
        self.domain(uri, name)?
            .is_active()
            .map_err(|e| LibvirtError::from_virt(uri, Some(name), "ask whether the domain runs", e))
    }

    /// Whether the vCPUs of running domain `name` run (not paused).
    pub fn vcpus_running(&self, uri: &str, name: &str) -> LvResult<bool> {
        let (state, _) = self
            .domain(uri, name)?
            .state()
            .map_err(|e| LibvirtError::from_virt(uri, Some(name), "read the domain's state", e))?;
        Ok(state.to_raw() == virt_sys::VIR_DOMAIN_RUNNING)
    }

    /// The domain's XML: live (`inactive = false`) or persistent.
    pub fn xml(&self, uri: &str, name: &str, inactive: bool) -> LvResult<String> {
        let flags = if inactive {
            virt_sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        self.domain(uri, name)?
            .xml_desc(flags)
            .map_err(|e| LibvirtError::from_virt(uri, Some(name), "read the domain's XML", e))
    }

    /// QEMU's block graph of running domain `name`, read through libvirt
    /// with the two read-only queries libvirt has no API for
    /// (`query-named-block-nodes`, `query-block`): the dirty bitmaps of a
    /// running domain's images (their state in the files is stale while
    /// QEMU holds them). Never called while a block job runs on the
    /// domain: QEMU 7.2 can crash on a graph read while a job finishes.
    pub fn block_graph(&self, uri: &str, name: &str) -> LvResult<crate::live::graph::BlockGraph> {
        let d = self.domain(uri, name)?;
        let ask = |cmd: &str| -> LvResult<serde_json::Value> {
            let reply = d
                .qemu_monitor_command(cmd, 0)
                .map_err(|e| LibvirtError::from_virt(uri, Some(name), "read QEMU's block graph", e))?;
            let v: serde_json::Value = serde_json::from_str(&reply).map_err(|e| {
                LibvirtError::new(
                    uri,
                    Some(name),
                    "read QEMU's block graph",
                    format!("unreadable reply: {e}"),
                )
            })?;
            Ok(v.get("return").cloned().unwrap_or(serde_json::Value::Null))
        };
        let nodes = ask(r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#)?;
        let block = ask(r#"{"execute":"query-block"}"#)?;
        Ok(crate::live::graph::BlockGraph::from_replies(&nodes, &block))
    }

    /// Stops a running domain the way a power button held down would not:
    /// QEMU is asked to quit (SIGTERM), flushes and closes its images.
    /// Returns once libvirt reports the domain inactive.
    pub fn stop(&self, uri: &str, name: &str) -> LvResult<()> {
        let d = self.domain(uri, name)?;
        if !d.is_active().unwrap_or(false) {
            return Ok(());
        }
        if d.destroy_flags(virt_sys::VIR_DOMAIN_DESTROY_GRACEFUL).is_ok() || !d.is_active().unwrap_or(true) {
            return Ok(());
        }
        // QEMU did not quit in libvirt's grace period: the present is
        // abandoned anyway (a revert), so it is killed.
        match d.destroy() {
            Ok(()) => Ok(()),
            Err(_) if !d.is_active().unwrap_or(true) => Ok(()),
            Err(e) => Err(LibvirtError::from_virt(uri, Some(name), "stop the domain", e)),
        }
    }

    /// Starts defined domain `name`, paused or running.
    pub fn start(&self, uri: &str, name: &str, paused: bool) -> LvResult<()> {
        let d = self.domain(uri, name)?;
        if d.is_active().unwrap_or(false) {
            return Ok(());
        }
        let flags = if paused {
            virt_sys::VIR_DOMAIN_START_PAUSED
        } else {
            0
        };
        d.create_with_flags(flags)
            .map(drop)
            .map_err(|e| LibvirtError::from_virt(uri, Some(name), "start the domain", e))
    }
}
