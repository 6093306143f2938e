//! eventfd: its counter and whether it counts as a semaphore (fdinfo's
//! `eventfd-count` and `eventfd-semaphore`); O_NONBLOCK is a status flag
//! like any other.

use super::{new_fd, FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

pub struct EventFd;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub count: u64,
    pub semaphore: bool,
}

impl FileKind for EventFd {
    const NAME: &'static str = "eventfd";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.link == "anon_inode:[eventfd]"
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        let count = fd.fdinfo_field("eventfd-count")?;
        let count =
            u64::from_str_radix(&count, 16).with_context(|| format!("{}: eventfd-count {count:?}", fd.what()))?;
        let semaphore = fd.fdinfo_field("eventfd-semaphore")? != "0";
        Ok(State { count, semaphore })
    }

    fn open(_: &FileObject, s: &State, _: &OpenContext) -> Result<OwnedFd> {
        let flags = libc::EFD_CLOEXEC | if s.semaphore { libc::EFD_SEMAPHORE } else { 0 };
        // SAFETY: eventfd takes no pointers.
        let fd = new_fd(unsafe { libc::eventfd(0, flags) }, "eventfd")?;
        // The initial value is an int; a counter may be larger.
        if s.count > 0 {
            nix::unistd::write(&fd, &s.count.to_ne_bytes()).context("setting the eventfd counter")?;
        }
        Ok(fd)
    }

    fn describe(s: &State) -> String {
        format!("eventfd, counter {}{}", s.count, if s.semaphore { ", semaphore" } else { "" })
    }
}
