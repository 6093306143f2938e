//! What the kernel tells of unix sockets through sock_diag (NETLINK_SOCK_DIAG,
//! unix_diag): type, state, bound name, peer, queue lengths, pending
//! connections and shutdown state, by socket inode. /proc/net/unix lacks
//! the peer, which is what ties the two ends of a socketpair together.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// One unix socket as sock_diag describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixSocket {
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub kind: i32,
    /// TCP-style state: 1 established, 7 unconnected, 10 listening.
    pub state: u8,
    /// Bound name: a path, or "@..." for an abstract one.
    pub name: Option<String>,
    /// The peer's inode (0 once the peer is closed).
    pub peer: Option<u64>,
    /// Bytes (stream) or messages waiting to be read; for a listener, the
    /// connections waiting to be accepted.
    pub rqueue: u32,
    /// Bytes queued to be sent; for a listener, its backlog.
    pub wqueue: u32,
    /// Inodes of connections waiting to be accepted (a listener's).
    pub pending: Vec<u64>,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// The socket file a path-bound socket made: its inode and device
    /// (the kernel's encoding, major << 20 | minor).
    pub vfs: Option<(u64, u32)>,
}

impl UnixSocket {
    /// Whether `meta` (a stat of the bound path) is this socket's file.
    pub fn is_file(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some((ino, dev)) = self.vfs else { return false };
        let (major, minor) = (u64::from(dev >> 20), u64::from(dev & 0xfffff));
        meta.ino() == ino && libc::major(meta.dev()) as u64 == major && libc::minor(meta.dev()) as u64 == minor
    }
}

/// Every unix socket of network namespace `netns` (ferry's own if None),
/// by inode. A connection accepted from a client in another namespace
/// lives in the client's: the server's end is only seen from there.
pub fn all_in(netns: Option<&OwnedFd>) -> Result<HashMap<u64, UnixSocket>> {
    let Some(ns) = netns else { return all() };
    // setns changes only the calling thread's namespace: a thread of its
    // own asks, and ends.
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the socket's namespace")?;
            all()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sock_diag thread panicked"))?
    })
}

/// The network namespace `sock` belongs to, if it is not ferry's.
pub fn foreign_netns(sock: &OwnedFd) -> Result<Option<OwnedFd>> {
    use std::os::unix::fs::MetadataExt;
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS as _) };
    if fd < 0 {
        bail!("SIOCGSKNS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    let ns = unsafe { OwnedFd::from_raw_fd(fd) };
    let theirs = std::fs::metadata(format!("/proc/self/fd/{fd}"))?.ino();
    let ours = std::fs::metadata("/proc/self/ns/net")?.ino();
    Ok((theirs != ours).then_some(ns))
}

/// Every unix socket of ferry's network namespace, by inode.
pub fn all() -> Result<HashMap<u64, UnixSocket>> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        bail!("sock_diag socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: just created.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // inode: any
    req.extend_from_slice(
        &(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN).to_ne_bytes(),
    );
    req.extend_from_slice(&[0xff; 8]); // no cookie
    nix::unistd::write(&sock, &req).context("sock_diag request")?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: recv into our buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            bail!("sock_diag: {}", std::io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > msgs.len() {
                bail!("sock_diag: a message of {len} bytes in {}", msgs.len());
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = -i32::from_ne_bytes(msgs[16..20].try_into().expect("4 bytes"));
                    if errno == libc::ENOENT {
                        bail!("the kernel does not describe unix sockets (sock_diag: load the unix_diag module, CONFIG_UNIX_DIAG)");
                    }
                    bail!("sock_diag: {}", std::io::Error::from_raw_os_error(errno));
                }
                SOCK_DIAG_BY_FAMILY => {
                    let s = parse(&msgs[16..len]).context("sock_diag: a malformed unix_diag_msg")?;
                    out.insert(s.ino, s);
                }
                _ => {}
            }
            msgs = &msgs[(len + 3) & !3..];
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// unix_diag_msg (16 bytes) and its attributes.
fn parse(b: &[u8]) -> Option<UnixSocket> {
    let mut s = UnixSocket {
        kind: i32::from(*b.get(1)?),
        state: *b.get(2)?,
        ino: u64::from(u32_at(b, 4)?),
        ..Default::default()
    };
    let mut attrs = b.get(16..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?);
        let data = attrs.get(4..len)?;
        match kind {
            UNIX_DIAG_NAME => {
                s.name = Some(match data.first() {
                    Some(0) => format!("@{}", String::from_utf8_lossy(&data[1..])),
                    _ => String::from_utf8_lossy(data.split(|&c| c == 0).next().unwrap_or(data)).into_owned(),
                })
            }
            UNIX_DIAG_VFS => s.vfs = Some((u64::from(u32_at(data, 0)?), u32_at(data, 4)?)),
            UNIX_DIAG_PEER => s.peer = Some(u64::from(u32_at(data, 0)?)),
            UNIX_DIAG_RQLEN => {
                s.rqueue = u32_at(data, 0)?;
                s.wqueue = u32_at(data, 4)?;
            }
            UNIX_DIAG_ICONS => s.pending = data.chunks_exact(4).filter_map(|c| u32_at(c, 0)).map(u64::from).collect(),
            UNIX_DIAG_SHUTDOWN => s.shutdown = *data.first()?,
            _ => {}
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_socketpair_names_its_peer() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap().ino()
        };
        let all = all().unwrap();
        let (sa, sb) = (&all[&ino(&a)], &all[&ino(&b)]);
        assert_eq!(sa.peer, Some(ino(&b)));
        assert_eq!(sb.peer, Some(ino(&a)));
        assert_eq!(sa.kind, libc::SOCK_STREAM);
        assert_eq!((sa.shutdown, sb.shutdown), (1, 2), "b's write shut is a's read shut");
        assert_eq!(sa.name, None);
    }

    #[test]
    fn a_bound_socket_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap().ino();
        let s = &all().unwrap()[&ino];
        assert_eq!(s.name.as_deref(), Some(path.to_str().unwrap()));
        assert!(s.is_file(&std::fs::symlink_metadata(&path).unwrap()));
        assert!(!s.is_file(&std::fs::metadata(dir.path()).unwrap()));
    }
}
