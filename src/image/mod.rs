//! The image directory: versioned, self-describing, checksummed.
//!
//! Layout of one directory:
//!
//! ```text
//! inventory.json      format + version, arch, page size, kernel, and every
//!                     other file with its size and xxh3 checksum (written last)
//! task-PID.json       one task: registers, signals, creds, files, memory areas
//! pagemap-PID.json    extents of dumped pages (address, page count, flags)
//! pages-PID.img       the raw page contents, extents back to back
//! stats.json          freeze time, dump time, bytes written
//! ```
//!
//! Every file is mode 0600. Readers check the inventory's own checksum, its
//! format and version, then each file's size and checksum before parsing.

pub mod inventory;
pub mod pagemap;
pub mod show;
pub mod stats;
pub mod task;

use inventory::{FileEntry, Inventory};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

pub const INVENTORY: &str = "inventory.json";
pub const STATS: &str = "stats.json";

pub fn task_file(pid: i32) -> String {
    format!("task-{pid}.json")
}
pub fn pagemap_file(pid: i32) -> String {
    format!("pagemap-{pid}.json")
}
pub fn pages_file(pid: i32) -> String {
    format!("pages-{pid}.img")
}

/// Everything that can be wrong with an image; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{} is not a ferry image directory: {INVENTORY} is missing", dir.display())]
    NotImageDir { dir: PathBuf },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: not a ferry image (format {found:?}, expected {expected:?})", path.display())]
    WrongFormat { path: PathBuf, found: String, expected: &'static str },
    #[error("{}: image format version {found} is not supported (this ferry reads version {supported})", path.display())]
    Version { path: PathBuf, found: u64, supported: u32 },
    #[error("{}: invalid JSON: {error}", path.display())]
    Json { path: PathBuf, error: serde_json::Error },
    #[error("{}: truncated: {size} bytes, the inventory says {expected}", path.display())]
    Truncated { path: PathBuf, size: u64, expected: u64 },
    #[error("{}: {size} bytes, the inventory says {expected}: the file was modified", path.display())]
    WrongSize { path: PathBuf, size: u64, expected: u64 },
    #[error("{}: checksum mismatch (xxh3 {got}, the inventory says {expected}): the file is damaged", path.display())]
    Checksum { path: PathBuf, expected: String, got: String },
    #[error("{}: missing (listed in {INVENTORY})", path.display())]
    Missing { path: PathBuf },
    #[error("{}: not listed in {INVENTORY}", path.display())]
    Unlisted { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::Missing { path: path.to_path_buf() }
        } else {
            ImageError::Io { path: path.to_path_buf(), error: source }
        }
    }
}

pub fn hash_hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Writes one image directory. Files appear as they are written; the
/// inventory comes last, so a directory without one is an unfinished dump.
/// Dropped without [`ImageWriter::commit`], it removes what it wrote.
pub struct ImageWriter {
    dir: PathBuf,
    entries: Vec<FileEntry>,
    created: Vec<PathBuf>,
    committed: bool,
}

impl ImageWriter {
    pub fn create(dir: &Path) -> Result<ImageWriter> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| ImageError::Io { path: dir.to_path_buf(), error })?;
        // An old inventory must not vouch for the files this dump replaces.
        let inv = dir.join(INVENTORY);
        match std::fs::remove_file(&inv) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(ImageError::Io { path: inv, error }),
        }
        Ok(ImageWriter { dir: dir.to_path_buf(), entries: Vec::new(), created: Vec::new(), committed: false })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open(&mut self, name: &str) -> Result<(PathBuf, File)> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|error| ImageError::Io { path: path.clone(), error })?;
        self.created.push(path.clone());
        Ok((path, file))
    }

    pub fn write_json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).expect("image structs always serialize");
        let mut raw = self.raw(name)?;
        raw.write(&bytes)?;
        raw.finish(self)
    }

    /// A raw file written in pieces; call [`RawImage::finish`] to record it.
    pub fn raw(&mut self, name: &str) -> Result<RawImage> {
        let (path, file) = self.open(name)?;
        Ok(RawImage { name: name.to_string(), path, file, hasher: Xxh3::new(), size: 0 })
    }

    /// Write the inventory: from here on the directory is a complete image.
    pub fn commit(mut self, mut inventory: Inventory) -> Result<()> {
        inventory.files = std::mem::take(&mut self.entries);
        let bytes = inventory.to_bytes_with_checksum();
        let (path, mut file) = self.open(INVENTORY)?;
        file.write_all(&bytes).map_err(|error| ImageError::Io { path: path.clone(), error })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.committed {
            for p in &self.created {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A file of an image being written, checksummed on the way.
pub struct RawImage {
    name: String,
    path: PathBuf,
    file: File,
    hasher: Xxh3,
    size: u64,
}

impl RawImage {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reserve space up front so a full disk fails before any work is done.
    /// Filesystems without fallocate are left to fail on write.
    pub fn reserve(&mut self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match nix::fcntl::fallocate(&self.file, nix::fcntl::FallocateFlags::empty(), 0, len as i64) {
            Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
            Err(e) => Err(ImageError::Io { path: self.path.clone(), error: e.into() }),
        }
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(|error| ImageError::Io { path: self.path.clone(), error })?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    pub fn finish(self, writer: &mut ImageWriter) -> Result<()> {
        // fallocate may have reserved more than was written.
        self.file.set_len(self.size).map_err(|error| ImageError::Io { path: self.path.clone(), error })?;
        writer.entries.push(FileEntry { name: self.name, size: self.size, xxh3: hash_hex(self.hasher.digest()) });
        Ok(())
    }
}

/// A complete image directory, opened for reading.
#[derive(Clone, Debug)]
pub struct ImageDir {
    pub dir: PathBuf,
    pub inventory: Inventory,
}

impl ImageDir {
    pub fn open(dir: &Path) -> Result<ImageDir> {
        let path = dir.join(INVENTORY);
        if !dir.is_dir() {
            return Err(ImageError::Io {
                path: dir.to_path_buf(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotImageDir { dir: dir.to_path_buf() })
            }
            Err(error) => return Err(ImageError::Io { path, error }),
        };
        let inventory = Inventory::from_bytes(&path, &bytes)?;
        Ok(ImageDir { dir: dir.to_path_buf(), inventory })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn entry(&self, name: &str) -> Result<&FileEntry> {
        self.inventory
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ImageError::Unlisted { path: self.path(name) })
    }

    /// Read a whole file, checking size and checksum.
    pub fn read_verified(&self, name: &str) -> Result<Vec<u8>> {
        let entry = self.entry(name)?;
        let path = self.path(name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        check_size(&path, bytes.len() as u64, entry.size)?;
        let got = hash_hex(xxhash_rust::xxh3::xxh3_64(&bytes));
        if got != entry.xxh3 {
            return Err(ImageError::Checksum { path, expected: entry.xxh3.clone(), got });
        }
        Ok(bytes)
    }

    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let bytes = self.read_verified(name)?;
        serde_json::from_slice(&bytes).map_err(|error| ImageError::Json { path: self.path(name), error })
    }

    /// Open a raw file after checking its size; its checksum is checked
    /// by [`ImageDir::verify_raw`], which can run alongside the restore.
    pub fn open_raw(&self, name: &str) -> Result<File> {
        let entry = self.entry(name)?;
        let path = self.path(name);
        let file = File::open(&path).map_err(io(&path))?;
        let size = file.metadata().map_err(io(&path))?.len();
        check_size(&path, size, entry.size)?;
        Ok(file)
    }

    pub fn verify_raw(&self, name: &str) -> Result<()> {
        let entry = self.entry(name)?;
        let path = self.path(name);
        let mut file = File::open(&path).map_err(io(&path))?;
        let mut hasher = Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        check_size(&path, size, entry.size)?;
        let got = hash_hex(hasher.digest());
        if got != entry.xxh3 {
            return Err(ImageError::Checksum { path, expected: entry.xxh3.clone(), got });
        }
        Ok(())
    }
}

fn check_size(path: &Path, size: u64, expected: u64) -> Result<()> {
    if size < expected {
        Err(ImageError::Truncated { path: path.to_path_buf(), size, expected })
    } else if size > expected {
        Err(ImageError::WrongSize { path: path.to_path_buf(), size, expected })
    } else {
        Ok(())
    }
}
