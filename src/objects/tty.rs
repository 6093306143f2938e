//! Terminals (`--shell-job`): a task that leads its own session gets its
//! terminal reopened by path (and made controlling again); a job of ferry's
//! own shell gets ferry's terminal.

use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

pub struct Tty;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub path: PathBuf,
    pub rdev: u64,
}

/// Terminal devices: /dev/pts/N (136-143), /dev/ttyN (4), /dev/tty and the
/// console (5).
pub fn is_tty_rdev(rdev: u64) -> bool {
    let major = nix::sys::stat::major(rdev);
    (136..=143).contains(&major) || major == 4 || (major == 5 && nix::sys::stat::minor(rdev) != 2)
}

impl FileKind for Tty {
    const NAME: &'static str = "tty";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.meta.file_type().is_char_device() && is_tty_rdev(fd.meta.rdev())
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        if !fd.policy.shell_job {
            bail!(
                "{}: {} is a terminal; dump with --shell-job to take it along \
                 (restore then attaches the task to ferry's terminal)",
                fd.what(),
                fd.link
            );
        }
        Ok(State { path: PathBuf::from(&fd.link), rdev: fd.meta.rdev() })
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        if !ctx.shell_job {
            bail!("the tree was attached to the terminal {}; restore it with --shell-job", s.path.display());
        }
        if ctx.ferry_tty && !ctx.tree_leads_session {
            // A shell job joins ferry's session: give it ferry's terminal.
            use std::os::fd::AsFd;
            return std::io::stdin().as_fd().try_clone_to_owned().context("duplicating ferry's terminal (stdin)");
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | (file.flags as i32 & libc::O_NONBLOCK))
            .open(&s.path)
            .with_context(|| format!("opening terminal {}", s.path.display()))?;
        Ok(f.into())
    }

    fn describe(s: &State) -> String {
        format!("terminal {}", s.path.display())
    }

    fn tty_rdev(s: &State) -> Option<u64> {
        Some(s.rdev)
    }
}
