//! Regular files: reopened by path at their offset, and checked to be the
//! same file (device and inode) as at dump time.

use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use crate::image::task::FileId;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use tracing::warn;

pub struct Regular;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub file: FileId,
    pub pos: u64,
    /// The file was deleted while open: the memory object holding its
    /// content (see `deleted_file`), reopened at restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u32>,
}

/// Identify a file by what `stat` says of it now.
pub fn file_id(path: &Path, meta: &std::fs::Metadata) -> FileId {
    FileId {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    }
}

/// open(2) flags that make sense when reopening (no creation-time ones).
pub fn reopen_flags(flags: u32) -> i32 {
    (flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC)
}

/// Open a file the task used and check it is still the same one.
pub fn reopen(id: &FileId, flags: i32, what: &str, strict_size: bool) -> Result<File> {
    let f = crate::restore::paths::open(&id.path, flags)
        .with_context(|| format!("{what}: opening {}", id.path.display()))?;
    let meta = f.metadata().with_context(|| format!("{what}: stat {}", id.path.display()))?;
    if meta.dev() == id.dev && meta.ino() != id.ino {
        bail!("{what}: {} was replaced since the dump (inode {} is now {})", id.path.display(), id.ino, meta.ino());
    }
    if meta.size() != id.size {
        if strict_size {
            bail!("{what}: {} changed size since the dump ({} bytes, now {})", id.path.display(), id.size, meta.size());
        }
        warn!("{what}: {} changed size since the dump ({} bytes, now {})", id.path.display(), id.size, meta.size());
    }
    Ok(f)
}

impl FileKind for Regular {
    const NAME: &'static str = "regular";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.meta.file_type().is_file()
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        let deleted = fd.meta.nlink() == 0 || fd.link.ends_with(" (deleted)") && !Path::new(&fd.link).exists();
        if !deleted {
            return Ok(State { file: file_id(Path::new(&fd.link), &fd.meta), pos: fd.info.pos, deleted: None });
        }
        let path = fd.link.trim_end_matches(" (deleted)");
        let (key, make) =
            super::deleted_file::identify_path(fd.path(), path.to_string(), "open").with_context(|| fd.what())?;
        let mut make = Some(make);
        let id = reg.memory(key, &mut || (make.take().expect("asked once"))())?;
        Ok(State { file: file_id(Path::new(path), &fd.meta), pos: fd.info.pos, deleted: Some(id) })
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        let what = format!("file {}", s.file.path.display());
        if let Some(memory) = s.deleted {
            return super::memfd::reopen(file, memory, s.pos, ctx).with_context(|| format!("{what} (deleted)"));
        }
        let f = reopen(&s.file, reopen_flags(file.flags), &what, false)?;
        nix::unistd::lseek(&f, s.pos as i64, nix::unistd::Whence::SeekSet)
            .with_context(|| format!("{what}: seeking to {}", s.pos))?;
        Ok(f.into())
    }

    fn needs_memory(s: &State) -> Option<u32> {
        s.deleted
    }

    fn describe(s: &State) -> String {
        let deleted = match s.deleted {
            Some(id) => format!(" (deleted, kept as memory object {id})"),
            None => String::new(),
        };
        format!("{}{deleted} at offset {}", s.file.path.display(), s.pos)
    }
}
