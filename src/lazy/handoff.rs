//! `ferry restore --lazy-pages` hands the restored processes'
//! userfaultfds to `ferry lazy-pages` over a unix socket in the images
//! directory (SCM_RIGHTS), each with its PIDs; the daemon answers once it
//! is connected to the source, so the tree only runs when its pages can
//! come.

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SOCKET: &str = "lazy-pages.sock";

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// One process's userfaultfd and who it is: its PID in the tree's
/// namespace and ferry's.
pub struct Handed {
    pub vpid: i32,
    pub pid: i32,
    pub uffd: OwnedFd,
}

/// Restore side: send every process's fd and PIDs, wait for the daemon's
/// go-ahead. The connection is returned: the daemon starts its background
/// transfers when it closes (the restore drops it when it is done), so
/// they do not share the CPU with the restore's last steps.
pub fn send(dir: &Path, tasks: &[(i32, i32, &OwnedFd)], wait: Duration) -> Result<UnixStream> {
    let path = socket_path(dir);
    let start = Instant::now();
    let mut s = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < wait => {
                let _ = e;
                // The daemon may still be reading its images: look again soon.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => bail!("no lazy-pages daemon at {} ({e}); start `ferry lazy-pages` first", path.display()),
        }
    };
    s.write_all(&(tasks.len() as u32).to_le_bytes()).context("talking to the lazy-pages daemon")?;
    // One message per process: its two PIDs, and its fd alongside.
    for (vpid, pid, uffd) in tasks {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&vpid.to_le_bytes());
        bytes[4..].copy_from_slice(&pid.to_le_bytes());
        let fds = [uffd.as_raw_fd()];
        sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .context("handing a userfaultfd to the lazy-pages daemon")?;
    }
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut answer)
        .context("waiting for the lazy-pages daemon")?;
    match answer.trim_end() {
        "ok" => Ok(s),
        "" => bail!("the lazy-pages daemon went away"),
        other => bail!("the lazy-pages daemon could not serve the tree: {other}"),
    }
}

/// Daemon side: admit the restore's connection; `next()` on the result
/// waits for it and gives every process's fd and the stream to answer on.
/// Connections from other users, or that do not hand over their fds
/// within the admission deadline, are refused and do not delay the
/// restore.
pub fn admit(listener: UnixListener) -> crate::net::admission::Admission<(Vec<Handed>, UnixStream)> {
    crate::net::admission::Admission::start(listener, "lazy-pages handoff", |s| take(s).context("a connection"))
}

fn take(mut s: UnixStream) -> Result<(Vec<Handed>, UnixStream)> {
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the peer's credentials")?;
    if !crate::image::trust::trusted_owner(cred.uid()) {
        bail!("process {} of uid {} may not hand over a tree", cred.pid(), cred.uid());
    }
    let mut n = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut n).context("receiving the number of userfaultfds")?;
    let n = u32::from_le_bytes(n);
    if n == 0 || n > 1 << 16 {
        bail!("the restore announced {n} userfaultfds");
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let mut buf = [0u8; 8];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .context("receiving a userfaultfd")?;
        if msg.bytes != 8 {
            bail!("short message from the restore ({} bytes)", msg.bytes);
        }
        let mut fd = None;
        for c in msg.cmsgs().context("reading control messages")? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel installed these fds in our table.
                fd = v.first().map(|&f| unsafe { OwnedFd::from_raw_fd(f) });
            }
        }
        let uffd = fd.context("the restore sent no userfaultfd")?;
        let vpid = i32::from_le_bytes(buf[..4].try_into().unwrap());
        let pid = i32::from_le_bytes(buf[4..].try_into().unwrap());
        // The daemon kills these PIDs if the pages cannot come: never 0,
        // -1 or a process group, and only with a real userfaultfd.
        if vpid <= 0 || pid <= 1 {
            bail!("the restore handed over PIDs {vpid}/{pid}");
        }
        let what = std::fs::read_link(format!("/proc/self/fd/{}", uffd.as_raw_fd())).unwrap_or_default();
        if what.as_os_str() != "anon_inode:[userfaultfd]" {
            bail!("the restore handed over {}, not a userfaultfd", what.display());
        }
        out.push(Handed { vpid, pid, uffd });
    }
    Ok((out, s))
}

/// One line: "ok", or why not.
pub fn answer(s: &mut UnixStream, text: &str) {
    let _ = s.write_all(format!("{}\n", text.replace('\n', " ")).as_bytes());
}

/// After "ok": a gate that opens when the restore closes the connection
/// (or dies), or after `wait` at the latest.
pub fn until_closed(mut s: UnixStream, wait: Duration) -> crate::lazy::daemon::Gate {
    let gate = crate::lazy::daemon::Gate::closed();
    let opens = gate.clone();
    std::thread::spawn(move || {
        let _ = s.set_read_timeout(Some(wait));
        // The restore sends nothing more: this returns at its close.
        let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
        opens.open();
    });
    gate
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand `fd` over with PIDs `vpid`/`pid`, the way the restore does.
    fn hand(fd: RawFd, vpid: i32, pid: i32) -> String {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a2 = a.try_clone().unwrap();
        a2.write_all(&1u32.to_le_bytes()).unwrap();
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&vpid.to_le_bytes());
        bytes[4..].copy_from_slice(&pid.to_le_bytes());
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&[fd])],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        take(b).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn handoff_takes_only_userfaultfds_and_real_pids() {
        // The daemon kills the handed PIDs when pages cannot come: a peer
        // must not be able to name -1 (everyone) or hand over any fd.
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(hand(null.as_raw_fd(), 5, 1234).contains("not a userfaultfd"));
        assert!(hand(null.as_raw_fd(), 5, -1).contains("PIDs 5/-1"));
        assert!(hand(null.as_raw_fd(), 0, 1234).contains("PIDs 0/1234"));
    }
}
