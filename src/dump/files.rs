//! A process's fd table: each fd's number and close-on-exec flag, and the
//! file description it refers to (an object of the tree's table).

use super::objects::ObjectTable;
use crate::image::task::Fd;
use crate::objects::{FdPolicy, FdProbe};
use crate::proc::ProcDir;
use anyhow::{Context, Result};
use std::os::fd::OwnedFd;

/// Every fd of the process, or an error naming the first one ferry cannot
/// restore. `pid` is the process's PID in the tree's namespace.
pub fn collect(
    proc: &ProcDir,
    pid: i32,
    policy: &FdPolicy,
    table: &mut ObjectTable,
    pidfd: Option<&OwnedFd>,
) -> Result<Vec<Fd>> {
    let mut out = Vec::new();
    for fd in proc.fds()? {
        // An fd closed since the listing (a task may still run during the
        // first look; the second, frozen look is exact).
        let path = proc.path(&format!("fd/{fd}"));
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let link = match std::fs::read_link(&path) {
            Ok(l) => l.to_string_lossy().into_owned(),
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("task {pid} fd {fd}: reading its link")),
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("task {pid} fd {fd}: stat {link}")),
        };
        // Read once: the kind's own fields (eventfd-count, tfd: lines...)
        // come from the same text.
        let (info, fdinfo) = match proc.fdinfo(fd) {
            Ok(p) => p,
            Err(_) if !path.exists() => continue,
            Err(e) => return Err(e),
        };
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let probe = FdProbe { pid, proc, fd, link, meta, info, fdinfo, policy, pidfd };
        if let Some(mounts) = &policy.container_mounts {
            super::container::check_fd_inside(&probe, mounts)?;
        }
        let file = table.file(&probe, pidfd)?;
        let posix_locks = super::objects::posix_locks(&probe)?;
        out.push(Fd { fd, cloexec, file, posix_locks });
    }
    Ok(out)
}
