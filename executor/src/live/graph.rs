//! QEMU's block graph as snapjournal needs it: which device shows which
//! chain of images, under which node names; and the node names snapjournal
//! gives the images it opens.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::qmp::{Cmd, Qmp, QmpError};

/// FNV-1a, 64 bits: stable across Rust versions and processes, so a node
/// name computed by recovery equals the one computed by the crashed agent.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The format node name snapjournal gives the image at `path` (19
/// characters; QEMU allows 31).
pub fn format_node(path: &str) -> String {
    format!("sjf{:016x}", fnv1a64(path.as_bytes()))
}

/// The protocol (file) node name under [`format_node`].
pub fn file_node(path: &str) -> String {
    format!("sjp{:016x}", fnv1a64(path.as_bytes()))
}

/// One layer of a device's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub node: String,
    pub path: String,
}

/// A guest-visible block device and the chain under it, active layer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The qdev id (`vda` for `/machine/peripheral/vda/virtio-backend`).
    pub id: String,
    pub chain: Vec<Layer>,
}

/// What QEMU's graph holds.
#[derive(Debug, Clone, Default)]
pub struct BlockGraph {
    pub devices: Vec<Device>,
    /// Every named node: node name → (driver, file name).
    pub nodes: BTreeMap<String, (String, String)>,
    /// The dirty bitmaps of each node that has any: node name → bitmaps.
    pub bitmaps: BTreeMap<String, Vec<LiveBitmap>>,
}

/// A dirty bitmap as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveBitmap {
    pub name: String,
    /// Records writes.
    pub recording: bool,
    pub persistent: bool,
    /// Bytes marked dirty.
    pub count: u64,
    /// Loaded from an image a QEMU did not store it back to (it died):
    /// unusable, can only be removed.
    pub inconsistent: bool,
}

fn qdev_id(qdev: &str) -> String {
    qdev.strip_prefix("/machine/peripheral/")
        .map(|r| r.split('/').next().unwrap_or(r))
        .unwrap_or(qdev)
        .to_string()
}

impl BlockGraph {
    /// Reads the graph (`query-block` and `query-named-block-nodes`), once
    /// no block job can change it by itself ([`super::settle`]).
    pub fn read(qmp: &mut Qmp) -> Result<BlockGraph, QmpError> {
        super::settle::wait_settled(qmp)?;
        Self::read_unsettled(qmp)
    }

    /// The devices and their chains by file name only (`query-block`, once
    /// no block job can change the graph by itself): enough to tell
    /// whether a merge is done, without the listing of every node with its
    /// bitmaps. Node names are known for each device's top layer only.
    pub fn read_devices(qmp: &mut Qmp) -> Result<BlockGraph, QmpError> {
        super::settle::wait_settled(qmp)?;
        let block_v = qmp.execute(Cmd::QueryBlock, json!({}))?;
        Ok(Self::from_replies(&json!([]), &block_v))
    }

    /// Reads the graph without waiting for block jobs to settle: the
    /// sequence that crashes QEMU 7.2 while a job finishes. Only for the
    /// regression test that shows it.
    #[doc(hidden)]
    pub fn read_unsettled(qmp: &mut Qmp) -> Result<BlockGraph, QmpError> {
        let nodes_v = qmp.execute(Cmd::QueryNamedBlockNodes, json!({ "flat": true }))?;
        let block_v = qmp.execute(Cmd::QueryBlock, json!({}))?;
        Ok(Self::from_replies(&nodes_v, &block_v))
    }

    /// The graph from the replies of `query-named-block-nodes` (flat) and
    /// `query-block` (also as read through libvirt, for a domain it runs).
    pub fn from_replies(nodes_v: &Value, block_v: &Value) -> BlockGraph {
        let mut nodes = BTreeMap::new();
        let mut bitmaps = BTreeMap::new();
        for n in nodes_v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let name = n.get("node-name").and_then(Value::as_str).unwrap_or_default();
            let drv = n.get("drv").and_then(Value::as_str).unwrap_or_default();
            let file = n.get("file").and_then(Value::as_str).unwrap_or_default();
            if !name.is_empty() {
                nodes.insert(name.to_string(), (drv.to_string(), file.to_string()));
                let list: Vec<LiveBitmap> = n
                    .get("dirty-bitmaps")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|b| {
                        Some(LiveBitmap {
                            name: b.get("name")?.as_str()?.to_string(),
                            recording: b.get("recording").and_then(Value::as_bool).unwrap_or(false),
                            persistent: b.get("persistent").and_then(Value::as_bool).unwrap_or(false),
                            count: b.get("count").and_then(Value::as_u64).unwrap_or(0),
                            inconsistent: b.get("inconsistent").and_then(Value::as_bool).unwrap_or(false),
                        })
                    })
                    .collect();
                if !list.is_empty() {
                    bitmaps.insert(name.to_string(), list);
                }
            }
        }
        // The format node of each file: the node reading it whose driver
        // is a format (not the protocol node, not a job's filter).
        let mut by_file: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, (drv, file)) in &nodes {
            if drv == "qcow2" || drv == "raw" {
                by_file.entry(file.as_str()).or_insert(name.as_str());
            }
        }
        let mut devices = Vec::new();
        for b in block_v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let qdev = b.get("qdev").and_then(Value::as_str).unwrap_or_default();
            let Some(inserted) = b.get("inserted") else {
                continue;
            };
            let root = inserted
                .get("node-name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut chain = Vec::new();
            let mut image = inserted.get("image");
            while let Some(img) = image {
                let path = img.get("filename").and_then(Value::as_str).unwrap_or_default();
                let node = if chain.is_empty() && !root.is_empty() {
                    root.to_string()
                } else {
                    by_file.get(path).map(|s| s.to_string()).unwrap_or_default()
                };
                chain.push(Layer {
                    node,
                    path: path.to_string(),
                });
                image = img.get("backing-image");
            }
            devices.push(Device {
                id: qdev_id(qdev),
                chain,
            });
        }
        BlockGraph {
            devices,
            nodes,
            bitmaps,
        }
    }

    /// The format node reading the image at `path` (snapjournal's name for
    /// it first; a QEMU started by someone else names nodes its own way).
    pub fn format_node_of(&self, path: &str) -> Option<&str> {
        let ours = format_node(path);
        if let Some((k, _)) = self.nodes.get_key_value(&ours) {
            return Some(k.as_str());
        }
        self.nodes
            .iter()
            .find(|(_, (drv, file))| (drv == "qcow2" || drv == "raw") && file == path)
            .map(|(k, _)| k.as_str())
    }

    /// The bitmap `name` of the image at `path`, as QEMU holds it.
    pub fn bitmap(&self, path: &str, name: &str) -> Option<&LiveBitmap> {
        let node = self.format_node_of(path)?;
        self.bitmaps.get(node)?.iter().find(|b| b.name == name)
    }

    /// The device of disk `target`: the one with that qdev id, or else the
    /// one whose active image is `active_path` (a QEMU started by someone
    /// else names its devices its own way).
    pub fn device(&self, target: &str, active_path: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == target).or_else(|| {
            self.devices
                .iter()
                .find(|d| d.chain.first().map(|l| l.path.as_str()) == Some(active_path))
        })
    }

    /// Whether a node called `name` exists.
    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_stable_and_legal() {
        let f = format_node("/var/lib/images/vda.qcow2");
        assert_eq!(f, format_node("/var/lib/images/vda.qcow2"));
        assert_ne!(f, format_node("/var/lib/images/vdb.qcow2"));
        assert!(f.len() <= 31);
        assert!(f.chars().next().is_some_and(|c| c.is_ascii_alphabetic()));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn qdev_ids() {
        assert_eq!(qdev_id("/machine/peripheral/vda/virtio-backend"), "vda");
        assert_eq!(qdev_id("weird"), "weird");
    }
}
