//! A file deleted while still mapped (shared or private: a library an
//! upgrade replaced under a running program) or held open (a POSIX
//! semaphore of Python's multiprocessing: sem_open, then sem_unlink at
//! once; a scratch file unlinked after opening): nobody can open it by
//! name again, so it is memory that the processes holding it share. Dump
//! saves its content (up to `--ghost-limit`, 1 MiB by default as CRIU) as one
//! memory object, whether it is mapped, open, or both; restore makes a
//! memfd of that size and name, which every mapping maps and every open
//! description reopens (so writes through an fd show in the mappings, as
//! before).

use super::{CreatedMemory, Identified, MemoryKey, MemoryKind, NewMemory, ShmemFile};
use crate::image::objects::MemoryObject;
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The most of a deleted file's content an image takes by default
/// (CRIU's `--ghost-limit` default).
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

/// This dump's `--ghost-limit` (one dump per ferry process, set before the
/// tree is looked at; the memory kinds' identify has no options to carry it).
static GHOST_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(DEFAULT_GHOST_LIMIT);

pub fn set_ghost_limit(bytes: u64) {
    GHOST_LIMIT.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

pub struct DeletedFile;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// Its path when it still had one.
    pub path: String,
}

/// The object behind `path` (a /proc link to the deleted file); `name` is
/// its old path, `how` "mapped" or "open" for messages.
pub fn identify_path(path: PathBuf, name: String, how: &str) -> Result<Identified> {
    let meta = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    let size = meta.size();
    let limit = GHOST_LIMIT.load(std::sync::atomic::Ordering::Relaxed);
    if size > limit {
        bail!(
            "{name} was deleted while {how} and holds {size} bytes, over the {limit}-byte limit for deleted files \
             (--ghost-limit)"
        );
    }
    Ok((
        MemoryKey::Inode { dev: meta.dev(), ino: meta.ino() },
        Box::new(move || {
            Ok(NewMemory {
                kind: DeletedFile::NAME,
                size,
                state: serde_json::to_value(State { path: name })?,
                contents: Box::new(ShmemFile::open(path, size)?),
            })
        }),
    ))
}

impl MemoryKind for DeletedFile {
    const NAME: &'static str = "deleted-file";
    type State = State;

    fn claims_mapping(m: &Mapping) -> bool {
        // Private too: a library replaced by an upgrade while the program
        // runs; its pages the task changed are saved as any private
        // page, the rest come from the kept content.
        m.is_deleted()
    }

    fn identify(proc: &ProcDir, m: &Mapping) -> Result<Identified> {
        let path = proc.path(&format!("map_files/{:x}-{:x}", m.start, m.end));
        identify_path(path, m.path.trim_end_matches(" (deleted)").to_string(), "mapped")
    }

    fn create(obj: &MemoryObject, s: &State) -> Result<CreatedMemory> {
        let base = std::path::Path::new(&s.path).file_name().map(|n| n.to_string_lossy().into_owned());
        let name = std::ffi::CString::new(base.unwrap_or_default()).unwrap_or_default();
        // SAFETY: memfd_create with a valid C string.
        let fd = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            bail!("{} (object {}): memfd_create: {}", s.path, obj.id, std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        nix::unistd::ftruncate(&fd, obj.size as i64).with_context(|| format!("{}: size {}", s.path, obj.size))?;
        Ok(CreatedMemory { fd: Some(fd), shmid: None, reused: false })
    }

    fn describe(s: &State) -> String {
        format!("{} (deleted), kept in the image", s.path)
    }
}
