//! The loopback device of the calling thread's network namespace.

use anyhow::{Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn request() -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    req
}

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is ours if it succeeds.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for the loopback device");
    }
    // SAFETY: just created.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn flags(sock: &OwnedFd) -> Result<libc::ifreq> {
    let mut req = request();
    // SAFETY: SIOCGIFFLAGS fills the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS lo");
    }
    Ok(req)
}

/// Whether lo is up.
pub fn is_up() -> Result<bool> {
    let req = flags(&socket()?)?;
    // SAFETY: SIOCGIFFLAGS set the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as i16 != 0)
}

/// Bring lo up.
pub fn set_up() -> Result<()> {
    let sock = socket()?;
    let mut req = flags(&sock)?;
    // SAFETY: the flags member was set by SIOCGIFFLAGS; SIOCSIFFLAGS reads it.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as i16;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS lo up");
        }
    }
    Ok(())
}
