//! Shared anonymous memory (mmap MAP_SHARED|MAP_ANONYMOUS, or of
//! /dev/zero): a shmem file with no name. Processes that share it (fork
//! inheritance) map one object. Restore makes a new one in ferry (a
//! shared anonymous mapping, reopened through /proc/self/map_files) and
//! every process maps that file at its old address, so it is again one
//! object, shown as `/dev/zero (deleted)` as before.

use super::{CreatedMemory, Identified, MemoryKey, MemoryKind, NewMemory, ShmemFile};
use crate::image::objects::MemoryObject;
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;

pub struct SharedAnon;

#[derive(Serialize, Deserialize)]
pub struct State {}

impl MemoryKind for SharedAnon {
    const NAME: &'static str = "shared-anon";
    type State = State;

    fn claims_mapping(m: &Mapping) -> bool {
        m.shared && (m.path.is_empty() || m.path == "/dev/zero (deleted)" || m.path.starts_with("[anon_shmem:"))
    }

    fn identify(proc: &ProcDir, m: &Mapping) -> Result<Identified> {
        let path = proc.path(&format!("map_files/{:x}-{:x}", m.start, m.end));
        let meta = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let key = MemoryKey::Inode { dev: meta.dev(), ino: meta.ino() };
        let size = meta.size();
        Ok((
            key,
            Box::new(move || {
                Ok(NewMemory {
                    kind: Self::NAME,
                    size,
                    state: serde_json::to_value(State {})?,
                    contents: Box::new(ShmemFile::open(path, size)?),
                })
            }),
        ))
    }

    fn create(obj: &MemoryObject, _: &State) -> Result<CreatedMemory> {
        let len = obj.size.max(1).next_multiple_of(crate::page_size());
        // SAFETY: a fresh shared anonymous mapping of ferry's own, opened
        // through map_files and unmapped again; nothing else refers to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!("shared memory object {}: mmap of {len} bytes: {}", obj.id, std::io::Error::last_os_error());
        }
        let start = addr as u64;
        let path = format!("/proc/self/map_files/{:x}-{:x}", start, start + len);
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, len as usize) };
        let file = file.with_context(|| format!("shared memory object {}: opening {path}", obj.id))?;
        Ok(CreatedMemory { fd: Some(file.into()), shmid: None, reused: false })
    }

    fn describe(_: &State) -> String {
        "shared anonymous memory".into()
    }
}
