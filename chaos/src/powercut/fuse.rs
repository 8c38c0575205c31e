//! The power-cut model served over FUSE (the `fuser` crate): every request
//! is answered from the in-memory [`Model`], data never touches the page
//! cache (direct I/O, zero attribute and entry lifetimes), and FSYNC and
//! FSYNCDIR are answered here, never with ENOSYS (which would make the
//! kernel stop sending them). A control handle counts syncs, freezes the
//! file system (every later request fails with EIO, as a disk without
//! power would) at the k-th sync or on demand, and cuts.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::model::{Kind, Model, Node, Policy};

const TTL: Duration = Duration::ZERO;

/// What the file system and its controller share.
#[derive(Debug, Default)]
pub struct Shared {
    pub model: Model,
    /// Freeze when the sync with this number (1-based, counted since the
    /// last `sync_all`) arrives; that sync is not applied.
    pub freeze_at: Option<u64>,
    pub frozen: bool,
    /// The command name of the process whose sync froze the file system.
    pub frozen_by: Option<String>,
}

/// The FUSE side.
pub struct PowerCutFs {
    shared: Arc<Mutex<Shared>>,
}

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let (kind, size) = match &n.kind {
        Kind::File(d) => (FileType::RegularFile, d.len() as u64),
        Kind::Dir(e) => (FileType::Directory, e.len() as u64),
        Kind::Symlink(t) => (FileType::Symlink, t.as_os_str().len() as u64),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.mtime,
        mtime: n.mtime,
        ctime: n.mtime,
        crtime: n.mtime,
        kind,
        perm: n.perm,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl PowerCutFs {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model, unless the file system is frozen.
    fn live(&self) -> Result<MutexGuard<'_, Shared>, Errno> {
        let g = self.lock();
        if g.frozen {
            Err(Errno::EIO)
        } else {
            Ok(g)
        }
    }

    fn entry(&self, ino: Result<u64, i32>, reply: ReplyEntry) {
        let g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        match ino.and_then(|i| g.model.nodes.get(&i).map(|n| (i, n)).ok_or(libc::ENOENT)) {
            Ok((i, n)) => reply.entry(&TTL, &attr(i, n), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn sync(&self, ino: INodeNo, pid: u32, reply: ReplyEmpty) {
        let mut g = self.lock();
        if g.frozen {
            return reply.error(Errno::EIO);
        }
        if g.freeze_at == Some(g.model.syncs + 1) {
            g.frozen = true;
            g.frozen_by = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim().to_string());
            return reply.error(Errno::EIO);
        }
        match g.model.fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = self
            .live()
            .map_err(|_| libc::EIO)
            .and_then(|g| g.model.lookup(parent.0, name));
        self.entry(ino, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        match g.model.nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &attr(ino.0, n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        if let Some(s) = size {
            match g.model.data_mut(ino.0) {
                Ok(d) => d.resize(s as usize, 0),
                Err(e) => return reply.error(err(e)),
            }
        }
        let Some(n) = g.model.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(m) = mode {
            n.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(x) = gid {
            n.gid = x;
        }
        if let Some(t) = mtime {
            n.mtime = match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
        }
        reply.attr(&TTL, &attr(ino.0, n));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        match g.model.nodes.get(&ino.0).map(|n| &n.kind) {
            Some(Kind::Symlink(t)) => reply.data(t.as_os_str().as_encoded_bytes()),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let ino = self.live().map_err(|_| libc::EIO).and_then(|mut g| {
            g.model.make(
                parent.0,
                name,
                Kind::File(Vec::new()),
                (mode & !umask & 0o7777) as u16,
                req.uid(),
                req.gid(),
            )
        });
        self.entry(ino, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let ino = self.live().map_err(|_| libc::EIO).and_then(|mut g| {
            g.model.make(
                parent.0,
                name,
                Kind::Dir(Default::default()),
                (mode & !umask & 0o7777) as u16,
                req.uid(),
                req.gid(),
            )
        });
        self.entry(ino, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .live()
            .map_err(|_| libc::EIO)
            .and_then(|mut g| g.model.remove(parent.0, name, false))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .live()
            .map_err(|_| libc::EIO)
            .and_then(|mut g| g.model.remove(parent.0, name, true))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let ino = self.live().map_err(|_| libc::EIO).and_then(|mut g| {
            g.model.make(
                parent.0,
                link_name,
                Kind::Symlink(target.to_path_buf()),
                0o777,
                req.uid(),
                req.gid(),
            )
        });
        self.entry(ino, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .live()
            .map_err(|_| libc::EIO)
            .and_then(|mut g| g.model.rename(parent.0, name, newparent.0, newname, noreplace))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.live() {
            Ok(g) if g.model.nodes.contains_key(&ino.0) => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
            }
            Ok(_) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        match g.model.nodes.get(&ino.0).map(|n| &n.kind) {
            Some(Kind::File(d)) => {
                let from = (offset as usize).min(d.len());
                let to = (from + size as usize).min(d.len());
                reply.data(&d[from..to]);
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self
            .live()
            .map_err(|_| libc::EIO)
            .and_then(|mut g| g.model.write(ino.0, offset, data))
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(ino, req.pid(), reply);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let Some(Kind::Dir(e)) = g.model.nodes.get(&ino.0).map(|n| &n.kind) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut all: Vec<(u64, FileType, &OsStr)> = vec![
            (ino.0, FileType::Directory, OsStr::new(".")),
            (ino.0, FileType::Directory, OsStr::new("..")),
        ];
        for (name, i) in e {
            let kind = match g.model.nodes.get(i).map(|n| &n.kind) {
                Some(Kind::Dir(_)) => FileType::Directory,
                Some(Kind::Symlink(_)) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            all.push((*i, kind, name.as_os_str()));
        }
        for (n, (i, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), (n + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(ino, req.pid(), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let ino = match g.model.lookup(parent.0, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => return reply.error(Errno::EEXIST),
            Ok(i) => {
                if flags & libc::O_TRUNC != 0 {
                    if let Ok(d) = g.model.data_mut(i) {
                        d.clear();
                    }
                }
                i
            }
            Err(_) => match g.model.make(
                parent.0,
                name,
                Kind::File(Vec::new()),
                (mode & !umask & 0o7777) as u16,
                req.uid(),
                req.gid(),
            ) {
                Ok(i) => i,
                Err(e) => return reply.error(err(e)),
            },
        };
        let a = attr(ino, &g.model.nodes[&ino]);
        reply.created(
            &TTL,
            &a,
            Generation(0),
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut g = match self.live() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let d = match g.model.data_mut(ino.0) {
            Ok(d) => d,
            Err(e) => return reply.error(err(e)),
        };
        let end = (offset + length) as usize;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 || mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            let stop = end.min(d.len());
            for b in d.iter_mut().take(stop).skip(offset as usize) {
                *b = 0;
            }
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && d.len() < end {
            d.resize(end, 0);
        }
        reply.ok();
    }
}

/// A mounted power-cut file system and its controls.
pub struct Mounted {
    pub mountpoint: PathBuf,
    pub shared: Arc<Mutex<Shared>>,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    /// Serves `model` at `mountpoint` (an existing empty directory).
    pub fn mount(mountpoint: &Path, model: Model) -> std::io::Result<Mounted> {
        let shared = Arc::new(Mutex::new(Shared {
            model,
            freeze_at: None,
            frozen: false,
            frozen_by: None,
        }));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("sj-powercut".into())];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(
            PowerCutFs {
                shared: shared.clone(),
            },
            mountpoint,
            &config,
        )?;
        Ok(Mounted {
            mountpoint: mountpoint.to_path_buf(),
            shared,
            session: Some(session),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes everything durable and restarts the sync count.
    pub fn sync_all(&self) {
        self.lock().model.sync_all();
    }

    /// Syncs received since the last `sync_all`.
    pub fn syncs(&self) -> u64 {
        self.lock().model.syncs
    }

    /// Freezes at the `k`-th sync from now on.
    pub fn freeze_at(&self, k: u64) {
        let mut g = self.lock();
        let at = g.model.syncs + k;
        g.freeze_at = Some(at);
    }

    /// Whether the file system froze.
    pub fn frozen(&self) -> bool {
        self.lock().frozen
    }

    /// The command name of the process whose sync froze the file system.
    pub fn frozen_by(&self) -> Option<String> {
        self.lock().frozen_by.clone()
    }

    /// Freezes now.
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    /// Unmounts (every process using it must be gone) and returns the tree
    /// a power cut leaves under `policy`.
    pub fn cut(mut self, policy: Policy) -> Model {
        self.freeze();
        let cut = self.lock().model.cut(policy);
        self.detach();
        drop(self.session.take());
        cut
    }

    /// Detaches the mount (`umount -l`): a process that still holds a file
    /// of it keeps getting EIO, and the mount point is free for the cut
    /// tree at once.
    fn detach(&self) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()) {
            // SAFETY: umount2 reads the NUL-terminated path we own.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.detach();
        }
        drop(self.session.take());
    }
}
