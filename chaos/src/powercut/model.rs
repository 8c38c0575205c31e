//! The power-cut model: an in-memory file system that keeps, beside what
//! processes see, what a power cut would leave. A file's data survives
//! once it was fsynced (or fdatasynced); a directory's entries — names
//! created, renamed, removed — survive once the directory was fsynced.
//! [`Model::cut`] builds the tree a cut leaves, under a [`Policy`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::SystemTime;

/// The root directory's inode.
pub const ROOT: u64 = 1;
/// The block size torn writes tear at.
pub const TEAR: usize = 4096;

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, u64>),
    Symlink(PathBuf),
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub nlink: u32,
}

/// What a cut keeps of what was not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Nothing unsynced: data as last fsynced, entries as last fsynced.
    DropAll,
    /// Every name as it is now (what ext4's journal often keeps), data as
    /// last fsynced.
    KeepNames,
    /// Each unsynced name change and each unsynced file kept or dropped
    /// at random (seeded).
    Random(u64),
    /// Names as last fsynced; every unsynced file torn at 4 KiB blocks,
    /// each block new or old at random (seeded).
    Torn(u64),
}

impl Policy {
    /// The policy's name in reports.
    pub fn name(self) -> String {
        match self {
            Policy::DropAll => "drop-unsynced".into(),
            Policy::KeepNames => "keep-names".into(),
            Policy::Random(s) => format!("random-{s}"),
            Policy::Torn(s) => format!("torn-4k-{s}"),
        }
    }
}

/// Errors of the model, as errno values.
pub type Errno = i32;

/// The file system: the present tree and its durable shadow.
#[derive(Debug, Clone)]
pub struct Model {
    pub nodes: HashMap<u64, Node>,
    next: u64,
    durable_data: HashMap<u64, Vec<u8>>,
    durable_dirs: HashMap<u64, BTreeMap<OsString, u64>>,
    /// fsync and fsyncdir requests received since the last reset.
    pub syncs: u64,
}

fn node(kind: Kind, perm: u16, uid: u32, gid: u32) -> Node {
    let nlink = if matches!(kind, Kind::Dir(_)) { 2 } else { 1 };
    Node {
        kind,
        perm,
        uid,
        gid,
        mtime: SystemTime::now(),
        nlink,
    }
}

/// A small deterministic generator (splitmix64) for the random policies.
struct Coin(u64);
impl Coin {
    fn flip(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    /// An empty file system whose root is durable.
    pub fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, node(Kind::Dir(BTreeMap::new()), 0o755, 0, 0));
        let mut durable_dirs = HashMap::new();
        durable_dirs.insert(ROOT, BTreeMap::new());
        Model {
            nodes,
            next: ROOT + 1,
            durable_data: HashMap::new(),
            durable_dirs,
            syncs: 0,
        }
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get(&dir).map(|n| &n.kind) {
            Some(Kind::Dir(e)) => Ok(e),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir(e)) => Ok(e),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    /// The inode `name` in `dir` names.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// Creates `name` in `dir` holding `kind`.
    pub fn make(
        &mut self,
        dir: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node(kind, perm, uid, gid));
        self.entries_mut(dir)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    /// Removes `name` from `dir` (a file or symlink; `dir_too`: an empty
    /// directory).
    pub fn remove(&mut self, dir: u64, name: &OsStr, rmdir: bool) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        match (&self.nodes[&ino].kind, rmdir) {
            (Kind::Dir(e), true) if !e.is_empty() => return Err(libc::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(libc::EISDIR),
            (Kind::Dir(_), true) => {}
            (_, true) => return Err(libc::ENOTDIR),
            (_, false) => {}
        }
        self.entries_mut(dir)?.remove(name);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.nlink = n.nlink.saturating_sub(1);
        }
        Ok(())
    }

    /// Renames `dir/name` to `to_dir/to_name`, replacing what is there.
    pub fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        to_dir: u64,
        to_name: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        if let Ok(old) = self.lookup(to_dir, to_name) {
            if noreplace {
                return Err(libc::EEXIST);
            }
            if old == ino {
                return Ok(());
            }
            if let Kind::Dir(e) = &self.nodes[&old].kind {
                if !e.is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
            }
            if let Some(n) = self.nodes.get_mut(&old) {
                n.nlink = n.nlink.saturating_sub(1);
            }
        }
        self.entries(to_dir)?;
        self.entries_mut(dir)?.remove(name);
        self.entries_mut(to_dir)?.insert(to_name.to_os_string(), ino);
        Ok(())
    }

    /// The data of file `ino`.
    pub fn data_mut(&mut self, ino: u64) -> Result<&mut Vec<u8>, Errno> {
        let n = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        n.mtime = SystemTime::now();
        match &mut n.kind {
            Kind::File(d) => Ok(d),
            Kind::Dir(_) => Err(libc::EISDIR),
            Kind::Symlink(_) => Err(libc::EINVAL),
        }
    }

    /// Writes `data` at `offset` of file `ino`.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let d = self.data_mut(ino)?;
        let off = offset as usize;
        if d.len() < off + data.len() {
            d.resize(off + data.len(), 0);
        }
        d[off..off + data.len()].copy_from_slice(data);
        Ok(data.len())
    }

    /// Makes file `ino`'s data, or directory `ino`'s entries, durable.
    pub fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        self.syncs += 1;
        match &self.nodes.get(&ino).ok_or(libc::ENOENT)?.kind {
            Kind::File(d) => {
                self.durable_data.insert(ino, d.clone());
            }
            Kind::Dir(e) => {
                self.durable_dirs.insert(ino, e.clone());
            }
            Kind::Symlink(_) => {}
        }
        Ok(())
    }

    /// Makes everything durable (after a fixture's setup).
    pub fn sync_all(&mut self) {
        for (ino, n) in &self.nodes {
            match &n.kind {
                Kind::File(d) => {
                    self.durable_data.insert(*ino, d.clone());
                }
                Kind::Dir(e) => {
                    self.durable_dirs.insert(*ino, e.clone());
                }
                Kind::Symlink(_) => {}
            }
        }
        self.syncs = 0;
    }

    /// The tree a power cut now leaves under `policy`: every name and
    /// byte that was not made durable is gone (or, for the kinder
    /// policies, partly kept). Everything in the result is durable.
    pub fn cut(&self, policy: Policy) -> Model {
        let mut coin = Coin(match policy {
            Policy::Random(s) | Policy::Torn(s) => s,
            _ => 0,
        });
        let mut out = Model {
            nodes: HashMap::new(),
            next: self.next,
            durable_data: HashMap::new(),
            durable_dirs: HashMap::new(),
            syncs: 0,
        };
        let mut seen = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !seen.insert(ino) {
                continue;
            }
            let Some(n) = self.nodes.get(&ino) else { continue };
            let kind = match &n.kind {
                Kind::Dir(now) => {
                    let old = self.durable_dirs.get(&ino).cloned().unwrap_or_default();
                    let entries = match policy {
                        Policy::DropAll | Policy::Torn(_) => old,
                        Policy::KeepNames => now.clone(),
                        Policy::Random(_) => {
                            let names: BTreeSet<&OsString> = now.keys().chain(old.keys()).collect();
                            let mut e = BTreeMap::new();
                            for name in names {
                                let pick = if now.get(name) == old.get(name) || coin.flip() {
                                    now.get(name)
                                } else {
                                    old.get(name)
                                };
                                if let Some(i) = pick {
                                    e.insert(name.clone(), *i);
                                }
                            }
                            e
                        }
                    };
                    // A name whose node is a directory reached twice (a
                    // rename undone on one side only) is kept once.
                    let entries: BTreeMap<OsString, u64> =
                        entries.into_iter().filter(|(_, i)| !seen.contains(i)).collect();
                    stack.extend(entries.values().copied());
                    Kind::Dir(entries)
                }
                Kind::File(now) => {
                    let old = self.durable_data.get(&ino).cloned().unwrap_or_default();
                    Kind::File(match policy {
                        Policy::DropAll | Policy::KeepNames => old,
                        Policy::Random(_) => {
                            if coin.flip() {
                                now.clone()
                            } else {
                                old
                            }
                        }
                        Policy::Torn(_) => {
                            let len = if coin.flip() { now.len() } else { old.len() };
                            let mut d = vec![0u8; len];
                            for (i, chunk) in d.chunks_mut(TEAR).enumerate() {
                                let from = if coin.flip() { now } else { &old };
                                let at = i * TEAR;
                                for (j, b) in chunk.iter_mut().enumerate() {
                                    *b = from.get(at + j).copied().unwrap_or(0);
                                }
                            }
                            d
                        }
                    })
                }
                Kind::Symlink(t) => Kind::Symlink(t.clone()),
            };
            out.nodes.insert(ino, Node { kind, ..n.clone() });
        }
        // Link counts as the surviving tree has them.
        let mut links: HashMap<u64, u32> = HashMap::new();
        for n in out.nodes.values() {
            if let Kind::Dir(e) = &n.kind {
                for i in e.values() {
                    *links.entry(*i).or_default() += 1;
                }
            }
        }
        for (ino, n) in out.nodes.iter_mut() {
            n.nlink = match n.kind {
                Kind::Dir(_) => 2,
                _ => links.get(ino).copied().unwrap_or(1),
            };
        }
        out.sync_all();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_cut_keeps_only_what_was_synced() {
        let mut m = Model::new();
        let d = m
            .make(ROOT, os("d"), Kind::Dir(BTreeMap::new()), 0o755, 0, 0)
            .unwrap();
        let f = m.make(d, os("f"), Kind::File(vec![]), 0o644, 0, 0).unwrap();
        m.write(f, 0, b"one").unwrap();
        m.sync_all();
        // Data written and fsynced, a name never made durable.
        m.write(f, 0, b"two").unwrap();
        m.fsync(f).unwrap();
        let g = m.make(d, os("g"), Kind::File(vec![]), 0o644, 0, 0).unwrap();
        m.write(g, 0, b"new").unwrap();
        m.fsync(g).unwrap();
        m.write(f, 3, b"!").unwrap();
        let c = m.cut(Policy::DropAll);
        assert_eq!(c.lookup(d, os("f")), Ok(f));
        assert_eq!(
            c.lookup(d, os("g")),
            Err(libc::ENOENT),
            "g's name was never made durable"
        );
        assert_eq!(c.nodes[&f].kind, Kind::File(b"two".to_vec()));
        let k = m.cut(Policy::KeepNames);
        assert_eq!(k.nodes[&g].kind, Kind::File(b"new".to_vec()));
        assert_eq!(k.nodes[&f].kind, Kind::File(b"two".to_vec()));
        // Once the directory is fsynced, g survives.
        m.fsync(d).unwrap();
        assert_eq!(m.cut(Policy::DropAll).lookup(d, os("g")), Ok(g));
    }

    #[test]
    fn removals_and_renames_come_back_unless_synced() {
        let mut m = Model::new();
        let f = m
            .make(ROOT, os("a"), Kind::File(b"x".to_vec()), 0o644, 0, 0)
            .unwrap();
        m.sync_all();
        m.rename(ROOT, os("a"), ROOT, os("b"), false).unwrap();
        let c = m.cut(Policy::DropAll);
        assert_eq!(c.lookup(ROOT, os("a")), Ok(f));
        assert_eq!(c.lookup(ROOT, os("b")), Err(libc::ENOENT));
        m.remove(ROOT, os("b"), false).unwrap();
        assert_eq!(m.cut(Policy::DropAll).lookup(ROOT, os("a")), Ok(f));
        m.fsync(ROOT).unwrap();
        let c = m.cut(Policy::DropAll);
        assert!(c.entries(ROOT).unwrap().is_empty());
        assert_eq!(m.syncs, 1);
    }

    #[test]
    fn torn_and_random_cuts_mix_old_and_new_blocks_reproducibly() {
        let mut m = Model::new();
        let f = m
            .make(ROOT, os("f"), Kind::File(vec![1u8; 4 * TEAR]), 0o644, 0, 0)
            .unwrap();
        m.sync_all();
        m.write(f, 0, &vec![2u8; 4 * TEAR]).unwrap();
        let a = m.cut(Policy::Torn(7));
        assert_eq!(a.nodes[&f].kind, m.cut(Policy::Torn(7)).nodes[&f].kind);
        let mixed = (0..64u64).any(|s| {
            let Kind::File(d) = &m.cut(Policy::Torn(s)).nodes[&f].kind else {
                return false;
            };
            d.len() == 4 * TEAR && d.contains(&1) && d.contains(&2)
        });
        assert!(mixed, "some seed tears the file");
        let kept =
            (0..64u64).any(|s| m.cut(Policy::Random(s)).nodes[&f].kind == Kind::File(vec![2u8; 4 * TEAR]));
        assert!(kept);
    }
}
