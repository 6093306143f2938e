//! `ferry restore --lazy-pages` hands the restored task's userfaultfd to
//! `ferry lazy-pages` over a unix socket in the images directory
//! (SCM_RIGHTS), with the task's PID; the daemon answers once it is
//! connected to the source, so the task only runs when its pages can come.

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

/// Restore side: send the fd and PID, wait for the daemon's go-ahead.
pub fn send(dir: &Path, pid: i32, uffd: &OwnedFd, wait: Duration) -> Result<()> {
    let path = socket_path(dir);
    let start = Instant::now();
    let mut s = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < wait => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => bail!("no lazy-pages daemon at {} ({e}); start `ferry lazy-pages` first", path.display()),
        }
    };
    let pid_bytes = pid.to_le_bytes();
    let fds = [uffd.as_raw_fd()];
    sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&pid_bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("handing the userfaultfd to the lazy-pages daemon")?;
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut answer)
        .context("waiting for the lazy-pages daemon")?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => bail!("the lazy-pages daemon went away"),
        other => bail!("the lazy-pages daemon could not serve the task: {other}"),
    }
}

/// Daemon side: wait for the restore; returns the PID, fd and the stream
/// to answer on.
pub fn receive(listener: &UnixListener) -> Result<(i32, OwnedFd, UnixStream)> {
    let (s, _) = listener.accept().context("waiting for `ferry restore --lazy-pages`")?;
    let mut buf = [0u8; 4];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .context("receiving the userfaultfd")?;
    let mut fd = None;
    for c in msg.cmsgs().context("reading control messages")? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel installed these fds in our table.
            fd = v.first().map(|&f| unsafe { OwnedFd::from_raw_fd(f) });
        }
    }
    let fd = fd.context("the restore sent no userfaultfd")?;
    Ok((i32::from_le_bytes(buf), fd, s))
}

/// One line: "ok", or why not.
pub fn answer(mut s: UnixStream, text: &str) {
    let _ = s.write_all(format!("{}\n", text.replace('\n', " ")).as_bytes());
}
