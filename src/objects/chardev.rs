//! Character devices other than terminals (/dev/null, /dev/urandom...):
//! reopened by path, checked to be the same device.

use super::{tty, FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

pub struct CharDevice;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub path: PathBuf,
    pub rdev: u64,
}

impl FileKind for CharDevice {
    const NAME: &'static str = "char-device";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.meta.file_type().is_char_device() && !tty::is_tty_rdev(fd.meta.rdev())
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        let rdev = fd.meta.rdev();
        if nix::sys::stat::major(rdev) == 5 && nix::sys::stat::minor(rdev) == 2 {
            bail!("{}: {} (pseudo-terminal master) is not supported yet", fd.what(), fd.link);
        }
        Ok(State { path: PathBuf::from(&fd.link), rdev })
    }

    fn open(file: &FileObject, s: &State, _: &OpenContext) -> Result<OwnedFd> {
        let flags = super::regular::reopen_flags(file.flags);
        let f = crate::restore::paths::open(&s.path, flags).with_context(|| format!("opening {}", s.path.display()))?;
        let now = f.metadata()?.rdev();
        if now != s.rdev {
            bail!("{} is a different device now ({:#x}, was {:#x})", s.path.display(), now, s.rdev);
        }
        Ok(f.into())
    }

    fn describe(s: &State) -> String {
        format!("character device {}", s.path.display())
    }
}
