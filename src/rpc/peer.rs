//! What a request names in the caller's own process: its descriptors,
//! reached through /proc (the caller is found by SO_PEERCRED).

use super::criu::CriuOpts;
use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// The images directory the caller named: its descriptor, opened through
/// /proc (the caller's fd number means nothing here), or a path. The
/// descriptor returned keeps it open while ferry works in it.
pub fn images_dir(opts: &CriuOpts, peer: i32) -> Result<(PathBuf, Option<OwnedFd>)> {
    if opts.images_dir_fd < 0 {
        let dir = opts.images_dir.as_deref().context("neither images_dir_fd nor images_dir is set")?;
        return Ok((PathBuf::from(dir), None));
    }
    let (path, fd) = dir_of(peer, opts.images_dir_fd, "images_dir_fd")?;
    Ok((path, Some(fd)))
}

/// The directory the caller's descriptor `fd` is open on, and our own
/// descriptor of it.
pub fn dir_of(peer: i32, fd: i32, what: &str) -> Result<(PathBuf, OwnedFd)> {
    let theirs = format!("/proc/{peer}/fd/{fd}");
    let ours: OwnedFd = std::fs::File::open(&theirs).with_context(|| format!("{what} {fd}: opening {theirs}"))?.into();
    let path = std::fs::read_link(format!("/proc/self/fd/{}", ours.as_raw_fd()))
        .with_context(|| format!("{what} {fd}: where it points"))?;
    if !path.is_dir() {
        bail!("{what} {fd} is {}, not a directory", path.display());
    }
    Ok((path, ours))
}

/// The caller's descriptor `fd` (a pipe, for status_fd), opened for
/// writing through /proc.
pub fn writable(peer: i32, fd: i32, what: &str) -> Result<OwnedFd> {
    let theirs = format!("/proc/{peer}/fd/{fd}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&theirs)
        .with_context(|| format!("{what} {fd}: opening {theirs}"))?;
    Ok(f.into())
}
