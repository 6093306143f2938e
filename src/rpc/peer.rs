//! What a request names in the caller's own process: its descriptors,
//! reached through /proc (the caller is found by SO_PEERCRED).

use super::criu::CriuOpts;
use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// The images directory the caller named: its descriptor, opened through
/// /proc (the caller's fd number means nothing here), or a path.
pub fn images_dir(opts: &CriuOpts, peer: i32) -> Result<(PathBuf, Option<OwnedFd>)> {
    if opts.images_dir_fd < 0 {
        let dir = opts.images_dir.as_deref().context("neither images_dir_fd nor images_dir is set")?;
        return Ok((PathBuf::from(dir), None));
    }
    let theirs = format!("/proc/{peer}/fd/{}", opts.images_dir_fd);
    let fd: OwnedFd = std::fs::File::open(&theirs)
        .with_context(|| format!("images_dir_fd {}: opening {theirs}", opts.images_dir_fd))?
        .into();
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .with_context(|| format!("images_dir_fd {}: where it points", opts.images_dir_fd))?;
    if !path.is_dir() {
        bail!("images_dir_fd {} is {}, not a directory", opts.images_dir_fd, path.display());
    }
    // Held open while the dump writes into it.
    Ok((path, Some(fd)))
}
