//! memfd_create(2) files: the memory object (name, size, seals, data) and
//! the file descriptions that refer to it. A memfd that is only mapped
//! (its fd closed) is a memory object alone.

use super::{
    CreatedMemory, FdProbe, FileKind, Identified, MemoryKey, MemoryKind, NewMemory, OpenContext, Registry, ShmemFile,
};
use crate::image::objects::{FileObject, MemoryObject};
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const F_ADD_SEALS: i32 = 1033;
const F_GET_SEALS: i32 = 1034;
const F_SEAL_SEAL: u32 = 1;
const MFD_ALLOW_SEALING: u32 = 2;
const MFD_EXEC: u32 = 0x10;

pub struct MemfdMemory;
pub struct MemfdFile;

#[derive(Serialize, Deserialize)]
pub struct MemoryState {
    /// The name given to memfd_create (shown as /memfd:NAME).
    pub name: String,
    /// F_GET_SEALS.
    pub seals: u32,
}

#[derive(Serialize, Deserialize)]
pub struct FileState {
    /// The memory object this file description is of.
    pub memory: u32,
    pub pos: u64,
}

/// `/memfd:NAME (deleted)` → NAME.
fn memfd_name(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:").map(|n| n.strip_suffix(" (deleted)").unwrap_or(n))
}

/// The memory object behind a path of /proc that opens the memfd.
fn identify_path(path: PathBuf, name: &str) -> Result<Identified> {
    let meta = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{}: a memfd that is not a regular file (hugetlb?) is not supported yet", path.display());
    }
    let key = MemoryKey::Inode { dev: meta.dev(), ino: meta.ino() };
    let size = meta.size();
    let name = name.to_string();
    Ok((
        key,
        Box::new(move || {
            let src = ShmemFile::open(path, size)?;
            // SAFETY: fcntl on an fd we own.
            let seals = unsafe { libc::fcntl(src.file.as_raw_fd(), F_GET_SEALS) };
            if seals < 0 {
                bail!("F_GET_SEALS on {}: {}", src.path.display(), std::io::Error::last_os_error());
            }
            Ok(NewMemory {
                kind: MemfdMemory::NAME,
                size,
                state: serde_json::to_value(MemoryState { name, seals: seals as u32 })?,
                contents: Box::new(src),
            })
        }),
    ))
}

impl MemoryKind for MemfdMemory {
    const NAME: &'static str = "memfd";
    type State = MemoryState;

    fn claims_mapping(m: &Mapping) -> bool {
        memfd_name(&m.path).is_some()
    }

    fn identify(proc: &ProcDir, m: &Mapping) -> Result<Identified> {
        let name = memfd_name(&m.path).unwrap_or_default().to_string();
        identify_path(proc.path(&format!("map_files/{:x}-{:x}", m.start, m.end)), &name)
    }

    fn create(obj: &MemoryObject, s: &MemoryState) -> Result<CreatedMemory> {
        let name = CString::new(s.name.as_bytes()).context("memfd name with a NUL byte")?;
        // A memfd made without MFD_ALLOW_SEALING shows F_SEAL_SEAL alone;
        // any other set of seals is added back once the tree has mapped it.
        let mut flags = libc::MFD_CLOEXEC;
        if s.seals != F_SEAL_SEAL {
            flags |= MFD_ALLOW_SEALING;
        }
        // SAFETY: memfd_create with a valid C string.
        let mut fd = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags | MFD_EXEC) };
        if fd < 0 {
            // Kernels before 6.3 have no MFD_EXEC.
            // SAFETY: as above.
            fd = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) };
        }
        if fd < 0 {
            bail!("memfd {:?} (object {}): memfd_create: {}", s.name, obj.id, std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        nix::unistd::ftruncate(&fd, obj.size as i64)
            .with_context(|| format!("memfd {:?}: setting its size to {}", s.name, obj.size))?;
        Ok(CreatedMemory { fd: Some(fd), shmid: None, reused: false })
    }

    fn finish(obj: &MemoryObject, s: &MemoryState, created: &CreatedMemory) -> Result<()> {
        let Some(fd) = &created.fd else { return Ok(()) };
        if s.seals == 0 || s.seals == F_SEAL_SEAL {
            return Ok(());
        }
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), F_ADD_SEALS, s.seals) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!("memfd {:?} (object {}): adding seals {:#x}: {err}", s.name, obj.id, s.seals);
        }
        Ok(())
    }

    fn describe(s: &MemoryState) -> String {
        if s.seals != 0 {
            format!("memfd {:?}, seals {:#x}", s.name, s.seals)
        } else {
            format!("memfd {:?}", s.name)
        }
    }
}

/// A new description of memory object `memory`'s fd (a memfd), with
/// `file`'s flags, at `pos`.
pub fn reopen(file: &FileObject, memory: u32, pos: u64, ctx: &OpenContext) -> Result<OwnedFd> {
    let mem = ctx.memory(memory)?;
    let fd = mem.fd.as_ref().with_context(|| format!("memory object {memory} has no fd"))?;
    let flags = super::regular::reopen_flags(file.flags);
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let f = std::fs::OpenOptions::new()
        .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .open(Path::new(&path))
        .with_context(|| format!("reopening memory object {memory}"))?;
    let status = flags & !libc::O_ACCMODE & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT);
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(status)))
        .with_context(|| format!("memory object {memory}: setting flags {status:#o}"))?;
    nix::unistd::lseek(&f, pos as i64, nix::unistd::Whence::SeekSet)
        .with_context(|| format!("memory object {memory}: seeking to {pos}"))?;
    Ok(f.into())
}

impl FileKind for MemfdFile {
    const NAME: &'static str = "memfd";
    type State = FileState;

    fn claims(fd: &FdProbe) -> bool {
        memfd_name(&fd.link).is_some() && fd.meta.file_type().is_file()
    }

    fn dump(fd: &FdProbe, memory: &mut dyn Registry) -> Result<FileState> {
        let name = memfd_name(&fd.link).unwrap_or_default().to_string();
        let (key, make) = identify_path(fd.path(), &name)?;
        let mut make = Some(make);
        let id = memory.memory(key, &mut || (make.take().expect("asked once"))())?;
        Ok(FileState { memory: id, pos: fd.info.pos })
    }

    fn open(file: &FileObject, s: &FileState, ctx: &OpenContext) -> Result<OwnedFd> {
        reopen(file, s.memory, s.pos, ctx)
    }

    fn describe(s: &FileState) -> String {
        format!("memfd (memory object {}) at offset {}", s.memory, s.pos)
    }

    fn needs_memory(s: &FileState) -> Option<u32> {
        Some(s.memory)
    }
}
