//! inventory.json: what the directory holds, and how to check it.

use super::{hash_hex, ImageError, Result};
use ferry_arch::Arch;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: &str = "ferry-images";
/// 3: pagemaps are binary (pagemap-PID.img).
pub const VERSION: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// A full checkpoint: the task was frozen for all of it.
    Dump,
    /// Memory only, copied while the task kept running.
    PreDump,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub xxh3: String,
    /// The xxh3 of each 4 MiB block (files of more than one block): a part
    /// of a large file can be checked without reading the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub format: String,
    pub version: u32,
    pub ferry_version: String,
    pub kind: ImageKind,
    pub arch: Arch,
    pub page_size: u64,
    pub kernel: String,
    pub hostname: String,
    pub created_unix: u64,
    pub root_pid: i32,
    pub tasks: Vec<i32>,
    /// Relative path of the previous image in a pre-dump chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// How `files[].xxh3` is computed.
    pub checksum_scheme: String,
    pub files: Vec<FileEntry>,
    /// xxh3 of this document serialized with `checksum: null`.
    #[serde(default)]
    pub checksum: Option<String>,
}

impl Inventory {
    pub fn new(kind: ImageKind, root_pid: i32, page_size: u64) -> Inventory {
        let uts = nix::sys::utsname::uname().ok();
        let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uts.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
        };
        Inventory {
            format: FORMAT.to_string(),
            version: VERSION,
            ferry_version: env!("CARGO_PKG_VERSION").to_string(),
            kind,
            arch: <ferry_arch::Native as ferry_arch::Backend>::ARCH,
            page_size,
            kernel: field(|u| u.release()),
            hostname: field(|u| u.nodename()),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            root_pid,
            tasks: vec![root_pid],
            parent: None,
            checksum_scheme: super::digest::SCHEME.to_string(),
            files: Vec::new(),
            checksum: None,
        }
    }

    fn digest(&self) -> String {
        let mut copy = self.clone();
        copy.checksum = None;
        hash_hex(xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec_pretty(&copy).expect("serializes")))
    }

    pub fn to_bytes_with_checksum(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.checksum = Some(self.digest());
        serde_json::to_vec_pretty(&copy).expect("serializes")
    }

    /// Parse and check an inventory: format, version, then its checksum.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Inventory> {
        let json = |error| ImageError::Json { path: path.to_path_buf(), error };
        // Look at format and version first, so that a newer layout gets a
        // version error rather than a confusing field error.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(ImageError::WrongFormat {
                path: path.to_path_buf(),
                found: format.to_string(),
                expected: FORMAT,
            });
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(VERSION) {
            return Err(ImageError::Version { path: path.to_path_buf(), found: version, supported: VERSION });
        }
        let inv: Inventory = serde_json::from_value(value).map_err(json)?;
        if let Some(f) = inv.files.iter().find(|f| !super::plain_name(&f.name)) {
            return Err(ImageError::Invalid {
                path: path.to_path_buf(),
                reason: format!("lists {:?}, which is not a file of this directory", f.name),
            });
        }
        let want = inv.digest();
        match &inv.checksum {
            Some(c) if *c == want => Ok(inv),
            Some(c) => Err(ImageError::Checksum { path: path.to_path_buf(), expected: c.clone(), got: want }),
            None => Err(ImageError::Invalid { path: path.to_path_buf(), reason: "no checksum".into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inventory {
        let mut inv = Inventory::new(ImageKind::Dump, 4242, 4096);
        inv.kernel = "6.18.0-test".into();
        inv.hostname = "host".into();
        inv.created_unix = 1_790_000_000;
        inv.ferry_version = "0.1.0".into();
        inv.arch = Arch::X86_64;
        inv.files.push(FileEntry {
            name: "task-4242.json".into(),
            size: 10,
            xxh3: "00112233aabbccdd".into(),
            blocks: Vec::new(),
        });
        inv
    }

    #[test]
    fn inventory_snapshot() {
        let bytes = sample().to_bytes_with_checksum();
        insta::assert_snapshot!(String::from_utf8(bytes).unwrap());
    }

    #[test]
    fn round_trip_and_tamper() {
        let p = Path::new("/x/inventory.json");
        let bytes = sample().to_bytes_with_checksum();
        assert_eq!(Inventory::from_bytes(p, &bytes).unwrap().root_pid, 4242);

        let tampered = String::from_utf8(bytes.clone()).unwrap().replace("4242,", "4243,");
        let err = Inventory::from_bytes(p, tampered.as_bytes()).unwrap_err();
        assert!(err.to_string().starts_with("/x/inventory.json: checksum mismatch"), "{err}");

        let newer = String::from_utf8(bytes).unwrap().replace("\"version\": 3", "\"version\": 7");
        let err = Inventory::from_bytes(p, newer.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x/inventory.json: image format version 7 is not supported (this ferry reads version 3)"
        );

        let err = Inventory::from_bytes(p, b"{\"format\": \"criu\"}").unwrap_err();
        assert!(err.to_string().contains("not a ferry image"), "{err}");
        let err = Inventory::from_bytes(p, b"{\"format\": ").unwrap_err();
        assert!(err.to_string().starts_with("/x/inventory.json: invalid JSON"), "{err}");
    }
}
