//! Unix sockets connected to each other inside the tree (socketpairs, of
//! any type), and those whose peer is closed: type, the bytes or messages
//! waiting in each end (message boundaries kept), shutdown state, buffer
//! sizes, SO_PASSCRED and SO_PEEK_OFF. The queues are read with MSG_PEEK at
//! a moving SO_PEEK_OFF, so nothing is taken from them; the peek offset is
//! put back afterwards.
//!
//! Restore makes a socketpair once (for the first end met) and hands the
//! second end to its own description; once every description is open the
//! end with the lower inode sends each end's messages into it from the
//! other, then both ends' shutdowns and peek offsets are set. An end whose
//! peer is closed gets a pair whose other end is closed once its messages
//! are in.
//!
//! Not yet (refused by name): bound or listening sockets, a peer outside
//! the tree (`--ext-unix-sk`), file descriptors in flight (SCM_RIGHTS).

use super::{FdProbe, FileKind, OpenContext, OpenFiles, Registry};
use crate::image::objects::FileObject;
use crate::proc::unix_diag;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

pub struct UnixSocket;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub ino: u64,
    /// The peer's inode; 0 when the peer is closed.
    pub peer: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub kind: i32,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// Messages waiting to be read (their bytes are in the image; a
    /// stream's are pieces of no meaning).
    pub queued: u32,
    #[serde(default)]
    pub queued_bytes: u64,
    pub sndbuf: i32,
    pub rcvbuf: i32,
    pub passcred: bool,
    pub peek_off: i32,
    /// A listening socket: the name it is bound to (a path, or "@name"
    /// for an abstract one) and its backlog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening: Option<Listening>,
}

#[derive(Serialize, Deserialize)]
pub struct Listening {
    pub name: String,
    pub backlog: u32,
}

fn getsockopt(fd: RawFd, opt: i32) -> Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized option into a local.
    if unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) } != 0 {
        bail!("getsockopt({opt}): {}", std::io::Error::last_os_error());
    }
    Ok(v)
}

fn setsockopt(fd: RawFd, opt: i32, v: i32) -> Result<()> {
    // SAFETY: an int-sized option from a local.
    let r = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const libc::c_int).cast(), std::mem::size_of_val(&v) as u32)
    };
    if r != 0 {
        bail!("setsockopt({opt}, {v}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unix",
    }
}

/// Everything waiting in `sock`'s receive queue, one entry per message
/// (one per peek for a stream), left in place.
/// An empty read ends a stream; for the other types it is an empty
/// message, unless the socket's reading side is shut (`eof_on_empty`):
/// then the queue has ended (an empty message last in such a queue is
/// taken for its end).
fn peek_all(sock: RawFd, eof_on_empty: bool, what: &str) -> Result<Vec<Vec<u8>>> {
    let old = getsockopt(sock, libc::SO_PEEK_OFF)?;
    setsockopt(sock, libc::SO_PEEK_OFF, 0)?;
    let r = peek_from_zero(sock, eof_on_empty, what);
    setsockopt(sock, libc::SO_PEEK_OFF, old)?;
    r
}

fn peek_from_zero(sock: RawFd, eof_on_empty: bool, what: &str) -> Result<Vec<Vec<u8>>> {
    const MAX: usize = 1 << 20;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut control = [0u64; 64];
    while out.len() < MAX {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: a msghdr over our own buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg into the buffers above.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(out);
            }
            bail!("{what}: reading what is queued: {e}");
        }
        if refuse_fds(&msg) {
            bail!("{what}: file descriptors in flight (SCM_RIGHTS) are not supported yet");
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            bail!("{what}: a queued message is larger than {} bytes", buf.len());
        }
        if n == 0 && eof_on_empty {
            return Ok(out);
        }
        out.push(buf[..n as usize].to_vec());
    }
    bail!("{what}: more than {MAX} messages queued")
}

/// Close any fds a peek installed; true if there were some.
fn refuse_fds(msg: &libc::msghdr) -> bool {
    let mut found = false;
    // SAFETY: walking the control buffer the kernel filled, with libc's
    // CMSG macros; fds in it are ours to close.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                found = true;
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    libc::close(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    found
}

/// Messages as one blob: each as a u32 length and its bytes.
fn frame(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend_from_slice(&(m.len() as u32).to_le_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn unframe(mut blob: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !blob.is_empty() {
        let len = blob.get(..4).context("a truncated message length")?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        out.push(blob.get(4..4 + len).context("a truncated message")?);
        blob = &blob[4 + len..];
    }
    Ok(out)
}

impl FileKind for UnixSocket {
    const NAME: &'static str = "unix-socket";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        let Some(ino) = fd.link.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) else { return false };
        // /proc/PID/net/unix: the inode is the 7th column.
        fd.proc.read("net/unix").is_ok_and(|t| t.lines().skip(1).any(|l| l.split_whitespace().nth(6) == Some(ino)))
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        let ino = fd.meta.ino();
        let all = unix_diag::all().with_context(|| fd.what())?;
        let s = all.get(&ino).with_context(|| format!("{}: sock_diag does not know socket {ino}", fd.what()))?;
        let what = format!("{}: unix {} socket", fd.what(), kind_name(s.kind));
        if s.state == 10 {
            return dump_listener(fd, s, &what);
        }
        if let Some(name) = &s.name {
            bail!("{what} bound to {name}: bound unix sockets are not supported yet");
        }
        let peer = match s.peer {
            Some(p) => p,
            None if s.kind == libc::SOCK_DGRAM => bail!("{what}: unconnected datagram sockets are not supported yet"),
            None => bail!("{what}: unconnected unix sockets are not supported yet"),
        };
        if peer != 0 {
            if let Some(holder) = super::held_outside(&format!("socket:[{peer}]"), reg) {
                bail!("{what}: its peer (socket:[{peer}]) is held by process {holder} outside the tree (--ext-unix-sk is not supported yet)");
            }
        }
        let copy = fd.copy()?;
        let mut state = socket_state(s, peer, None, copy.as_ref())?;
        // The first look (the tree still running) reads no queue.
        if let Some(copy) = copy {
            let sock = copy.as_raw_fd();
            let eof_on_empty = s.kind == libc::SOCK_STREAM || s.shutdown & 1 != 0;
            let messages = peek_all(sock, eof_on_empty, &what)?;
            state.queued = messages.len() as u32;
            state.queued_bytes = messages.iter().map(|m| m.len() as u64).sum();
            reg.data(frame(&messages));
        }
        Ok(state)
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        if let Some(l) = &s.listening {
            return listen_again(s, l);
        }
        let kept = ctx.kept.borrow_mut().remove(&("unix", s.ino));
        let mine = match kept {
            Some(mut v) => v.pop().context("a kept socket end")?,
            None => {
                let (mine, other) = socketpair(s.kind)?;
                if s.peer != 0 {
                    ctx.kept.borrow_mut().insert(("unix", s.peer), vec![other]);
                } else {
                    // The peer is closed: put the messages in, close it.
                    let data = ctx.data(file)?;
                    send_all(other.as_raw_fd(), &unframe(&data)?, s)?;
                    drop(other);
                }
                mine
            }
        };
        let sock = mine.as_raw_fd();
        // The kernel doubles what is set, and reports the doubled value.
        setsockopt(sock, libc::SO_SNDBUF, s.sndbuf / 2)?;
        setsockopt(sock, libc::SO_RCVBUF, s.rcvbuf / 2)?;
        setsockopt(sock, libc::SO_PASSCRED, i32::from(s.passcred))?;
        if s.peer == 0 {
            finish(sock, s)?;
        }
        Ok(mine)
    }

    fn link(file: &FileObject, s: &State, fd: &OwnedFd, files: &OpenFiles) -> Result<()> {
        // The end with the lower inode fills both (the peer's data must be
        // in before either end's shutdown).
        if s.listening.is_some() || s.peer == 0 || s.peer < s.ino {
            return Ok(());
        }
        let peer_obj = files
            .objects
            .iter()
            .find(|f| f.kind == Self::NAME && f.state.get("ino").and_then(|v| v.as_u64()) == Some(s.peer))
            .with_context(|| format!("its peer socket:[{}] is not in the image", s.peer))?;
        let peer_state: State = serde_json::from_value(peer_obj.state.clone()).context("the peer's state")?;
        let peer_fd = files.files.get(&peer_obj.id).context("the peer was not opened")?;
        let data = |f: &FileObject| -> Result<Vec<u8>> {
            if f.data.is_empty() {
                Ok(Vec::new())
            } else {
                Ok(files.images.read_verified(&f.data)?)
            }
        };
        let mine_data = data(file)?;
        let peer_data = data(peer_obj)?;
        send_all(peer_fd.as_raw_fd(), &unframe(&mine_data)?, s)?;
        send_all(fd.as_raw_fd(), &unframe(&peer_data)?, &peer_state)?;
        finish(fd.as_raw_fd(), s)?;
        finish(peer_fd.as_raw_fd(), &peer_state)
    }

    fn describe(s: &State) -> String {
        if let Some(l) = &s.listening {
            return format!(
                "unix {} socket:[{}] listening on {} (backlog {})",
                kind_name(s.kind),
                s.ino,
                l.name,
                l.backlog
            );
        }
        let peer = if s.peer == 0 { "peer closed".to_string() } else { format!("peer socket:[{}]", s.peer) };
        let shut = match s.shutdown & 3 {
            1 => ", read shut",
            2 => ", write shut",
            3 => ", shut both ways",
            _ => "",
        };
        let queued = match (s.kind, s.queued_bytes) {
            (_, 0) if s.queued == 0 => "nothing queued".to_string(),
            (libc::SOCK_STREAM, n) => format!("{n} bytes queued"),
            (_, n) => format!("{} messages ({n} bytes) queued", s.queued),
        };
        format!("unix {} socket:[{}], {peer}, {queued}{shut}", kind_name(s.kind), s.ino)
    }
}

/// A listening socket: its name and backlog; connections waiting to be
/// accepted are refused for now.
fn dump_listener(fd: &FdProbe, s: &unix_diag::UnixSocket, what: &str) -> Result<State> {
    let name = s.name.clone().with_context(|| format!("{what}: listening without a name"))?;
    if !s.pending.is_empty() || s.rqueue > 0 {
        bail!("{what} listening on {name}: connections waiting to be accepted are not supported yet");
    }
    socket_state(s, 0, Some(Listening { name, backlog: s.wqueue }), fd.copy()?.as_ref())
}

/// What every unix socket records, its options read from ferry's `copy`
/// (none on the first look, while the tree runs); nothing queued yet.
fn socket_state(
    s: &unix_diag::UnixSocket,
    peer: u64,
    listening: Option<Listening>,
    copy: Option<&OwnedFd>,
) -> Result<State> {
    let mut state = State {
        ino: s.ino,
        peer,
        kind: s.kind,
        shutdown: s.shutdown,
        queued: 0,
        queued_bytes: 0,
        sndbuf: 0,
        rcvbuf: 0,
        passcred: false,
        peek_off: -1,
        listening,
    };
    if let Some(copy) = copy {
        let sock = copy.as_raw_fd();
        state.sndbuf = getsockopt(sock, libc::SO_SNDBUF)?;
        state.rcvbuf = getsockopt(sock, libc::SO_RCVBUF)?;
        state.passcred = getsockopt(sock, libc::SO_PASSCRED)? != 0;
        state.peek_off = getsockopt(sock, libc::SO_PEEK_OFF)?;
    }
    Ok(state)
}

/// Bind the name again and listen. A path still there from the dumped
/// socket is removed first, unless something listens on it now.
fn listen_again(s: &State, l: &Listening) -> Result<OwnedFd> {
    // SAFETY: socket(2) returns a new fd or -1.
    let sock = super::new_fd(unsafe { libc::socket(libc::AF_UNIX, s.kind | libc::SOCK_CLOEXEC, 0) }, "socket")?;
    // SAFETY: a zeroed sockaddr_un, filled below within its size.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as _;
    let (bytes, abstract_) = match l.name.strip_prefix('@') {
        Some(n) => (n.as_bytes(), true),
        None => (l.name.as_bytes(), false),
    };
    let start = usize::from(abstract_);
    if start + bytes.len() >= addr.sun_path.len() {
        bail!("unix socket name {} is too long", l.name);
    }
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[start + i] = *b as _;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + start + bytes.len() + usize::from(!abstract_);
    if !abstract_ {
        let path = std::path::Path::new(&l.name);
        let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        });
        if is_socket {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use: something listens on it now", l.name);
            }
            std::fs::remove_file(path).with_context(|| format!("removing the old {}", l.name))?;
        }
    }
    // SAFETY: bind and listen with the local sockaddr_un and its length.
    unsafe {
        if libc::bind(sock.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len as u32) != 0 {
            bail!("binding {}: {}", l.name, std::io::Error::last_os_error());
        }
        if libc::listen(sock.as_raw_fd(), l.backlog as i32) != 0 {
            bail!("listening on {}: {}", l.name, std::io::Error::last_os_error());
        }
    }
    setsockopt(sock.as_raw_fd(), libc::SO_PASSCRED, i32::from(s.passcred))?;
    Ok(sock)
}

fn socketpair(kind: i32) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        bail!("socketpair: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Send each message from `from` (the receiver's peer), not waiting.
fn send_all(from: RawFd, messages: &[&[u8]], receiver: &State) -> Result<()> {
    for m in messages {
        let mut at = 0;
        loop {
            // SAFETY: send from a live buffer.
            let n = unsafe {
                libc::send(from, m[at..].as_ptr().cast(), m.len() - at, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n < 0 {
                bail!(
                    "putting {} queued messages back into socket:[{}]: {}",
                    messages.len(),
                    receiver.ino,
                    std::io::Error::last_os_error()
                );
            }
            at += n as usize;
            if at >= m.len() {
                break;
            }
        }
    }
    Ok(())
}

/// Shutdown state and peek offset, once the messages are in.
fn finish(sock: RawFd, s: &State) -> Result<()> {
    let how = match s.shutdown & 3 {
        1 => Some(libc::SHUT_RD),
        2 => Some(libc::SHUT_WR),
        3 => Some(libc::SHUT_RDWR),
        _ => None,
    };
    if let Some(how) = how {
        // SAFETY: shutdown takes no pointers.
        if unsafe { libc::shutdown(sock, how) } != 0 {
            bail!("shutdown: {}", std::io::Error::last_os_error());
        }
    }
    if s.peek_off >= 0 {
        setsockopt(sock, libc::SO_PEEK_OFF, s.peek_off)?;
    }
    Ok(())
}
