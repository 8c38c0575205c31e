//! The image backend: every qemu-img call the product makes.

use std::path::{Path, PathBuf};
use std::process::Command;

use journal::ChainImage;
use serde::Deserialize;

use crate::error::ImageError;

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
        self.format_specific
            .as_ref()
            .and_then(|f| f.get("data"))
            .and_then(|d| d.get("bitmaps"))
            .and_then(|b| b.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
struct MapEntry {
    length: u64,
    depth: u32,
    data: bool,
}

/// Runs qemu-img. The binary is `$SNAPJOURNAL_QEMU_IMG`, or `qemu-img` on
/// the PATH.
#[derive(Debug, Clone)]
pub struct QemuImg {
    bin: PathBuf,
}

impl Default for QemuImg {
    fn default() -> Self {
        QemuImg {
            bin: std::env::var_os("SNAPJOURNAL_QEMU_IMG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-img")),
        }
    }
}

impl QemuImg {
    fn run(&self, action: &str, path: &str, args: &[&str]) -> Result<Vec<u8>, ImageError> {
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
        self.run(
            "create",
            path,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                &backing.format,
                "-b",
                &backing.path,
                path,
            ],
        )?;
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
    /// merge of this layer moves.
    pub fn allocated_bytes(&self, path: &str, format: &str) -> Result<u64, ImageError> {
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

    /// `qemu-img check`: Ok when the image is consistent.
    pub fn check(&self, path: &str) -> Result<(), ImageError> {
        self.run("check", path, &["check", "-U", "-q", path])?;
        Ok(())
    }
}
