//! The in-process qcow2 reader: image headers, backing chains and whether
//! an image's tables read, without a qemu-img process per call (recovery
//! probes every crashed create's overlays; redefine validates thousands of
//! images). `qemu-img info` is the judge in the tests.

use std::path::Path;

use journal::ChainImage;

use crate::error::ImageError;

/// What an image file's header says, read in-process (no qemu-img): for
/// validating many images at once (redefine of thousands of snapshots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `qcow2` or `raw` (anything without the qcow2 magic).
    pub format: String,
    /// The backing file, made absolute against the image's directory.
    pub backing: Option<String>,
    /// The backing file's format, when the header records it.
    pub backing_format: Option<String>,
    pub internal_snapshots: u32,
    /// The virtual size in bytes (a raw file's length).
    pub size: u64,
}

fn header_err(path: &str, message: impl Into<String>) -> ImageError {
    ImageError {
        action: "header read".into(),
        path: path.into(),
        message: message.into(),
    }
}

/// The backing chain of `path` (the image itself first) read from the
/// image headers in-process, with each image's header: what `qemu-img info
/// --backing-chain` says about chains, without a process per call.
pub fn header_chain(path: &str) -> Result<Vec<(ChainImage, Header)>, ImageError> {
    let mut out: Vec<(ChainImage, Header)> = Vec::new();
    let mut at = Some(path.to_string());
    while let Some(p) = at.take() {
        if out.iter().any(|(c, _)| c.path == p) {
            return Err(header_err(path, format!("the backing chain loops at {p}")));
        }
        if out.len() >= 4096 {
            return Err(header_err(path, "the backing chain is longer than 4096 images"));
        }
        let h = read_header(&p)?;
        at = h.backing.clone();
        out.push((
            ChainImage {
                path: p,
                format: h.format.clone(),
            },
            h,
        ));
    }
    Ok(out)
}

/// The bytes of guest data a qcow2 image holds itself: its allocated
/// (and compressed) clusters, not those that read as zero, as `qemu-img
/// map` counts them at depth 0, from the L1 and L2 tables. `None` for what
/// the reader does not handle (extended L2 entries, encryption, an
/// external data file).
pub fn qcow2_data_bytes(path: &str) -> Result<Option<u64>, ImageError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| header_err(path, e.to_string()))?;
    let mut h = [0u8; 104];
    let n = f.read(&mut h).map_err(|e| header_err(path, e.to_string()))?;
    if n < 72 || h[..4] != *b"QFI\xfb" {
        return Ok(None);
    }
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let be64 = |o: usize| (u64::from(be32(o)) << 32) | u64::from(be32(o + 4));
    let version = be32(4);
    let cluster_bits = be32(20);
    let size = be64(24);
    let encrypted = be32(32) != 0;
    let l1_size = be32(36) as u64;
    let l1_offset = be64(40);
    // Incompatible features: external data file (bit 2), extended L2 (4).
    let incompatible = if version >= 3 && n >= 80 { be64(72) } else { 0 };
    if encrypted || incompatible & 0b10100 != 0 || !(9..=21).contains(&cluster_bits) {
        return Ok(None);
    }
    let cluster = 1u64 << cluster_bits;
    let per_l2 = cluster / 8;
    if l1_size > (1 << 26) {
        return Err(header_err(
            path,
            format!("L1 table of {l1_size} entries is implausible"),
        ));
    }
    let mut l1 = vec![0u8; (l1_size * 8) as usize];
    f.seek(SeekFrom::Start(l1_offset))
        .and_then(|_| f.read_exact(&mut l1))
        .map_err(|e| header_err(path, format!("cannot read the L1 table: {e}")))?;
    const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
    let mut l2 = vec![0u8; cluster as usize];
    let mut bytes = 0u64;
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let l2_offset = u64::from_be_bytes(e.try_into().unwrap_or([0; 8])) & OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        f.seek(SeekFrom::Start(l2_offset))
            .and_then(|_| f.read_exact(&mut l2))
            .map_err(|e| header_err(path, format!("cannot read an L2 table: {e}")))?;
        for (j, e) in l2.chunks_exact(8).enumerate() {
            let v = u64::from_be_bytes(e.try_into().unwrap_or([0; 8]));
            let compressed = v & (1 << 62) != 0;
            let data = if compressed {
                v & ((1 << 62) - 1) != 0
            } else {
                v & OFFSET_MASK != 0 && v & 1 == 0
            };
            if data {
                // The last cluster counts only up to the virtual size.
                let start = (i as u64 * per_l2 + j as u64) * cluster;
                bytes += cluster.min(size.saturating_sub(start));
            }
        }
    }
    Ok(Some(bytes))
}

/// Reads the header of the image at `path`.
pub fn read_header(path: &str) -> Result<Header, ImageError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| header_err(path, e.to_string()))?;
    let mut h = [0u8; 112];
    let n = f.read(&mut h).map_err(|e| header_err(path, e.to_string()))?;
    if n < 72 || h[..4] != *b"QFI\xfb" {
        // Formats snapjournal does not manage are named, not taken for raw.
        let other = [
            (&b"QED\0"[..], "qed"),
            (&b"KDMV"[..], "vmdk"),
            (&b"vhdxfile"[..], "vhdx"),
        ]
        .iter()
        .find(|(magic, _)| h[..n].starts_with(magic))
        .map(|(_, f)| *f);
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        return Ok(Header {
            format: other.unwrap_or("raw").into(),
            backing: None,
            backing_format: None,
            internal_snapshots: 0,
            size,
        });
    }
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let be64 = |o: usize| (u64::from(be32(o)) << 32) | u64::from(be32(o + 4));
    let version = be32(4);
    let backing_offset = be64(8);
    let backing_size = be32(16) as usize;
    let internal_snapshots = be32(60);
    let size = be64(24);
    let header_len = if version >= 3 && n >= 104 {
        be32(100) as u64
    } else {
        72
    };
    let mut backing = None;
    if backing_offset != 0 && backing_size > 0 {
        if backing_size > 1023 {
            return Err(header_err(path, "backing file name longer than 1023 bytes"));
        }
        let mut name = vec![0u8; backing_size];
        f.seek(SeekFrom::Start(backing_offset))
            .and_then(|_| f.read_exact(&mut name))
            .map_err(|e| header_err(path, format!("cannot read the backing file name: {e}")))?;
        let name = String::from_utf8(name).map_err(|_| header_err(path, "backing file name is not UTF-8"))?;
        backing = Some(if name.starts_with('/') {
            name
        } else {
            let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
            dir.join(name).to_string_lossy().into_owned()
        });
    }
    // Header extensions: the backing format (0xE2792ACA) among them.
    let mut backing_format = None;
    let mut off = header_len;
    for _ in 0..64 {
        let mut ext = [0u8; 8];
        if f.seek(SeekFrom::Start(off))
            .and_then(|_| f.read_exact(&mut ext))
            .is_err()
        {
            break;
        }
        let kind = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]);
        let len = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]) as u64;
        if kind == 0 {
            break;
        }
        if kind == 0xE279_2ACA && len < 64 {
            let mut v = vec![0u8; len as usize];
            if f.read_exact(&mut v).is_ok() {
                backing_format = String::from_utf8(v).ok();
            }
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    Ok(Header {
        format: "qcow2".into(),
        backing,
        backing_format,
        internal_snapshots,
        size,
    })
}

#[cfg(test)]
mod header_tests {
    use std::process::Command;

    use super::*;
    use crate::images::{MapEntry, QemuImg};

    fn qemu_img(args: &[&str]) {
        let st = Command::new("qemu-img").args(args).status().expect("qemu-img");
        assert!(st.success(), "qemu-img {args:?}");
    }

    #[test]
    fn headers_agree_with_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        qemu_img(&["create", "-q", "-f", "raw", &p("raw.img"), "1M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &p("raw.img"),
            "-F",
            "raw",
            &p("base.qcow2"),
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &p("top.qcow2"),
        ]);
        qemu_img(&["snapshot", "-c", "internal", &p("base.qcow2")]);
        let raw = read_header(&p("raw.img")).unwrap();
        assert_eq!((raw.format.as_str(), raw.backing), ("raw", None));
        let base = read_header(&p("base.qcow2")).unwrap();
        assert_eq!(base.backing.as_deref(), Some(p("raw.img").as_str()));
        assert_eq!(base.backing_format.as_deref(), Some("raw"));
        assert_eq!(base.internal_snapshots, 1);
        let top = read_header(&p("top.qcow2")).unwrap();
        assert_eq!(
            top.backing.as_deref(),
            Some(p("base.qcow2").as_str()),
            "relative names resolve"
        );
        assert_eq!(top.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(top.internal_snapshots, 0);
        let info = QemuImg::default().info(&p("top.qcow2")).unwrap();
        assert_eq!(info.backing_path(), top.backing);
        assert!(read_header(&p("missing")).is_err());
    }

    #[test]
    fn data_bytes_agree_with_qemu_img_map() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let img = QemuImg::default();
        let count_via_map = |path: &str| {
            let out = img
                .run("map", path, &["map", "--output=json", "-f", "qcow2", path])
                .unwrap();
            let entries: Vec<MapEntry> = serde_json::from_slice(&out).unwrap();
            entries
                .iter()
                .filter(|e| e.data && e.depth == 0)
                .map(|e| e.length)
                .sum::<u64>()
        };
        qemu_img(&["create", "-q", "-f", "qcow2", &p("a.qcow2"), "100M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            &p("b.qcow2"),
            "10000000",
        ]);
        for (name, cmds) in [
            (
                "a.qcow2",
                vec!["write 0 64k", "write 1M 300k", "write -z 2M 128k", "write 99M 1k"],
            ),
            (
                "b.qcow2",
                vec!["write 0 5k", "write 9999000 1000", "write -z 4096 4096"],
            ),
        ] {
            assert_eq!(qcow2_data_bytes(&p(name)).unwrap(), Some(0), "{name} empty");
            for c in cmds {
                qemu_io(&p(name), c);
            }
            assert_eq!(
                qcow2_data_bytes(&p(name)).unwrap(),
                Some(count_via_map(&p(name))),
                "{name}"
            );
        }
        // An overlay counts only its own clusters.
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &p("a.qcow2"),
            "-F",
            "qcow2",
            &p("c.qcow2"),
        ]);
        qemu_io(&p("c.qcow2"), "write 5M 64k");
        assert_eq!(qcow2_data_bytes(&p("c.qcow2")).unwrap(), Some(65536));
        // Compressed clusters count too.
        qemu_img(&["convert", "-c", "-O", "qcow2", &p("a.qcow2"), &p("z.qcow2")]);
        assert_eq!(
            qcow2_data_bytes(&p("z.qcow2")).unwrap(),
            Some(count_via_map(&p("z.qcow2")))
        );
        assert_eq!(qcow2_data_bytes(&p("raw")).ok().flatten(), None);
    }

    fn qemu_io(path: &str, cmd: &str) {
        let st = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", cmd, path])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("qemu-io");
        assert!(st.success(), "qemu-io {cmd}");
    }
}
