//! CRIU's `inventory.img`, written beside ferry's images: container tools
//! tell a checkpoint by it (runc's tests wait for it before a lazy
//! restore; podman and CRI-O refuse an archive without
//! `checkpoint/inventory.img`). The message is CRIU's inventory_entry
//! (images/inventory.proto, MIT), written from its field numbers; it names
//! ferry as the writer. It is the only CRIU image ferry writes: CRIU
//! itself cannot restore ferry's images, and ferry never reads this file.

use anyhow::{Context, Result};
use prost::Message;
use std::path::Path;

pub const FILE: &str = "inventory.img";

/// CRIU's INVENTORY_MAGIC (the inventory has no common magic before it).
const MAGIC: u32 = 0x5831_3116;
/// CRTOOLS_IMAGES_V1_1.
const IMAGES_VERSION: u32 = 2;

#[derive(Clone, PartialEq, Message)]
struct InventoryEntry {
    #[prost(uint32, required, tag = "1")]
    img_version: u32,
    #[prost(string, optional, tag = "13")]
    dump_criu_run_id: Option<String>,
}

/// The file's bytes: the magic, then one entry (its length, then it), in
/// the host's byte order as CRIU writes them.
fn encode() -> Vec<u8> {
    let entry = InventoryEntry {
        img_version: IMAGES_VERSION,
        dump_criu_run_id: Some(format!("ferry {}", env!("CARGO_PKG_VERSION"))),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(8 + entry.len());
    out.extend_from_slice(&MAGIC.to_ne_bytes());
    out.extend_from_slice(&(entry.len() as u32).to_ne_bytes());
    out.extend_from_slice(&entry);
    out
}

pub fn write(dir: &Path) -> Result<()> {
    let path = dir.join(FILE);
    std::fs::write(&path, encode()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_layout() {
        let b = encode();
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()), 0x5831_3116);
        let len = u32::from_ne_bytes(b[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, b.len() - 8);
        let e = InventoryEntry::decode(&b[8..]).unwrap();
        assert_eq!(e.img_version, 2);
        assert!(e.dump_criu_run_id.unwrap().starts_with("ferry "));
        // Field 1 as a varint, first: what CRIU's decoder requires.
        assert_eq!(&b[8..10], &[0x08, 0x02]);
    }
}
