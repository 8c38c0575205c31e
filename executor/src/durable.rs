//! Making changes survive a power cut, not only a process kill. A power
//! cut keeps a file's data only once it was fsynced, and a name (created,
//! renamed, removed) only once its parent directory was fsynced. Every
//! place that creates, renames or removes a file the journal relies on
//! goes through here, so the rule is written once.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Fsyncs the directory `dir` (its entries become durable).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Fsyncs the directory holding `path`.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Fsyncs the file at `path` (data and metadata).
pub fn fsync_file(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Makes a file that another program wrote (qemu-img) durable under its
/// name: the file, then its directory.
pub fn persist_new_file(path: &Path) -> io::Result<()> {
    fsync_file(path)?;
    if mutation("overlay-dir-fsync") {
        return Ok(());
    }
    fsync_parent(path)
}

/// For the power-cut suite's proof that it bites: with
/// `SNAPJOURNAL_TEST_DROP_FSYNC=<name>` the named fsync is skipped.
fn mutation(name: &str) -> bool {
    std::env::var("SNAPJOURNAL_TEST_DROP_FSYNC").is_ok_and(|v| v == name)
}

/// `create_dir_all`, with every directory it creates made durable in its
/// parent.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        fsync_parent(d)?;
    }
    fsync_dir(dir)
}

/// Removes the file at `path` and makes the removal durable. `Ok(false)`:
/// nothing was there.
pub fn remove_file(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            fsync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` and makes both directory entries durable.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    fsync_parent(to)?;
    if from.parent() != to.parent() {
        fsync_parent(from)?;
    }
    Ok(())
}

/// Fsyncs many files, on several threads when there are many (concurrent
/// fsyncs share the file system's journal commits).
pub fn fsync_files(paths: &[PathBuf]) -> io::Result<()> {
    const PER_THREAD: usize = 64;
    if paths.len() <= PER_THREAD {
        return paths.iter().try_for_each(|p| fsync_file(p));
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(8)
        .min(paths.len().div_ceil(PER_THREAD));
    let chunk = paths.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().try_for_each(|p| fsync_file(p))))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_removes_files() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        let f = deep.join("x");
        fs::write(&f, b"1").unwrap();
        persist_new_file(&f).unwrap();
        assert!(remove_file(&f).unwrap());
        assert!(!remove_file(&f).unwrap());
        let many: Vec<PathBuf> = (0..200)
            .map(|i| {
                let p = deep.join(format!("f{i}"));
                fs::write(&p, b"y").unwrap();
                p
            })
            .collect();
        fsync_files(&many).unwrap();
        rename(&many[0], &t.path().join("moved")).unwrap();
        assert!(t.path().join("moved").exists());
    }
}
