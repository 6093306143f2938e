//! pidfd_open and pidfd_getfd (Linux 5.6+): a handle on a process, and a
//! way to take a copy of one of its file descriptors.

use anyhow::{Context, Result};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub fn open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pidfd_open({pid})"));
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A copy of the process's fd `target` (needs ptrace access to it).
pub fn getfd(pidfd: &OwnedFd, target: RawFd) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pidfd_getfd(fd {target})"));
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
