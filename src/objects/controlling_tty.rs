//! `/dev/tty`, a task's name for its controlling terminal (a shell opens
//! it for job control), when that terminal's master is outside the tree
//! (`--orphan-pts-master`, a container's console). Only the task itself
//! can open it (it names the caller's terminal), so the restored process
//! opens it once its terminal is controlling again; ferry's own copy, for
//! what links to it (an epoll), is the terminal itself.

use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

use std::path::{Path, PathBuf};

pub struct ControllingTty;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// As the task saw it (/dev/tty).
    pub path: PathBuf,
    /// The pts it named at the dump: the task's controlling terminal.
    pub index: u32,
}

impl FileKind for ControllingTty {
    const NAME: &'static str = "controlling-tty";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        super::pty_slave::claims_orphan(fd, |rdev| rdev == nix::sys::stat::makedev(5, 0))
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        let stat = crate::proc::stat::Stat::parse(&fd.proc.read("stat")?)?;
        let rdev = u64::from(stat.tty_nr);
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        if !(136..=143).contains(&major) {
            anyhow::bail!(
                "{}: {} names the task's controlling terminal, device {major}:{minor}, not a pseudo-terminal",
                fd.what(),
                fd.link
            );
        }
        let index = ((major - 136) * 256 + minor) as u32;
        Ok(State { path: PathBuf::from(&fd.link), index })
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        super::pty_slave::open_orphan(ctx, Path::new("/dev/pts"), s.index, file.flags)
            .context("ferry's copy of the controlling terminal")
    }

    fn describe(s: &State) -> String {
        format!("{} (the controlling terminal, pts {})", s.path.display(), s.index)
    }

    fn reopen_in_process(s: &State) -> Option<PathBuf> {
        Some(s.path.clone())
    }
}
