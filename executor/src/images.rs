//! The image backend: every qemu-img call the product makes (the
//! in-process qcow2 reader is `qcow2.rs`, the overlay writer
//! `qcow2_create.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use journal::{BitmapAction, ChainImage};
use serde::Deserialize;

use crate::error::ImageError;
use crate::qcow2::{qcow2_data_bytes, read_header};

/// What `qemu-img info` says about one image.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(rename = "full-backing-filename", default)]
    pub full_backing_filename: Option<String>,
    #[serde(rename = "backing-filename-format", default)]
    pub backing_format: Option<String>,
    /// Internal snapshots stored in the image.
    #[serde(default)]
    pub snapshots: Vec<serde_json::Value>,
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<serde_json::Value>,
}

impl ImageInfo {
    /// The absolute path of the backing file, if any.
    pub fn backing_path(&self) -> Option<String> {
        let b = self
            .full_backing_filename
            .clone()
            .or_else(|| self.backing_filename.clone())?;
        if b.starts_with('/') {
            return Some(b);
        }
        let dir = Path::new(&self.filename).parent().unwrap_or(Path::new("/"));
        Some(dir.join(b).to_string_lossy().into_owned())
    }

    /// Names of persistent dirty bitmaps in a qcow2 image.
    pub fn bitmaps(&self) -> Vec<String> {
        self.bitmap_infos().into_iter().map(|b| b.name).collect()
    }

    /// The persistent dirty bitmaps of a qcow2 image, with their flags.
    pub fn bitmap_infos(&self) -> Vec<BitmapInfo> {
        let flag = |b: &serde_json::Value, f: &str| {
            b.get("flags")
                .and_then(|x| x.as_array())
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(f)))
        };
        self.format_specific
            .as_ref()
            .and_then(|f| f.get("data"))
            .and_then(|d| d.get("bitmaps"))
            .and_then(|b| b.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|b| {
                        Some(BitmapInfo {
                            name: b.get("name")?.as_str()?.to_string(),
                            enabled: flag(b, "auto"),
                            in_use: flag(b, "in-use"),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One persistent dirty bitmap stored in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    pub name: String,
    /// Records writes (qemu-img's `auto` flag).
    pub enabled: bool,
    /// Marked in use by a QEMU that has not stored it back: either a QEMU
    /// has the image open now, or one died without saving it, and then the
    /// bitmap is inconsistent and can only be removed.
    pub in_use: bool,
}

/// One extent of `qemu-img map --output=json`.
#[derive(Debug, Deserialize)]
pub(crate) struct MapEntry {
    pub(crate) length: u64,
    pub(crate) depth: u32,
    pub(crate) data: bool,
}

/// Runs qemu-img. The binary is `$SNAPJOURNAL_QEMU_IMG`, or `qemu-img` on
/// the PATH. Overlays are written in-process (`qcow2_create`) unless
/// `$SNAPJOURNAL_QEMU_IMG` names another qemu-img (the chaos suite's
/// failing wrapper must see every call) or `SNAPJOURNAL_OVERLAYS=qemu-img`.
#[derive(Debug, Clone)]
pub struct QemuImg {
    bin: PathBuf,
    in_process: bool,
}

impl Default for QemuImg {
    fn default() -> Self {
        let custom = std::env::var_os("SNAPJOURNAL_QEMU_IMG");
        QemuImg {
            in_process: custom.is_none()
                && std::env::var("SNAPJOURNAL_OVERLAYS").as_deref() != Ok("qemu-img"),
            bin: custom
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-img")),
        }
    }
}

impl QemuImg {
    pub(crate) fn run(&self, action: &str, path: &str, args: &[&str]) -> Result<Vec<u8>, ImageError> {
        let err = |message: String| ImageError {
            action: action.to_string(),
            path: path.to_string(),
            message,
        };
        let out = Command::new(&self.bin)
            .args(args)
            .output()
            .map_err(|e| err(format!("could not run {}: {e}", self.bin.display())))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(err(stderr.trim().to_string()));
        }
        Ok(out.stdout)
    }

    /// Creates a qcow2 overlay at `path` backed by `backing` (same virtual
    /// size).
    pub fn create_overlay(&self, path: &str, backing: &ChainImage) -> Result<(), ImageError> {
        // The size from the backing image's header. Written in-process
        // (no qemu-img process: ~10 ms a disk) when the shape allows;
        // else qemu-img, with the size and `-u` so that it does not open
        // the whole backing chain (~1 ms per layer: 100 ms on a 90-deep
        // chain). The chain was read and checked while planning.
        let size = read_header(&backing.path).ok().map(|h| h.size).filter(|s| *s > 0);
        if let Some(size) = size {
            if self.in_process && crate::qcow2_create::supported(size, &backing.path, &backing.format) {
                return crate::qcow2_create::write_overlay(
                    Path::new(path),
                    size,
                    &backing.path,
                    &backing.format,
                )
                .map_err(|e| ImageError {
                    action: "create".into(),
                    path: path.into(),
                    message: e.to_string(),
                });
            }
        }
        let size_arg = size.map(|s| s.to_string());
        let mut args = vec![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            &backing.format,
            "-b",
            &backing.path,
        ];
        if size_arg.is_some() {
            args.push("-u");
        }
        args.push(path);
        if let Some(s) = &size_arg {
            args.push(s);
        }
        self.run("create", path, &args)?;
        Ok(())
    }

    /// Creates a standalone image (tests and tooling).
    pub fn create(&self, path: &str, format: &str, size: &str) -> Result<(), ImageError> {
        self.run("create", path, &["create", "-q", "-f", format, path, size])?;
        Ok(())
    }

    /// `qemu-img info` of one image (shared lock, so it works while QEMU
    /// holds the image).
    pub fn info(&self, path: &str) -> Result<ImageInfo, ImageError> {
        let out = self.run("info", path, &["info", "-U", "--output=json", path])?;
        serde_json::from_slice(&out).map_err(|e| ImageError {
            action: "info".into(),
            path: path.into(),
            message: format!("unreadable output: {e}"),
        })
    }

    /// The whole backing chain of `path`, the image itself first.
    pub fn chain(&self, path: &str) -> Result<Vec<ChainImage>, ImageError> {
        Ok(self
            .chain_info(path)?
            .into_iter()
            .map(|i| ChainImage {
                path: i.filename,
                format: i.format,
            })
            .collect())
    }

    /// `qemu-img info --backing-chain` of `path`.
    pub fn chain_info(&self, path: &str) -> Result<Vec<ImageInfo>, ImageError> {
        let out = self.run(
            "info --backing-chain",
            path,
            &["info", "-U", "--backing-chain", "--output=json", path],
        )?;
        serde_json::from_slice(&out).map_err(|e| ImageError {
            action: "info --backing-chain".into(),
            path: path.into(),
            message: format!("unreadable output: {e}"),
        })
    }

    /// Merges `top` into `base` (its backing file); `top` is left intact so
    /// the merge can be repeated.
    pub fn commit(&self, top: &str, base: &str) -> Result<(), ImageError> {
        self.run("commit", top, &["commit", "-q", "-d", "-b", base, top])?;
        Ok(())
    }

    /// Points `image` at `backing` (`None`: standalone). `safe` copies the
    /// data that differs; unsafe rewrites the header only.
    pub fn rebase(&self, image: &str, backing: Option<&ChainImage>, safe: bool) -> Result<(), ImageError> {
        let mut args = vec!["rebase", "-q", "-f", "qcow2"];
        if !safe {
            args.push("-u");
        }
        match backing {
            Some(b) => args.extend(["-F", b.format.as_str(), "-b", b.path.as_str()]),
            None => args.extend(["-b", ""]),
        }
        args.push(image);
        self.run("rebase", image, &args)?;
        Ok(())
    }

    /// Bytes allocated in `path` itself (not in its backing files): what a
    /// merge of this layer moves. qcow2 images are read in-process (their
    /// L1 and L2 tables); other formats and qcow2 features the reader does
    /// not handle go through `qemu-img map`.
    pub fn allocated_bytes(&self, path: &str, format: &str) -> Result<u64, ImageError> {
        if format == "qcow2" {
            if let Some(n) = qcow2_data_bytes(path)? {
                return Ok(n);
            }
        }
        let out = self.run("map", path, &["map", "-U", "--output=json", "-f", format, path])?;
        let entries: Vec<MapEntry> = serde_json::from_slice(&out).map_err(|e| ImageError {
            action: "map".into(),
            path: path.into(),
            message: format!("unreadable output: {e}"),
        })?;
        Ok(entries
            .iter()
            .filter(|e| e.data && e.depth == 0)
            .map(|e| e.length)
            .sum())
    }

    /// The persistent dirty bitmaps of `path`.
    pub fn bitmaps(&self, path: &str) -> Result<Vec<BitmapInfo>, ImageError> {
        Ok(self.info(path)?.bitmap_infos())
    }

    /// Changes one persistent dirty bitmap of `path` (`qemu-img bitmap`).
    pub fn bitmap(&self, path: &str, action: &BitmapAction) -> Result<(), ImageError> {
        let mut args = vec!["bitmap", "-f", "qcow2"];
        let name = match action {
            BitmapAction::Add { name, enabled } => {
                args.push("--add");
                if !enabled {
                    args.push("--disable");
                }
                name
            }
            BitmapAction::Enable { name } => {
                args.push("--enable");
                name
            }
            BitmapAction::Disable { name } => {
                args.push("--disable");
                name
            }
            BitmapAction::Merge { source, target } => {
                args.extend(["--merge", source.as_str()]);
                target
            }
            BitmapAction::Remove { name } => {
                args.push("--remove");
                name
            }
            BitmapAction::MergeFrom {
                source_image,
                source,
                target,
            } => {
                args.extend([
                    "--merge",
                    source.as_str(),
                    "-b",
                    source_image.as_str(),
                    "-F",
                    "qcow2",
                ]);
                target
            }
        };
        args.extend([path, name.as_str()]);
        self.run("bitmap", path, &args)?;
        Ok(())
    }

    /// `qemu-img check`: Ok when the image is consistent.
    pub fn check(&self, path: &str) -> Result<(), ImageError> {
        self.run("check", path, &["check", "-U", "-q", path])?;
        Ok(())
    }
}
