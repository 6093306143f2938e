//! userfaultfd, for a task other than ourselves: ferry creates the fd
//! inside the target by injection, takes it with pidfd_getfd, and drives it
//! from outside (registering, write-protecting, copying pages in, reading
//! events). Addresses are the target's. Debian 12's headers predate
//! WP_ASYNC, so the ABI is spelled out here.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

pub const API: u64 = 0xaa;

pub mod feature {
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    pub const EVENT_FORK: u64 = 1 << 1;
    pub const EVENT_REMAP: u64 = 1 << 2;
    pub const EVENT_REMOVE: u64 = 1 << 3;
    pub const EVENT_UNMAP: u64 = 1 << 6;
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    pub const WP_ASYNC: u64 = 1 << 15;
}

pub const REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const REGISTER_MODE_WP: u64 = 1 << 1;
const COPY_MODE_DONTWAKE: u64 = 1 << 0;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

#[repr(C)]
#[derive(Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

nix::ioctl_readwrite!(ioctl_api, 0xaa, 0x3f, UffdioApi);
nix::ioctl_readwrite!(ioctl_register, 0xaa, 0x00, UffdioRegister);
nix::ioctl_read!(ioctl_wake, 0xaa, 0x02, UffdioRange);
nix::ioctl_readwrite!(ioctl_copy, 0xaa, 0x03, UffdioCopy);
nix::ioctl_readwrite!(ioctl_writeprotect, 0xaa, 0x06, UffdioWriteprotect);
nix::ioctl_readwrite!(ioctl_zeropage, 0xaa, 0x04, UffdioZeropage);

#[repr(C)]
#[derive(Default)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    pub zeropage: i64,
}

/// What reading the fd can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted at `addr` (missing page, or write to a WP page).
    Fault { addr: u64, write: bool },
    /// The task forked; the child's memory is served through `uffd`.
    Fork { uffd: RawFd },
    /// mremap moved `len` bytes from `from` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// madvise(DONTNEED/REMOVE) dropped `[start, end)`.
    Remove { start: u64, end: u64 },
    /// munmap dropped `[start, end)`.
    Unmap { start: u64, end: u64 },
}

const MSG_SIZE: usize = 32;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;

fn word(msg: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(msg[8 + i * 8..16 + i * 8].try_into().unwrap())
}

/// Decode one struct uffd_msg.
pub fn parse_event(msg: &[u8]) -> Option<Event> {
    match msg[0] {
        EVENT_PAGEFAULT => Some(Event::Fault { addr: word(msg, 1), write: word(msg, 0) & PAGEFAULT_FLAG_WRITE != 0 }),
        EVENT_FORK => Some(Event::Fork { uffd: word(msg, 0) as u32 as RawFd }),
        EVENT_REMAP => Some(Event::Remap { from: word(msg, 0), to: word(msg, 1), len: word(msg, 2) }),
        EVENT_REMOVE => Some(Event::Remove { start: word(msg, 0), end: word(msg, 1) }),
        EVENT_UNMAP => Some(Event::Unmap { start: word(msg, 0), end: word(msg, 1) }),
        _ => None,
    }
}

/// A userfaultfd serving another task's memory.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

/// How far a UFFDIO_COPY got.
#[derive(Debug, PartialEq, Eq)]
pub enum Copied {
    /// Everything was copied.
    All,
    /// Copied this many bytes; the next page is already there (faulted in,
    /// or copied before).
    Exists(usize),
    /// The task's memory is gone (it exited).
    Gone,
    /// Copied this many bytes; the next page is in no registered area: its
    /// area was unmapped, or the range runs past the end of one area (a
    /// copy must stay within one).
    NoArea(usize),
    /// Copied this many bytes, then the layout changed under us: read the
    /// pending events, then try the rest again.
    Again(usize),
}

impl Uffd {
    pub fn from_fd(fd: OwnedFd) -> Uffd {
        Uffd { fd }
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// UFFDIO_API: enable `features`; returns what the kernel offers.
    pub fn api(&self, features: u64) -> Result<u64> {
        let mut a = UffdioApi { api: API, features, ioctls: 0 };
        // SAFETY: valid struct for this ioctl on a userfaultfd.
        unsafe { ioctl_api(self.fd.as_raw_fd(), &mut a) }
            .map_err(|e| anyhow::anyhow!("UFFDIO_API (features {features:#x}): {}", e.desc()))?;
        Ok(a.features)
    }

    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<()> {
        let mut r = UffdioRegister { range: UffdioRange { start, len }, mode, ioctls: 0 };
        // SAFETY: valid struct for this ioctl.
        unsafe { ioctl_register(self.fd.as_raw_fd(), &mut r) }
            .map_err(|e| anyhow::anyhow!("UFFDIO_REGISTER {start:#x}+{len:#x}: {}", e.desc()))?;
        Ok(())
    }

    pub fn write_protect(&self, start: u64, len: u64) -> Result<()> {
        let mut w = UffdioWriteprotect { range: UffdioRange { start, len }, mode: WRITEPROTECT_MODE_WP };
        // SAFETY: valid struct for this ioctl.
        unsafe { ioctl_writeprotect(self.fd.as_raw_fd(), &mut w) }
            .map_err(|e| anyhow::anyhow!("UFFDIO_WRITEPROTECT {start:#x}+{len:#x}: {}", e.desc()))?;
        Ok(())
    }

    /// Copy `data` into the task at `dst`, waking faulting threads if `wake`.
    pub fn copy(&self, dst: u64, data: &[u8], wake: bool) -> Result<Copied> {
        let mut c = UffdioCopy {
            dst,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode: if wake { 0 } else { COPY_MODE_DONTWAKE },
            copy: 0,
        };
        // SAFETY: src points into `data`, which outlives the call.
        let r = unsafe { ioctl_copy(self.fd.as_raw_fd(), &mut c) };
        let done = c.copy.max(0) as usize;
        match r {
            Ok(_) => Ok(Copied::All),
            Err(Errno::EEXIST) => Ok(Copied::Exists(done)),
            Err(Errno::ESRCH) => Ok(Copied::Gone),
            Err(Errno::ENOENT) => Ok(Copied::NoArea(done)),
            Err(Errno::EAGAIN) => Ok(Copied::Again(done)),
            Err(e) => bail!("UFFDIO_COPY of {} bytes to {:#x}: {}", data.len() - done, dst + done as u64, e.desc()),
        }
    }

    /// Map the zero page at `start` (an address the image never had data for).
    pub fn zeropage(&self, start: u64, len: u64) -> Result<Copied> {
        let mut z = UffdioZeropage { range: UffdioRange { start, len }, mode: 0, zeropage: 0 };
        // SAFETY: valid struct for this ioctl.
        match unsafe { ioctl_zeropage(self.fd.as_raw_fd(), &mut z) } {
            Ok(_) => Ok(Copied::All),
            Err(Errno::EEXIST) => Ok(Copied::Exists(0)),
            Err(Errno::ESRCH) => Ok(Copied::Gone),
            Err(Errno::ENOENT) => Ok(Copied::NoArea(0)),
            Err(Errno::EAGAIN) => Ok(Copied::Again(0)),
            Err(e) => bail!("UFFDIO_ZEROPAGE at {start:#x}: {}", e.desc()),
        }
    }

    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        let mut r = UffdioRange { start, len };
        // SAFETY: valid struct for this ioctl.
        unsafe { ioctl_wake(self.fd.as_raw_fd(), &mut r) }
            .map_err(|e| anyhow::anyhow!("UFFDIO_WAKE {start:#x}: {}", e.desc()))?;
        Ok(())
    }

    /// Read pending events without blocking (the fd is O_NONBLOCK).
    pub fn read_events(&self) -> Result<Vec<Event>> {
        let mut buf = [0u8; MSG_SIZE * 16];
        match nix::unistd::read(&self.fd, &mut buf) {
            Ok(n) => Ok(buf[..n].chunks_exact(MSG_SIZE).filter_map(parse_event).collect()),
            Err(Errno::EAGAIN) => Ok(Vec::new()),
            Err(e) => Err(e).context("reading userfaultfd events"),
        }
    }
}

/// Create a userfaultfd inside the stopped task (by injection), take it
/// out with pidfd_getfd and close the task's copy: the task never sees it.
pub fn create_in(inj: &mut crate::ptrace::inject::Injector, flags: i32) -> Result<Uffd> {
    use ferry_arch::Syscall;
    let pid = inj.tracee().pid;
    let n = inj.call(Syscall::Userfaultfd, &[flags as u64], || "userfaultfd".into())? as RawFd;
    let taken = crate::pidfd::open(pid).and_then(|p| crate::pidfd::getfd(&p, n));
    inj.call(Syscall::Close, &[n as u64], || format!("closing fd {n}"))?;
    Ok(Uffd::from_fd(taken?))
}

/// userfaultfd(2) flag: handle faults from user mode only. Enough for
/// write-protect tracking, and allowed to tasks without CAP_SYS_PTRACE.
pub const USER_MODE_ONLY: i32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: u8, words: [u64; 3]) -> [u8; MSG_SIZE] {
        let mut m = [0u8; MSG_SIZE];
        m[0] = event;
        for (i, w) in words.iter().enumerate() {
            m[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_ne_bytes());
        }
        m
    }

    #[test]
    fn events_decode() {
        let cases = [
            msg(EVENT_PAGEFAULT, [1, 0x7f00_1000, 0]),
            msg(EVENT_FORK, [9, 0, 0]),
            msg(EVENT_REMAP, [0x1000, 0x9000, 0x2000]),
            msg(EVENT_REMOVE, [0x1000, 0x3000, 0]),
            msg(EVENT_UNMAP, [0x4000, 0x5000, 0]),
            msg(0x77, [0, 0, 0]),
        ];
        let got: Vec<Option<Event>> = cases.iter().map(|m| parse_event(m)).collect();
        insta::assert_debug_snapshot!(got);
    }
}
