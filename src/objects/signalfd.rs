//! signalfd: the set of signals it reads (fdinfo's `sigmask`). The signals
//! themselves are the process's pending ones, restored with it.

use super::{new_fd, FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{Context, Result};
use ferry_arch::hex;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

pub struct SignalFd;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// Bit N-1 for signal N.
    #[serde(with = "hex::u64")]
    pub mask: u64,
}

impl FileKind for SignalFd {
    const NAME: &'static str = "signalfd";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.link == "anon_inode:[signalfd]"
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        let mask = fd.fdinfo_field("sigmask")?;
        let mask = u64::from_str_radix(&mask, 16).with_context(|| format!("{}: sigmask {mask:?}", fd.what()))?;
        Ok(State { mask })
    }

    fn open(_: &FileObject, s: &State, _: &OpenContext) -> Result<OwnedFd> {
        // SAFETY: a local sigset_t filled by libc, passed by pointer to
        // signalfd, which only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in 1..=64 {
                if s.mask & (1 << (sig - 1)) != 0 {
                    libc::sigaddset(&mut set, sig);
                }
            }
            new_fd(libc::signalfd(-1, &set, libc::SFD_CLOEXEC), "signalfd")
        }
    }

    fn describe(s: &State) -> String {
        let sigs: Vec<String> = (1..=64).filter(|n| s.mask & (1u64 << (n - 1)) != 0).map(|n| n.to_string()).collect();
        format!("signalfd for signals {}", sigs.join(","))
    }
}
