//! libvirt's checkpoint API through raw `virt-sys` calls (`virt` 0.5 has no
//! wrapper): list with XML, redefine, metadata-only delete.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;

use virt::domain::Domain;

use super::{LibvirtError, LvResult};

/// Frees a checkpoint handle.
struct Handle(virt_sys::virDomainCheckpointPtr);

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a handle libvirt returned, freed once.
            unsafe { virt_sys::virDomainCheckpointFree(self.0) };
        }
    }
}

/// Takes a string libvirt allocated.
fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string libvirt allocated with malloc.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { libc::free(p.cast()) };
    Some(s)
}

fn cstring(uri: &str, dom: &str, what: &str, s: &str) -> LvResult<CString> {
    CString::new(s).map_err(|_| LibvirtError::new(uri, Some(dom), what, "the text holds a NUL byte"))
}

/// Every checkpoint of `d`: (name, XML with its `<domain>`).
pub fn list(uri: &str, name: &str, d: &Domain) -> LvResult<Vec<(String, String)>> {
    with_handles(uri, name, d, |cp_name, h| {
        // SAFETY: a live checkpoint handle; the string is ours to free.
        let xml = take_string(unsafe { virt_sys::virDomainCheckpointGetXMLDesc(h, 0) })
            .ok_or_else(|| LibvirtError::last(uri, Some(name), format!("read checkpoint {cp_name}")))?;
        Ok((cp_name.to_string(), xml))
    })
}

/// The names of `d`'s checkpoints (no document read).
pub fn names(uri: &str, name: &str, d: &Domain) -> LvResult<Vec<String>> {
    with_handles(uri, name, d, |cp_name, _| Ok(cp_name.to_string()))
}

/// `f` on (name, handle) of every checkpoint of `d`.
fn with_handles<T>(
    uri: &str,
    name: &str,
    d: &Domain,
    mut f: impl FnMut(&str, virt_sys::virDomainCheckpointPtr) -> LvResult<T>,
) -> LvResult<Vec<T>> {
    let mut arr: *mut virt_sys::virDomainCheckpointPtr = std::ptr::null_mut();
    // SAFETY: `d` is a live handle; libvirt fills `arr` with `n` handles.
    let n = unsafe { virt_sys::virDomainListAllCheckpoints(d.as_ptr(), &mut arr, 0) };
    if n < 0 {
        return Err(LibvirtError::last(uri, Some(name), "list checkpoints"));
    }
    let handles: Vec<Handle> = (0..n as usize)
        // SAFETY: `arr` holds `n` handles.
        .map(|i| Handle(unsafe { *arr.add(i) }))
        .collect();
    unsafe { libc::free(arr.cast()) };
    let mut out = Vec::new();
    for h in &handles {
        // SAFETY: the name belongs to the handle (not freed by the caller).
        let cp_name = unsafe { virt_sys::virDomainCheckpointGetName(h.0) };
        if cp_name.is_null() {
            return Err(LibvirtError::last(uri, Some(name), "read a checkpoint's name"));
        }
        let cp_name = unsafe { CStr::from_ptr(cp_name) }.to_string_lossy().into_owned();
        out.push(f(&cp_name, h.0)?);
    }
    Ok(out)
}

/// Defines (or replaces) checkpoint metadata from `xml` without touching
/// any bitmap (`REDEFINE`).
pub fn redefine(uri: &str, name: &str, d: &Domain, cp: &str, xml: &str) -> LvResult<()> {
    let what = format!("redefine checkpoint {cp}");
    let c = cstring(uri, name, &what, xml)?;
    // SAFETY: live handle, NUL-terminated document.
    let h = unsafe {
        virt_sys::virDomainCheckpointCreateXML(
            d.as_ptr(),
            c.as_ptr(),
            virt_sys::VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
        )
    };
    if h.is_null() {
        return Err(LibvirtError::last(uri, Some(name), what));
    }
    drop(Handle(h));
    Ok(())
}

/// Checkpoint `cp` of `d` (`None`: libvirt has no such checkpoint).
fn lookup(uri: &str, name: &str, d: &Domain, cp: &str, what: &str) -> LvResult<Option<Handle>> {
    let c = cstring(uri, name, what, cp)?;
    // SAFETY: live handle, NUL-terminated name.
    let h = unsafe { virt_sys::virDomainCheckpointLookupByName(d.as_ptr(), c.as_ptr(), 0) };
    if !h.is_null() {
        return Ok(Some(Handle(h)));
    }
    let e = LibvirtError::last(uri, Some(name), what);
    if e.code as u32 == virt_sys::VIR_ERR_NO_DOMAIN_CHECKPOINT {
        return Ok(None);
    }
    Err(e)
}

/// `virDomainCheckpointDelete` with `flags` on checkpoint `cp`, when
/// libvirt has it.
fn remove(uri: &str, name: &str, d: &Domain, cp: &str, what: &str, flags: u32) -> LvResult<()> {
    let Some(h) = lookup(uri, name, d, cp, what)? else {
        return Ok(());
    };
    // SAFETY: live checkpoint handle.
    if unsafe { virt_sys::virDomainCheckpointDelete(h.0, flags) } < 0 {
        return Err(LibvirtError::last(uri, Some(name), what));
    }
    Ok(())
}

/// Removes checkpoint `cp`'s metadata only (its bitmaps stay: the journal
/// manages them); nothing to do when libvirt has no such checkpoint.
pub fn forget(uri: &str, name: &str, d: &Domain, cp: &str) -> LvResult<()> {
    let what = format!("remove the metadata of checkpoint {cp}");
    remove(
        uri,
        name,
        d,
        cp,
        &what,
        virt_sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY,
    )
}

/// Whether libvirt lists checkpoint `cp` of `d`.
pub fn exists(uri: &str, name: &str, d: &Domain, cp: &str) -> LvResult<bool> {
    Ok(lookup(uri, name, d, cp, &format!("look up checkpoint {cp}"))?.is_some())
}

/// Takes checkpoint `cp` from `xml` (libvirt adds its bitmaps to the
/// running domain's active images in one QEMU transaction).
pub fn create(uri: &str, name: &str, d: &Domain, cp: &str, xml: &str) -> LvResult<()> {
    let what = format!("take checkpoint {cp}");
    let c = cstring(uri, name, &what, xml)?;
    // SAFETY: live handle, NUL-terminated document.
    let h = unsafe { virt_sys::virDomainCheckpointCreateXML(d.as_ptr(), c.as_ptr(), 0) };
    if h.is_null() {
        return Err(LibvirtError::last(uri, Some(name), what));
    }
    drop(Handle(h));
    Ok(())
}

/// Deletes checkpoint `cp` with its bitmaps (a running domain); nothing to
/// do when libvirt has no such checkpoint.
pub fn delete(uri: &str, name: &str, d: &Domain, cp: &str) -> LvResult<()> {
    remove(uri, name, d, cp, &format!("delete checkpoint {cp}"), 0)
}
