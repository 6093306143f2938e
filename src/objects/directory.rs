//! Open directories: reopened by path at their offset.

use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub struct Directory;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub path: PathBuf,
    pub pos: u64,
}

impl FileKind for Directory {
    const NAME: &'static str = "directory";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.meta.file_type().is_dir()
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        Ok(State { path: PathBuf::from(&fd.link), pos: fd.info.pos })
    }

    fn open(_: &FileObject, s: &State, _: &OpenContext) -> Result<OwnedFd> {
        let f = crate::restore::paths::open(&s.path, libc::O_RDONLY | libc::O_DIRECTORY)
            .with_context(|| format!("opening directory {}", s.path.display()))?;
        if s.pos != 0 {
            // A directory offset is a cookie of the filesystem; best effort.
            let _ = nix::unistd::lseek(&f, s.pos as i64, nix::unistd::Whence::SeekSet);
        }
        Ok(f.into())
    }

    fn describe(s: &State) -> String {
        format!("directory {}", s.path.display())
    }
}
