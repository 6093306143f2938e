//! Descriptors a caller hands to ferry by number (`--inherit-fd`,
//! `--status-fd`, `swrk FD`, RPC `inherit_fd`).

use std::os::fd::RawFd;

/// Whether `fd` is open in ferry.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}
