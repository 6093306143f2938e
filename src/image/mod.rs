//! The image directory: versioned, self-describing, checksummed.
//!
//! Layout of one directory:
//!
//! ```text
//! inventory.json      format + version, arch, page size, kernel, and every
//!                     other file with its size and xxh3 checksum (written last)
//! task-PID.json       one task: registers, signals, creds, files, memory areas
//! pagemap-PID.img     extents of dumped pages (address, page count, flags),
//!                     binary (see [`pagemap`])
//! pages-PID.img       the raw page contents, extents back to back
//! stats.json          freeze time, dump time, bytes written
//! lazy-stats.json     written by lazy-pages: faults, their latency, bytes pushed
//! ```
//!
//! Every file is mode 0600. Readers check the inventory's own checksum, its
//! format and version, then each file's size and checksum before parsing.

pub mod chain;
pub mod container;
pub mod criu_inventory;
pub mod digest;
pub mod inventory;
pub mod objects;
pub mod pagemap;
pub mod show;
pub mod stats;
pub mod task;
pub mod tree;
pub mod trust;

use inventory::{FileEntry, Inventory};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const INVENTORY: &str = "inventory.json";
pub const STATS: &str = "stats.json";
pub const LAZY_STATS: &str = "lazy-stats.json";

pub fn task_file(pid: i32) -> String {
    format!("task-{pid}.json")
}
pub fn pagemap_file(pid: i32) -> String {
    format!("pagemap-{pid}.img")
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

/// The kernel's PID_MAX_LIMIT: no PID or thread ID in an image is larger.
pub const PID_MAX: i32 = 1 << 22;

/// A name an image may give one of its files: no directory part.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

pub fn hash_hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Worker threads for hashing and copying large files: one per core, at most 4.
pub fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4)
}

/// Hash the 4 MiB blocks of `data` on several threads.
pub fn parallel_digest(data: &[u8]) -> u64 {
    let blocks: Vec<&[u8]> = data.chunks(digest::BLOCK).collect();
    let hashes = Mutex::new(vec![0u64; blocks.len()]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers().min(blocks.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = blocks.get(i) else { return };
                let h = digest::block_hash(b);
                hashes.lock().unwrap()[i] = h;
            });
        }
    });
    digest::combine(&hashes.into_inner().unwrap())
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

    fn open(&mut self, name: &str) -> Result<(PathBuf, File)> {
        let path = self.dir.join(name);
        // Read access too: large files are written through a shared mapping.
        let file = OpenOptions::new()
            .read(true)
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

    pub fn write_pagemap(&mut self, pid: i32, pagemap: &pagemap::PagemapImage) -> Result<()> {
        let mut raw = self.raw(&pagemap_file(pid))?;
        raw.write(&pagemap.to_bytes())?;
        raw.finish(self)
    }

    /// A raw file written in pieces; call [`RawImage::finish`] to record it.
    pub fn raw(&mut self, name: &str) -> Result<RawImage> {
        let (path, file) = self.open(name)?;
        Ok(RawImage { name: name.to_string(), path, file, digest: digest::Streaming::default(), filled: None, size: 0 })
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
    digest: digest::Streaming,
    /// Set by [`RawImage::fill_parallel`], which hashes as it goes.
    filled: Option<Vec<u64>>,
    size: u64,
}

impl RawImage {
    fn io_err(&self) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        |error| ImageError::Io { path: self.path.clone(), error }
    }

    /// Reserve space up front so a full disk fails before any work is done.
    /// Returns false where the filesystem cannot reserve (no fallocate).
    pub fn reserve(&mut self, len: u64) -> Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        match nix::fcntl::fallocate(&self.file, nix::fcntl::FallocateFlags::empty(), 0, len as i64) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(self.io_err()(e.into())),
        }
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(self.io_err())?;
        self.digest.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Produce the whole file, `len` bytes, by calling `fill(offset, block)`
    /// for each 4 MiB block from several threads, writing straight into the
    /// mapped file: one copy, hashed while hot. Where space cannot be
    /// reserved (a full disk must not surface as SIGBUS on a mapping), the
    /// blocks are filled one by one into a buffer and written instead.
    pub fn fill_parallel<F>(&mut self, len: u64, fill: F) -> anyhow::Result<()>
    where
        F: Fn(u64, &mut [u8]) -> anyhow::Result<()> + Sync,
    {
        assert_eq!(self.size, 0, "fill_parallel needs an empty file");
        if len == 0 {
            return Ok(());
        }
        if !self.reserve(len)? {
            let mut buf = vec![0u8; digest::BLOCK];
            let mut off = 0;
            while off < len {
                let n = (len - off).min(digest::BLOCK as u64) as usize;
                fill(off, &mut buf[..n])?;
                self.write(&buf[..n])?;
                off += n as u64;
            }
            return Ok(());
        }
        // SAFETY: the file is ours, just created and sized by fallocate; no
        // one else maps or truncates it while the mapping lives.
        let mut map =
            unsafe { memmap2::MmapOptions::new().len(len as usize).map_mut(&self.file) }.map_err(self.io_err())?;
        let blocks: Vec<(usize, &mut [u8])> = map.chunks_mut(digest::BLOCK).enumerate().collect();
        let count = blocks.len();
        let queue = Mutex::new(blocks.into_iter());
        let hashes = Mutex::new(vec![0u64; count]);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..workers().min(count))
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        loop {
                            let Some((i, block)) = queue.lock().unwrap().next() else { return Ok(()) };
                            fill((i * digest::BLOCK) as u64, block)?;
                            let h = digest::block_hash(block);
                            hashes.lock().unwrap()[i] = h;
                        }
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().expect("worker panicked"))
        })?;
        drop(map);
        self.size = len;
        self.filled = Some(hashes.into_inner().unwrap());
        Ok(())
    }

    pub fn finish(self, writer: &mut ImageWriter) -> Result<()> {
        // fallocate may have reserved more than was written.
        self.file.set_len(self.size).map_err(self.io_err())?;
        let blocks = self.filled.unwrap_or_else(|| self.digest.blocks());
        let xxh3 = hash_hex(digest::combine(&blocks));
        let blocks = if blocks.len() > 1 { blocks.into_iter().map(hash_hex).collect() } else { Vec::new() };
        writer.entries.push(FileEntry { name: self.name, size: self.size, xxh3, blocks });
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

    /// The expected hash of each 4 MiB block of a file, if the inventory
    /// lists them (files of more than one block, written by this version);
    /// the list must add up to the file's own checksum.
    pub fn block_hashes(&self, name: &str) -> Result<Option<Vec<u64>>> {
        let entry = self.entry(name)?;
        if entry.blocks.is_empty() {
            return Ok(None);
        }
        let invalid = |reason: String| ImageError::Invalid { path: self.path(INVENTORY), reason };
        let want = entry.size.div_ceil(digest::BLOCK as u64);
        if entry.blocks.len() as u64 != want {
            return Err(invalid(format!(
                "{name}: {} block checksums listed, its {} bytes make {want} blocks",
                entry.blocks.len(),
                entry.size
            )));
        }
        let hashes = entry
            .blocks
            .iter()
            .map(|h| {
                u64::from_str_radix(h, 16).map_err(|_| invalid(format!("{name}: block checksum {h:?} is not hex")))
            })
            .collect::<Result<Vec<u64>>>()?;
        let got = hash_hex(digest::combine(&hashes));
        if got != entry.xxh3 {
            return Err(invalid(format!("{name}: its block checksums add up to {got}, not to {}", entry.xxh3)));
        }
        Ok(Some(hashes))
    }

    /// Read a whole file, checking size and checksum.
    pub fn read_verified(&self, name: &str) -> Result<Vec<u8>> {
        let entry = self.entry(name)?;
        let path = self.path(name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        check_size(&path, bytes.len() as u64, entry.size)?;
        let got = hash_hex(digest::of(&bytes));
        if got != entry.xxh3 {
            return Err(ImageError::Checksum { path, expected: entry.xxh3.clone(), got });
        }
        Ok(bytes)
    }

    /// Process `pid`'s pagemap, checked.
    pub fn read_pagemap(&self, pid: i32) -> Result<pagemap::PagemapImage> {
        let name = pagemap_file(pid);
        let bytes = self.read_verified(&name)?;
        pagemap::PagemapImage::from_bytes(&bytes)
            .map_err(|reason| ImageError::Invalid { path: self.path(&name), reason })
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

    /// Check a raw file's size and checksum, hashing blocks in parallel.
    pub fn verify_raw(&self, name: &str) -> Result<()> {
        self.block_hashes(name)?;
        let entry = self.entry(name)?;
        let path = self.path(name);
        let file = self.open_raw(name)?;
        let got = if entry.size == 0 {
            digest::combine(&[])
        } else {
            // SAFETY: read-only mapping of an image file nobody writes to.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
            parallel_digest(&map)
        };
        let got = hash_hex(got);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of 2 blocks and a byte: three block hashes listed, which add
    /// up to the file's checksum; a list edited in any way is refused.
    #[test]
    fn large_files_list_their_block_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(dir.path()).unwrap();
        let data: Vec<u8> = (0..2 * digest::BLOCK + 1).map(|i| (i % 251) as u8).collect();
        let mut raw = w.raw("pages-1.img").unwrap();
        raw.write(&data).unwrap();
        raw.finish(&mut w).unwrap();
        w.write_json("small.json", &1).unwrap();
        w.commit(inventory::Inventory::new(inventory::ImageKind::Dump, 1, 4096)).unwrap();
        let img = ImageDir::open(dir.path()).unwrap();
        let blocks = img.block_hashes("pages-1.img").unwrap().unwrap();
        let want: Vec<u64> = data.chunks(digest::BLOCK).map(digest::block_hash).collect();
        assert_eq!(blocks, want);
        assert_eq!(img.block_hashes("small.json").unwrap(), None);
        img.verify_raw("pages-1.img").unwrap();

        let edited = |f: &dyn Fn(&mut Vec<String>)| {
            let mut img = img.clone();
            f(&mut img.inventory.files.iter_mut().find(|e| e.name == "pages-1.img").unwrap().blocks);
            img.block_hashes("pages-1.img").unwrap_err().to_string()
        };
        assert!(edited(&|b| b.swap(0, 1)).contains("add up to"));
        assert!(edited(&|b| b.truncate(2)).contains("2 block checksums listed"));
        assert!(edited(&|b| b[0] = "zz".into()).contains("not hex"));
    }
}
