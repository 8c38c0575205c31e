//! The live changes made through libvirt: the snapshot commit point (one
//! atomic disk-only snapshot onto overlays the journal created) and the
//! block jobs of a delete (commit, active commit pivoted, pull into the
//! active image), each idempotent and judged from libvirt's view.

use std::ffi::CString;
use std::time::Duration;

use journal::crashpoint::crash_point;
use journal::LibvirtMerge;

use super::view::disks;
use super::{Libvirt, LibvirtError, LvResult};
use crate::xml::tree::escape;

/// How often a running block job is polled.
const POLL: Duration = Duration::from_millis(20);

/// The `<domainsnapshot>` that switches `disks` ((disk, overlay)) onto
/// their overlays and leaves `excluded` alone.
pub fn snapshot_xml(disks: &[(String, String)], excluded: &[String]) -> String {
    let mut x = String::from("<domainsnapshot>\n  <disks>\n");
    for (disk, overlay) in disks {
        x.push_str(&format!(
            "    <disk name='{}' snapshot='external' type='file'>\n      <driver type='qcow2'/>\n      <source file='{}'/>\n    </disk>\n",
            escape(disk),
            escape(overlay)
        ));
    }
    for disk in excluded {
        x.push_str(&format!("    <disk name='{}' snapshot='no'/>\n", escape(disk)));
    }
    x.push_str("  </disks>\n</domainsnapshot>\n");
    x
}

/// A block job's state on one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobInfo {
    pub kind: i32,
    pub cur: u64,
    pub end: u64,
}

impl JobInfo {
    /// An active commit waiting to be pivoted (libvirt reports `cur ==
    /// end` only once the job is ready).
    pub fn ready(&self) -> bool {
        self.end > 0 && self.cur == self.end
    }
}

impl Libvirt {
    /// Whether libvirt shows every disk of `disks` on its overlay, in the
    /// live definition (`persistent`: in the persistent one, which a
    /// disk-only snapshot of a persistent domain updates too).
    pub fn switched_in(
        &self,
        uri: &str,
        name: &str,
        switch: &[(String, String)],
        persistent: bool,
    ) -> LvResult<bool> {
        let xml = self.xml(uri, name, persistent)?;
        let view = disks(&format!("live definition of {name}"), &xml)
            .map_err(|e| LibvirtError::new(uri, Some(name), "read the live definition", e.to_string()))?;
        Ok(switch
            .iter()
            .all(|(d, o)| view.get(d).and_then(|v| v.active()) == Some(o.as_str())))
    }

    /// Whether libvirt's live definition shows every disk on its overlay.
    pub fn switched(&self, uri: &str, name: &str, switch: &[(String, String)]) -> LvResult<bool> {
        self.switched_in(uri, name, switch, false)
    }

    /// The commit point of a snapshot: ONE atomic disk-only snapshot that
    /// reuses the overlays and writes no libvirt metadata.
    pub fn snapshot(
        &self,
        uri: &str,
        name: &str,
        switch: &[(String, String)],
        excluded: &[String],
    ) -> LvResult<()> {
        let d = self.domain(uri, name)?;
        let flags = virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
            | virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
            | virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA;
        match d.create_snapshot_xml(&snapshot_xml(switch, excluded), flags) {
            Ok(_) => Ok(()),
            // Sent first, checked on failure: a snapshot that already ran
            // (before a crash, or whose reply was lost) shows in the XML.
            Err(e) if self.switched(uri, name, switch).unwrap_or(false) => {
                let _ = e;
                Ok(())
            }
            Err(e) => Err(LibvirtError::from_virt(
                uri,
                Some(name),
                "take the disk-only snapshot",
                e,
            )),
        }
    }

    /// The block job on `disk`, if one runs.
    pub fn job(&self, uri: &str, name: &str, disk: &str) -> LvResult<Option<JobInfo>> {
        let d = self.domain(uri, name)?;
        let c = CString::new(disk).map_err(|_| {
            LibvirtError::new(uri, Some(name), "read block job", "disk name holds a NUL byte")
        })?;
        // SAFETY: a plain C struct of integers; zero is a valid value.
        let mut info: virt_sys::virDomainBlockJobInfo = unsafe { std::mem::zeroed() };
        // SAFETY: live handle, NUL-terminated name, an info struct to fill.
        let r = unsafe { virt_sys::virDomainGetBlockJobInfo(d.as_ptr(), c.as_ptr(), &mut info, 0) };
        match r {
            r if r < 0 => Err(LibvirtError::last(
                uri,
                Some(name),
                format!("read the block job of disk {disk}"),
            )),
            0 => Ok(None),
            _ => Ok(Some(JobInfo {
                kind: info.type_,
                cur: info.cur as u64,
                end: info.end as u64,
            })),
        }
    }

    /// Whether `merge` is done on a running domain: the folded image has
    /// left libvirt's chain of `disk` and no job runs on it.
    pub fn merge_done(&self, uri: &str, name: &str, disk: &str, merge: &LibvirtMerge) -> LvResult<bool> {
        if self.job(uri, name, disk)?.is_some() {
            return Ok(false);
        }
        let xml = self.xml(uri, name, false)?;
        let view = disks(&format!("live definition of {name}"), &xml)
            .map_err(|e| LibvirtError::new(uri, Some(name), "read the live definition", e.to_string()))?;
        let chain = view.get(disk).map(|v| v.chain.as_slice()).unwrap_or(&[]);
        Ok(!chain.iter().any(|p| *p == merge.folded().path))
    }

    /// Runs `merge` on `disk` to its end (idempotent: a job already
    /// running is waited for, a ready active commit is pivoted, a merge
    /// already done is left alone). `progress` sees (current, total).
    pub fn merge(
        &self,
        uri: &str,
        name: &str,
        disk: &str,
        merge: &LibvirtMerge,
        progress: &dyn Fn(&str, u64, u64),
    ) -> LvResult<()> {
        let d = self.domain(uri, name)?;
        let mut started = false;
        let mut gone_once = false;
        let mut not_ready = 0u32;
        loop {
            match self.job(uri, name, disk)? {
                Some(j) => {
                    gone_once = false;
                    progress("running", j.cur, j.end);
                    let active = matches!(merge, LibvirtMerge::Commit { active: true, .. });
                    if active && j.ready() {
                        progress("ready", j.cur, j.end);
                        crash_point("libvirt.job.ready");
                        let c = CString::new(disk).unwrap_or_default();
                        // SAFETY: live handle, NUL-terminated disk name.
                        let r = unsafe {
                            virt_sys::virDomainBlockJobAbort(
                                d.as_ptr(),
                                c.as_ptr(),
                                virt_sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT,
                            )
                        };
                        if r < 0 {
                            let e = LibvirtError::last(
                                uri,
                                Some(name),
                                format!("pivot the active commit of disk {disk}"),
                            );
                            if self.merge_done(uri, name, disk, merge)? {
                                return Ok(());
                            }
                            // libvirt reports the copy done a moment before
                            // its job state turns ready: asked again.
                            if e.code as u32 == virt_sys::VIR_ERR_BLOCK_COPY_ACTIVE && not_ready < 500 {
                                not_ready += 1;
                                std::thread::sleep(POLL);
                                continue;
                            }
                            return Err(e);
                        }
                        continue;
                    }
                    std::thread::sleep(POLL);
                }
                None => {
                    if self.merge_done(uri, name, disk, merge)? {
                        return Ok(());
                    }
                    if started {
                        // libvirt may drop the job a moment before its
                        // view of the chain changes: look once more.
                        if !gone_once {
                            gone_once = true;
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                        return Err(LibvirtError::new(
                            uri,
                            Some(name),
                            format!("block job on disk {disk}"),
                            format!("the job ended but {} is still in the disk's chain (the job failed or was cancelled)", merge.folded().path),
                        ));
                    }
                    if let Err(e) = self.start_merge(uri, name, &d, disk, merge) {
                        // A libvirtd killed as the job ended, and started
                        // again, can show the chain as it was while QEMU
                        // already finished the merge: QEMU then refuses the
                        // job (it names a node QEMU no longer has). Judged
                        // from QEMU's graph, never redone.
                        return self.finished_behind_libvirt(uri, name, disk, merge, e);
                    }
                    crash_point("libvirt.job.started");
                    started = true;
                }
            }
        }
    }

    /// QEMU refused to start `merge` (it names an image QEMU no longer has)
    /// while libvirt's live view still lists the folded image: libvirtd was
    /// killed after it ended and dismissed the job in QEMU and before it
    /// saved the new chain, so the restarted libvirtd dropped the job and
    /// keeps the old chain for as long as the domain runs. QEMU's graph
    /// (read-only queries) is then the truth: the merge is done when the
    /// folded image left it. libvirt's view is brought back in line where a
    /// job that copies nothing can do it ([`Libvirt::resync_view`]).
    fn finished_behind_libvirt(
        &self,
        uri: &str,
        name: &str,
        disk: &str,
        merge: &LibvirtMerge,
        refused: LibvirtError,
    ) -> LvResult<()> {
        // QEMU still holding the folded image (or showing no such device)
        // means the job was refused for a reason of its own: reported as is.
        let Some(chain) = self.qemu_chain(uri, name, disk, merge)? else {
            return Err(refused);
        };
        if chain.iter().any(|p| *p == merge.folded().path) {
            return Err(refused);
        }
        self.resync_view(uri, name, disk, &chain)
    }

    /// The chain QEMU runs `disk` on (active image first), read with the
    /// read-only queries once no job of QEMU's is in flight; `None` when no
    /// device shows libvirt's active image or the merge's result.
    pub fn qemu_chain(
        &self,
        uri: &str,
        name: &str,
        disk: &str,
        merge: &LibvirtMerge,
    ) -> LvResult<Option<Vec<String>>> {
        let xml = self.xml(uri, name, false)?;
        let view = disks(&format!("live definition of {name}"), &xml)
            .map_err(|e| LibvirtError::new(uri, Some(name), "read the live definition", e.to_string()))?;
        let libvirt_active = view.get(disk).and_then(|v| v.active()).unwrap_or_default();
        let result = match merge {
            LibvirtMerge::Commit {
                base, active: true, ..
            } => base.path.as_str(),
            _ => libvirt_active,
        };
        self.qemu_chain_of(uri, name, &[libvirt_active, result])
    }

    /// The chain (active image first) of the device QEMU runs on one of
    /// `actives`, read with the read-only queries once no job of QEMU's is
    /// in flight (a graph read while a job finishes can crash QEMU 7.2).
    pub fn qemu_chain_of(&self, uri: &str, name: &str, actives: &[&str]) -> LvResult<Option<Vec<String>>> {
        let d = self.domain(uri, name)?;
        for _ in 0..500 {
            let reply = d
                .qemu_monitor_command(r#"{"execute":"query-jobs"}"#, 0)
                .map_err(|e| LibvirtError::from_virt(uri, Some(name), "read QEMU's jobs", e))?;
            let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
            let running = v["return"].as_array().is_some_and(|jobs| {
                jobs.iter()
                    .any(|j| !matches!(j["status"].as_str(), Some("concluded" | "null")))
            });
            if !running {
                break;
            }
            std::thread::sleep(POLL);
        }
        let graph = self.block_graph(uri, name)?;
        let dev = graph
            .devices
            .iter()
            .find(|dv| matches!(dv.chain.first(), Some(l) if actives.contains(&l.path.as_str())));
        Ok(dev.map(|dv| dv.chain.iter().map(|l| l.path.clone()).collect()))
    }

    /// Brings libvirt's stale live view of `disk` in line with QEMU's
    /// `chain` where a job that copies nothing can: a pull into the active
    /// image from its own backing image, through libvirt, whose end makes
    /// libvirt drop what it listed between them. Where the stale image is
    /// deeper no such job exists; libvirt's view then stays behind until
    /// the domain next starts (fsck reports it), the data is not affected.
    pub fn resync_view(&self, uri: &str, name: &str, disk: &str, chain: &[String]) -> LvResult<()> {
        let xml = self.xml(uri, name, false)?;
        let view = disks(&format!("live definition of {name}"), &xml)
            .map_err(|e| LibvirtError::new(uri, Some(name), "read the live definition", e.to_string()))?;
        let listed = view.get(disk).map(|v| v.chain.clone()).unwrap_or_default();
        if listed == chain || chain.len() < 2 || listed.first() != chain.first() {
            return Ok(());
        }
        let below = &chain[1];
        if listed.len() < 2 || listed.iter().skip(2).all(|p| p != below) {
            return Ok(());
        }
        let d = self.domain(uri, name)?;
        let cstr = |s: &str| {
            CString::new(s)
                .map_err(|_| LibvirtError::new(uri, Some(name), "resync", "a path holds a NUL byte"))
        };
        let (c_disk, c_below) = (cstr(disk)?, cstr(below)?);
        // SAFETY: live handle, NUL-terminated strings.
        let r =
            unsafe { virt_sys::virDomainBlockRebase(d.as_ptr(), c_disk.as_ptr(), c_below.as_ptr(), 0, 0) };
        if r < 0 {
            return Err(LibvirtError::last(
                uri,
                Some(name),
                format!("refresh libvirt's view of disk {disk} (a pull that copies nothing, from {below})"),
            ));
        }
        for _ in 0..1500 {
            if self.job(uri, name, disk)?.is_none() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        Err(LibvirtError::new(
            uri,
            Some(name),
            format!("refresh libvirt's view of disk {disk}"),
            "the pull that copies nothing did not end within 30 s",
        ))
    }

    fn start_merge(
        &self,
        uri: &str,
        name: &str,
        d: &virt::domain::Domain,
        disk: &str,
        merge: &LibvirtMerge,
    ) -> LvResult<()> {
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| {
                LibvirtError::new(uri, Some(name), "start a block job", "a path holds a NUL byte")
            })
        };
        let c_disk = cstr(disk)?;
        let (r, what) = match merge {
            LibvirtMerge::Commit { top, base, active } => {
                let (c_top, c_base) = (cstr(&top.path)?, cstr(&base.path)?);
                let flags = if *active {
                    virt_sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                } else {
                    0
                };
                // SAFETY: live handle, NUL-terminated strings.
                let r = unsafe {
                    virt_sys::virDomainBlockCommit(
                        d.as_ptr(),
                        c_disk.as_ptr(),
                        c_base.as_ptr(),
                        c_top.as_ptr(),
                        0,
                        flags,
                    )
                };
                (
                    r,
                    format!("block commit of {} into {} on disk {disk}", top.path, base.path),
                )
            }
            LibvirtMerge::Pull { top, dropped, below } => {
                let c_below = below.as_ref().map(|b| cstr(&b.path)).transpose()?;
                let base_ptr = c_below.as_ref().map(|c| c.as_ptr()).unwrap_or(std::ptr::null());
                // SAFETY: live handle, NUL-terminated strings (or NULL).
                let r =
                    unsafe { virt_sys::virDomainBlockRebase(d.as_ptr(), c_disk.as_ptr(), base_ptr, 0, 0) };
                (
                    r,
                    format!("block pull of {} into {} on disk {disk}", dropped.path, top.path),
                )
            }
        };
        if r < 0 {
            return Err(LibvirtError::last(uri, Some(name), what));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_document_names_every_disk() {
        let x = snapshot_xml(&[("vda".into(), "/i/a&b".into())], &["hdc".into()]);
        assert!(x.contains("<disk name='vda' snapshot='external' type='file'>"));
        assert!(x.contains("<source file='/i/a&amp;b'/>"));
        assert!(x.contains("<disk name='hdc' snapshot='no'/>"));
    }
}
