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
//! A connection accepted from a listener carries the listener's name;
//! it is restored as a socketpair like any other, without the name (as
//! CRIU does: getsockname on it then answers an unnamed address).
//!
//! A peer outside the tree (`--ext-unix-sk`): a stream or seqpacket end
//! is restored as one whose peer hung up once its bytes were read (the
//! client's end cannot follow the tree; it sees the connection close when
//! the dumped task goes); a datagram socket connects to its peer's name
//! again (/dev/log), as CRIU does.
//!
//! A listener is bound to its name again; its socket file gets the mode
//! and owner it had. A relative name is bound under the cwd the task had
//! at dump.
//!
//! A socket neither connected nor listening is made again, bound to its
//! name if it had one; a bound datagram socket gets its queued messages
//! back, sent from an unnamed socket (the senders' addresses are lost).
//!
//! Not yet (refused by name): connections waiting to be accepted, other
//! bound connected sockets, messages queued in an unbound unconnected
//! socket, file descriptors in flight (SCM_RIGHTS).

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
    /// The peer is outside the tree (`--ext-unix-sk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalPeer>,
    /// An accepted connection: the listener's name it carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_on: Option<String>,
    /// Neither connected nor listening (a datagram socket that receives
    /// with recvfrom, a socket not used yet), bound to a name or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconnected: Option<Unconnected>,
    /// A datagram socket connected to a named one in the tree that is not
    /// connected back (a client of a datagram server): connected to the
    /// name again once every socket is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connects_to: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Unconnected {
    /// Its name (backlog unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<Listening>,
}

#[derive(Serialize, Deserialize)]
pub struct Listening {
    pub name: String,
    pub backlog: u32,
    /// The task's cwd at dump, for a relative name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The socket file's permission bits and owner, when the name is a
    /// path whose file is still this socket's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SocketFile>,
}

#[derive(Serialize, Deserialize)]
pub struct SocketFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Its inode: a file still there under it on restore is this socket's
    /// own (left behind, or held by the source of a migration).
    #[serde(default)]
    pub ino: u64,
}

#[derive(Serialize, Deserialize)]
pub struct ExternalPeer {
    pub ino: u64,
    /// The peer's name: a datagram socket connects to it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A socket-level int option (the syscalls are inet's, shared).
fn getsockopt(fd: RawFd, opt: i32) -> Result<i32> {
    super::inet::get_int(fd, libc::SOL_SOCKET, opt).with_context(|| format!("getsockopt({opt})"))
}

fn setsockopt(fd: RawFd, opt: i32, v: i32) -> Result<()> {
    super::inet::set_int(fd, libc::SOL_SOCKET, opt, v)
}

/// An extended attribute of `path` (following links), if it has one.
pub(super) fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: getxattr into a local buffer of the size given.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
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
        // sockfs names the protocol (UNIX, UNIX-STREAM...) whatever the
        // socket's network namespace.
        fd.link.starts_with("socket:[")
            && xattr(&fd.path(), "system.sockprotoname").is_some_and(|p| p.starts_with(b"UNIX"))
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        let ino = fd.meta.ino();
        // Before the freeze too: the namespace is read from ferry's copy.
        let copy = match fd.copy()? {
            Some(c) => c,
            None => crate::pidfd::getfd(&crate::pidfd::open(fd.proc.pid)?, fd.fd).with_context(|| fd.what())?,
        };
        let netns = unix_diag::foreign_netns(&copy).with_context(|| fd.what())?;
        drop(copy);
        let all = unix_diag::all_in(netns.as_ref()).with_context(|| fd.what())?;
        let s = all.get(&ino).with_context(|| format!("{}: sock_diag does not know socket {ino}", fd.what()))?;
        let what = format!("{}: unix {} socket", fd.what(), kind_name(s.kind));
        if s.state == 10 {
            return dump_listener(fd, s, &what, reg);
        }
        let Some(mut peer) = s.peer else {
            return dump_unconnected(fd, s, &what, reg);
        };
        let accepted_on = match &s.name {
            None => None,
            // Accepted from a client in another namespace, the socket lives
            // in the client's; its listener, in the task's.
            Some(name)
                if s.kind != libc::SOCK_DGRAM
                    && (is_listened_on(&all, name, s.kind) || listened_on_in_task_netns(fd, name, s.kind)?) =>
            {
                Some(name.clone())
            }
            Some(name) => bail!("{what} bound to {name}: bound unix sockets are not supported yet"),
        };
        let mut external = None;
        if peer != 0 {
            if let Some(holder) = super::held_outside(&format!("socket:[{peer}]"), reg) {
                external = Some(external_peer(fd, s, peer, holder, &all, &what)?);
                if s.kind != libc::SOCK_DGRAM {
                    // Restored as a connection whose peer hung up.
                    peer = 0;
                }
            }
        }
        let mut connects_to = None;
        if s.kind == libc::SOCK_DGRAM && external.is_none() {
            if let Some(p) = all.get(&peer).filter(|p| p.peer != Some(s.ino)) {
                let name = p.name.clone().with_context(|| format!("{what}: connected to a socket with no name"))?;
                connects_to = Some(name);
            }
        }
        let copy = fd.copy()?;
        let mut state = socket_state(s, peer, None, copy.as_ref())?;
        let dgram_out = s.kind == libc::SOCK_DGRAM && (external.is_some() || connects_to.is_some());
        state.connects_to = connects_to;
        state.external = external;
        state.accepted_on = accepted_on;
        // The first look (the tree still running) reads no queue.
        if let Some(copy) = copy {
            let sock = copy.as_raw_fd();
            let eof_on_empty = s.kind == libc::SOCK_STREAM || s.shutdown & 1 != 0;
            let messages = peek_all(sock, eof_on_empty, &what)?;
            if dgram_out && !messages.is_empty() {
                // Only its peer may send to a connected datagram socket,
                // and the peer is not ferry's to send from.
                bail!("{what}: {} messages from the socket it is connected to wait in it", messages.len());
            }
            state.queued = messages.len() as u32;
            state.queued_bytes = messages.iter().map(|m| m.len() as u64).sum();
            reg.data(frame(&messages));
        }
        Ok(state)
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        if let Some(l) = &s.listening {
            return listen_again(s, l, ctx);
        }
        if let Some(u) = &s.unconnected {
            return open_unconnected(file, s, u, ctx);
        }
        if s.connects_to.is_some() {
            // Connected in `link`, once its peer is bound.
            let sock = unix_socket(s.kind)?;
            set_options(sock.as_raw_fd(), s)?;
            return Ok(sock);
        }
        if let (libc::SOCK_DGRAM, Some(ext)) = (s.kind, &s.external) {
            let name = ext.name.as_deref().context("an outside peer without a name")?;
            let sock = unix_socket(s.kind)?;
            let (addr, len) = sockaddr(name)?;
            // SAFETY: connect with the local sockaddr_un and its length.
            if unsafe { libc::connect(sock.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
                bail!("connecting to {name} (its peer outside the tree): {}", std::io::Error::last_os_error());
            }
            set_options(sock.as_raw_fd(), s)?;
            finish(sock.as_raw_fd(), s)?;
            return Ok(sock);
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
        set_options(sock, s)?;
        if s.peer == 0 {
            finish(sock, s)?;
        }
        Ok(mine)
    }

    fn link(file: &FileObject, s: &State, fd: &OwnedFd, files: &OpenFiles) -> Result<()> {
        // The end with the lower inode fills both (the peer's data must be
        // in before either end's shutdown).
        if let Some(name) = &s.connects_to {
            let (addr, len) = sockaddr(name)?;
            // SAFETY: connect with the local sockaddr_un and its length.
            if unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
                bail!("connecting to {name} again: {}", std::io::Error::last_os_error());
            }
            return finish(fd.as_raw_fd(), s);
        }
        if s.listening.is_some() || s.external.is_some() || s.peer == 0 || s.peer < s.ino {
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
        if let Some(u) = &s.unconnected {
            let bound = u.bound.as_ref().map(|l| format!("bound to {}", l.name)).unwrap_or("unbound".into());
            let queued = if s.queued == 0 {
                String::new()
            } else {
                format!(", {} messages ({} bytes) queued", s.queued, s.queued_bytes)
            };
            return format!("unix {} socket:[{}], {bound}, unconnected{queued}", kind_name(s.kind), s.ino);
        }
        let peer = match (&s.external, s.peer) {
            (Some(e), _) => format!(
                "peer socket:[{}] outside the tree{}",
                e.ino,
                e.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            (None, 0) => "peer closed".to_string(),
            (None, p) => format!("peer socket:[{p}]"),
        };
        let peer = match (&s.accepted_on, &s.connects_to) {
            (Some(name), _) => format!("accepted on {name}, {peer}"),
            (None, Some(name)) => format!("connected to {name}, {peer}"),
            (None, None) => peer,
        };
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

/// Whether a listener of this type is bound to `name` (then a connected
/// socket named so was accepted from it).
fn is_listened_on(all: &std::collections::HashMap<u64, unix_diag::UnixSocket>, name: &str, kind: i32) -> bool {
    all.values().any(|o| o.state == 10 && o.kind == kind && o.name.as_deref() == Some(name))
}

/// Whether a listener named `name` is in the task's own network
/// namespace (looked at only when the socket is not there).
fn listened_on_in_task_netns(fd: &FdProbe, name: &str, kind: i32) -> Result<bool> {
    let ns =
        std::fs::File::open(fd.proc.path("ns/net")).with_context(|| format!("{}: its network namespace", fd.what()))?;
    let ours = std::fs::metadata("/proc/self/ns/net")?.ino();
    let ns = OwnedFd::from(ns);
    let foreign = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd()))?.ino() != ours;
    let all = unix_diag::all_in(foreign.then_some(&ns))?;
    Ok(is_listened_on(&all, name, kind))
}

/// A peer held outside the tree: allowed by `--ext-unix-sk` (a datagram
/// socket's only if the peer has a name to connect to again), else refused
/// with the hint.
fn external_peer(
    fd: &FdProbe,
    s: &unix_diag::UnixSocket,
    peer: u64,
    holder: String,
    all: &std::collections::HashMap<u64, unix_diag::UnixSocket>,
    what: &str,
) -> Result<ExternalPeer> {
    if !fd.policy.ext_unix_sk.allows(s.ino) {
        bail!(
            "{what} (socket:[{}]): its peer socket:[{peer}] is held by process {holder} outside the tree; \
             --ext-unix-sk lets it go (the connection is restored as closed by that peer)",
            s.ino
        );
    }
    let name = all.get(&peer).and_then(|p| p.name.clone());
    if s.kind == libc::SOCK_DGRAM && name.is_none() {
        bail!("{what}: its peer socket:[{peer}] outside the tree has no name to connect to again");
    }
    Ok(ExternalPeer { ino: peer, name })
}

/// A listening socket: its name, backlog and socket file. Connections
/// waiting to be accepted are let go with `--ext-unix-sk` (their clients
/// see them closed, as when a server restarts: the bytes they sent cannot
/// be read without accepting them, which a dump that fails could not
/// undo, and sock_diag cannot even say whose they are: a connection not
/// accepted yet has no inode), and refused without it.
fn dump_listener(fd: &FdProbe, s: &unix_diag::UnixSocket, what: &str, reg: &mut dyn Registry) -> Result<State> {
    let name = s.name.clone().with_context(|| format!("{what}: listening without a name"))?;
    let waiting = s.pending.len().max(s.rqueue as usize);
    if waiting > 0 {
        if !fd.policy.ext_unix_sk.allows(s.ino) {
            bail!(
                "{what} listening on {name}: {waiting} connections wait to be accepted; --ext-unix-sk lets them \
                 go (their clients see them closed)"
            );
        }
        reg.warn(format!(
            "{what} listening on {name}: {waiting} connections waiting to be accepted are let go \
             (--ext-unix-sk): their clients see them closed"
        ));
    }
    let mut l = bound_name(fd, s, &name, what)?;
    l.backlog = s.wqueue;
    socket_state(s, 0, Some(l), fd.copy()?.as_ref())
}

/// A socket's name, with the cwd a relative one is under and its socket
/// file's mode and owner (backlog 0).
fn bound_name(fd: &FdProbe, s: &unix_diag::UnixSocket, name: &str, what: &str) -> Result<Listening> {
    let mut l = Listening { name: name.to_string(), backlog: 0, dir: None, file: None };
    if !name.starts_with('@') {
        // Seen from the task: its root, and its cwd for a relative name.
        let path = if name.starts_with('/') {
            fd.proc.path("root").join(name.trim_start_matches('/'))
        } else {
            let cwd = fd.proc.read_link("cwd")?;
            l.dir = Some(cwd.to_string_lossy().into_owned());
            fd.proc.path("cwd").join(name)
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if s.is_file(&m) => {
                l.file = Some(SocketFile { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), ino: m.ino() });
            }
            _ => bail!("{what} bound to {name}: its socket file was removed or replaced; not supported yet"),
        }
    }
    Ok(l)
}

/// Neither connected nor listening: its name, if bound, and (a datagram
/// socket's) the messages waiting, put back on restore from an unnamed
/// socket (their senders' addresses are not kept).
fn dump_unconnected(fd: &FdProbe, s: &unix_diag::UnixSocket, what: &str, reg: &mut dyn Registry) -> Result<State> {
    let bound = s.name.as_deref().map(|n| bound_name(fd, s, n, what)).transpose()?;
    let copy = fd.copy()?;
    let mut state = socket_state(s, 0, None, copy.as_ref())?;
    // Only a datagram socket receives without a connection.
    if let (Some(copy), libc::SOCK_DGRAM) = (copy, s.kind) {
        let messages = peek_all(copy.as_raw_fd(), s.shutdown & 1 != 0, what)?;
        if !messages.is_empty() && bound.is_none() {
            bail!("{what}: {} messages wait in it, unbound and unconnected; not supported yet", messages.len());
        }
        state.queued = messages.len() as u32;
        state.queued_bytes = messages.iter().map(|m| m.len() as u64).sum();
        reg.data(frame(&messages));
    }
    state.unconnected = Some(Unconnected { bound });
    Ok(state)
}

fn open_unconnected(file: &FileObject, s: &State, u: &Unconnected, ctx: &OpenContext) -> Result<OwnedFd> {
    let (sock, full) = match &u.bound {
        Some(l) => {
            let (sock, full) = bind_again(s, l, ctx)?;
            (sock, Some(full))
        }
        None => (unix_socket(s.kind)?, None),
    };
    set_options(sock.as_raw_fd(), s)?;
    let data = ctx.data(file)?;
    if let (false, Some(full)) = (data.is_empty(), &full) {
        let from = unix_socket(libc::SOCK_DGRAM)?;
        let (addr, len) = sockaddr(full)?;
        for m in unframe(&data)? {
            // SAFETY: sendto from a live buffer to the local address.
            let n = unsafe {
                libc::sendto(
                    from.as_raw_fd(),
                    m.as_ptr().cast(),
                    m.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    (&addr as *const libc::sockaddr_un).cast(),
                    len,
                )
            };
            if n < 0 {
                bail!("putting a queued message back into {full}: {}", std::io::Error::last_os_error());
            }
        }
    }
    finish(sock.as_raw_fd(), s)?;
    Ok(sock)
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
        external: None,
        accepted_on: None,
        unconnected: None,
        connects_to: None,
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

fn unix_socket(kind: i32) -> Result<OwnedFd> {
    // SAFETY: socket(2) returns a new fd or -1.
    super::new_fd(unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) }, "socket")
}

/// A unix address for `name` (a path, or "@name" for an abstract one) and
/// its length.
fn sockaddr(name: &str) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: a zeroed sockaddr_un, filled below within its size.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as _;
    let (bytes, abstract_) = match name.strip_prefix('@') {
        Some(n) => (n.as_bytes(), true),
        None => (name.as_bytes(), false),
    };
    let start = usize::from(abstract_);
    if start + bytes.len() >= addr.sun_path.len() {
        bail!("unix socket name {name} is too long");
    }
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[start + i] = *b as _;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + start + bytes.len() + usize::from(!abstract_);
    Ok((addr, len as libc::socklen_t))
}

/// Bind the name again and listen. A socket file in the way is taken over
/// (kept aside until the restore succeeds) if it is the dumped socket's
/// own or nothing answers on it; another file, or a socket something else
/// listens on, is an error.
fn listen_again(s: &State, l: &Listening, ctx: &OpenContext) -> Result<OwnedFd> {
    let (sock, full) = bind_again(s, l, ctx)?;
    // SAFETY: plain listen on our socket.
    if unsafe { libc::listen(sock.as_raw_fd(), l.backlog as i32) } != 0 {
        bail!("listening on {full}: {}", std::io::Error::last_os_error());
    }
    setsockopt(sock.as_raw_fd(), libc::SO_PASSCRED, i32::from(s.passcred))?;
    Ok(sock)
}

/// A new socket bound to `l`'s name again (the full path it was bound
/// at), its socket file with its mode and owner before anyone can
/// connect.
fn bind_again(s: &State, l: &Listening, ctx: &OpenContext) -> Result<(OwnedFd, String)> {
    let sock = unix_socket(s.kind)?;
    let full = match (&l.dir, l.name.starts_with('/') || l.name.starts_with('@')) {
        (Some(dir), false) => format!("{}/{}", dir.trim_end_matches('/'), l.name),
        _ => l.name.clone(),
    };
    let (addr, len) = sockaddr(&full)?;
    if !full.starts_with('@') {
        let path = std::path::Path::new(&full);
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                bail!("{full} exists and is not a socket");
            }
            let own = l.file.as_ref().is_some_and(|f| f.ino == m.ino());
            if !own && answers(path, s.kind) {
                bail!("{full} is in use: something else listens on it now");
            }
            ctx.taken_paths.borrow_mut().push(super::socket_path::TakenPath::take(path)?);
        }
    }
    // SAFETY: bind with the local sockaddr_un and its length.
    if unsafe { libc::bind(sock.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        bail!("binding {full}: {}", std::io::Error::last_os_error());
    }
    if let Some(f) = &l.file {
        let path = std::path::Path::new(&full);
        std::os::unix::fs::chown(path, Some(f.uid), Some(f.gid)).with_context(|| format!("chown {full}"))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(f.mode))
            .with_context(|| format!("chmod {full}"))?;
    }
    Ok((sock, full))
}

/// Whether a listener of `kind` accepts a connection on `path` now.
fn answers(path: &std::path::Path, kind: i32) -> bool {
    let Ok(probe) = unix_socket(kind) else { return false };
    let Ok((addr, len)) = sockaddr(&path.to_string_lossy()) else { return false };
    // SAFETY: connect with the local sockaddr_un and its length.
    unsafe { libc::connect(probe.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) == 0 }
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

/// Buffer sizes and SO_PASSCRED as dumped (the kernel doubles a size
/// that is set, and reports the doubled value: half goes in).
fn set_options(sock: RawFd, s: &State) -> Result<()> {
    setsockopt(sock, libc::SO_SNDBUF, s.sndbuf / 2)?;
    setsockopt(sock, libc::SO_RCVBUF, s.rcvbuf / 2)?;
    setsockopt(sock, libc::SO_PASSCRED, i32::from(s.passcred))
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
