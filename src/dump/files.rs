//! File descriptors: what each one is, and whether ferry can restore it.

use crate::image::task::{Fd, FdKind, FileId};
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Identify a file by what `stat` says of it now.
pub fn file_id(path: &Path, meta: &std::fs::Metadata) -> FileId {
    FileId {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    }
}

/// Terminal devices: /dev/pts/N (136-143), /dev/ttyN (4), /dev/tty and the
/// console (5).
pub fn is_tty_rdev(rdev: u64) -> bool {
    let major = nix::sys::stat::major(rdev);
    (136..=143).contains(&major) || major == 4 || (major == 5 && nix::sys::stat::minor(rdev) != 2)
}

/// Every fd of the task, or an error naming the first one ferry cannot restore.
pub fn collect(proc: &ProcDir, shell_job: bool) -> Result<Vec<Fd>> {
    let pid = proc.pid;
    let mut out = Vec::new();
    for fd in proc.fds()? {
        // An fd closed since the listing (the task still runs during the
        // first look; the second, frozen look is exact).
        let link = match std::fs::read_link(proc.path(&format!("fd/{fd}"))) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("task {pid} fd {fd}: reading its link")),
        };
        let name = link.to_string_lossy().into_owned();
        let unsupported =
            |what: &str| -> anyhow::Error { anyhow::anyhow!("task {pid} fd {fd}: {what} is not supported yet") };
        if let Some(rest) = name.strip_prefix("socket:[") {
            let ino = rest.trim_end_matches(']');
            return Err(unsupported(&format!("{name} ({})", socket_kind(proc, ino))));
        }
        if name.starts_with("pipe:[") {
            return Err(unsupported(&format!("{name} (pipe)")));
        }
        if name.starts_with("anon_inode:") {
            return Err(unsupported(&name));
        }
        let info = match proc.fdinfo(fd) {
            Ok(i) => i,
            Err(_) if !proc.path(&format!("fd/{fd}")).exists() => continue,
            Err(e) => return Err(e),
        };
        let meta = std::fs::metadata(proc.path(&format!("fd/{fd}")))
            .with_context(|| format!("task {pid} fd {fd}: stat {name}"))?;
        if meta.nlink() == 0 || name.ends_with(" (deleted)") && !Path::new(&name).exists() {
            bail!("task {pid} fd {fd}: {name}: open files that were deleted are not supported yet");
        }
        if name.starts_with("/memfd:") {
            return Err(unsupported(&format!("{name} (memfd)")));
        }
        let ft = meta.file_type();
        let path = PathBuf::from(&name);
        let kind = if ft.is_file() {
            FdKind::File { file: file_id(&path, &meta), pos: info.pos }
        } else if ft.is_dir() {
            FdKind::Directory { path, pos: info.pos }
        } else if ft.is_char_device() && is_tty_rdev(meta.rdev()) {
            if !shell_job {
                bail!(
                    "task {pid} fd {fd}: {name} is a terminal; dump with --shell-job to take it along \
                     (restore then attaches the task to ferry's terminal)"
                );
            }
            FdKind::Tty { path, rdev: meta.rdev() }
        } else if ft.is_char_device() {
            if nix::sys::stat::major(meta.rdev()) == 5 && nix::sys::stat::minor(meta.rdev()) == 2 {
                return Err(unsupported(&format!("{name} (pseudo-terminal master)")));
            }
            FdKind::CharDevice { path, rdev: meta.rdev() }
        } else if ft.is_fifo() {
            return Err(unsupported(&format!("{name} (named pipe)")));
        } else if ft.is_socket() {
            return Err(unsupported(&format!("{name} (socket)")));
        } else {
            return Err(unsupported(&format!("{name} (block device)")));
        };
        out.push(Fd {
            fd,
            cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            kind,
        });
    }
    Ok(out)
}

/// Name the protocol of a socket inode for error messages.
fn socket_kind(proc: &ProcDir, ino: &str) -> &'static str {
    // (file under /proc/PID/net, label, column of the inode)
    const TABLES: [(&str, &str, usize); 9] = [
        ("tcp", "TCP", 9),
        ("tcp6", "TCP", 9),
        ("udp", "UDP", 9),
        ("udp6", "UDP", 9),
        ("unix", "unix", 6),
        ("raw", "raw", 9),
        ("raw6", "raw", 9),
        ("netlink", "netlink", 9),
        ("packet", "packet", 8),
    ];
    for (file, label, col) in TABLES {
        if let Ok(text) = proc.read(&format!("net/{file}")) {
            if text.lines().skip(1).any(|l| l.split_whitespace().nth(col) == Some(ino)) {
                return label;
            }
        }
    }
    "socket"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_majors() {
        assert!(is_tty_rdev(nix::sys::stat::makedev(136, 3)));
        assert!(is_tty_rdev(nix::sys::stat::makedev(5, 0)));
        assert!(!is_tty_rdev(nix::sys::stat::makedev(5, 2)), "ptmx is a master, not a terminal");
        assert!(!is_tty_rdev(nix::sys::stat::makedev(1, 3)), "/dev/null");
    }
}
