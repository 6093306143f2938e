//! What TCP and UDP sockets share: their addresses, and the socket options
//! that can be read back. Options are kept only where they differ from a
//! fresh socket of the same family and type (what the program set), so the
//! image says what the program chose and restore sets only that. An option
//! the kernel will not let ferry read (EOPNOTSUPP, ENOPROTOOPT: SO_PASSCRED
//! on an inet socket since 6.16) is skipped with one log line.
//!
//! Buffer sizes are not kept: the kernel tunes them for TCP by itself, and
//! does not say whether a program fixed them.

use super::FdProbe;
use anyhow::{bail, Context, Result};
use nix::sys::socket::{SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The protocol sockfs names for an inet socket (`TCP`, `TCPv6`, `UDP`,
/// `UDPv6`), read through the fd whatever its network namespace.
pub fn protocol(fd: &FdProbe) -> Option<String> {
    if !fd.link.starts_with("socket:[") {
        return None;
    }
    let name = super::unix_socket::xattr(&fd.path(), "system.sockprotoname")?;
    Some(String::from_utf8_lossy(&name).trim_end_matches('\0').to_string())
}

/// ferry's own copy of the socket: pidfd_getfd on the frozen look, else
/// through a pidfd of the running task (the first look only reads).
pub fn copy(fd: &FdProbe) -> Result<OwnedFd> {
    match fd.copy()? {
        Some(c) => Ok(c),
        None => crate::pidfd::getfd(&crate::pidfd::open(fd.proc.pid)?, fd.fd).with_context(|| fd.what()),
    }
}

pub fn local(sock: &impl AsRawFd) -> Result<SocketAddr> {
    to_std(&nix::sys::socket::getsockname::<SockaddrStorage>(sock.as_raw_fd()).context("getsockname")?)
}

/// The peer's address, or None when not connected.
pub fn peer(sock: &impl AsRawFd) -> Result<Option<SocketAddr>> {
    match nix::sys::socket::getpeername::<SockaddrStorage>(sock.as_raw_fd()) {
        Ok(a) => to_std(&a).map(Some),
        Err(nix::errno::Errno::ENOTCONN) => Ok(None),
        Err(e) => Err(e).context("getpeername"),
    }
}

fn to_std(a: &SockaddrStorage) -> Result<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Ok(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Ok(SocketAddr::V6((*v6).into()));
    }
    bail!("not an inet address (family {:?})", a.family())
}

pub fn family(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// A new inet socket of `family` and `kind` (SOCK_STREAM, SOCK_DGRAM).
pub fn socket(family: i32, kind: i32) -> Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let r = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    super::new_fd(r, "socket")
}

pub fn bind(sock: &impl AsRawFd, a: &SocketAddr) -> Result<()> {
    let r = match a {
        SocketAddr::V4(v4) => nix::sys::socket::bind(sock.as_raw_fd(), &SockaddrIn::from(*v4)),
        SocketAddr::V6(v6) => nix::sys::socket::bind(sock.as_raw_fd(), &SockaddrIn6::from(*v6)),
    };
    r.with_context(|| format!("bind {a}"))
}

pub fn connect(sock: &impl AsRawFd, a: &SocketAddr) -> Result<()> {
    let r = match a {
        SocketAddr::V4(v4) => nix::sys::socket::connect(sock.as_raw_fd(), &SockaddrIn::from(*v4)),
        SocketAddr::V6(v6) => nix::sys::socket::connect(sock.as_raw_fd(), &SockaddrIn6::from(*v6)),
    };
    r.with_context(|| format!("connect {a}"))
}

/// Bind to `a`, also when the address is not (yet) on this host: a
/// migration's service address comes with the action script, after the
/// sockets are made (IP_FREEBIND / IPV6_FREEBIND for this bind only, unless
/// the program had set it itself).
pub fn bind_anywhere(sock: &impl AsRawFd, a: &SocketAddr, options: &Options) -> Result<()> {
    match bind(sock, a) {
        Err(e) if e.root_cause().downcast_ref::<nix::errno::Errno>() == Some(&nix::errno::Errno::EADDRNOTAVAIL) => {
            let (level, opt) = freebind(a);
            set_int(sock.as_raw_fd(), level, opt, 1)?;
            bind(sock, a)?;
            let name = if a.is_ipv4() { "IP_FREEBIND" } else { "IPV6_FREEBIND" };
            if !options.ints.contains_key(name) {
                set_int(sock.as_raw_fd(), level, opt, 0)?;
            }
            Ok(())
        }
        r => r,
    }
}

fn freebind(a: &SocketAddr) -> (i32, i32) {
    const IPV6_FREEBIND: i32 = 78;
    if a.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_FREEBIND)
    } else {
        (libc::IPPROTO_IPV6, IPV6_FREEBIND)
    }
}

pub fn get_int(sock: RawFd, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized option into a local.
    if unsafe { libc::getsockopt(sock, level, opt, (&mut v as *mut libc::c_int).cast(), &mut len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

pub fn set_int(sock: RawFd, level: i32, opt: i32, v: i32) -> Result<()> {
    // SAFETY: an int-sized option from a local.
    let r = unsafe { libc::setsockopt(sock, level, opt, (&v as *const libc::c_int).cast(), 4) };
    if r != 0 {
        bail!("setsockopt({level}, {opt}, {v}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Options of an inet socket that a program may have set.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Eq)]
pub struct Options {
    /// The int options, by their C name, where not the default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ints: BTreeMap<String, i32>,
    /// SO_LINGER's timeout, when lingering is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<i32>,
    /// SO_BINDTODEVICE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// TCP_CONGESTION, where not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion: Option<String>,
}

/// Which sockets an option is read from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    All,
    Tcp,
    V4,
    V6,
}

/// (name, level, option, sockets): each an int (a flag or a number).
const INT_OPTIONS: &[(&str, i32, i32, For)] = &[
    ("SO_REUSEADDR", libc::SOL_SOCKET, libc::SO_REUSEADDR, For::All),
    ("SO_REUSEPORT", libc::SOL_SOCKET, libc::SO_REUSEPORT, For::All),
    ("SO_KEEPALIVE", libc::SOL_SOCKET, libc::SO_KEEPALIVE, For::All),
    ("SO_BROADCAST", libc::SOL_SOCKET, libc::SO_BROADCAST, For::All),
    ("SO_OOBINLINE", libc::SOL_SOCKET, libc::SO_OOBINLINE, For::All),
    ("SO_DONTROUTE", libc::SOL_SOCKET, libc::SO_DONTROUTE, For::All),
    ("SO_PRIORITY", libc::SOL_SOCKET, libc::SO_PRIORITY, For::All),
    ("SO_MARK", libc::SOL_SOCKET, libc::SO_MARK, For::All),
    ("SO_RCVLOWAT", libc::SOL_SOCKET, libc::SO_RCVLOWAT, For::All),
    ("SO_PASSCRED", libc::SOL_SOCKET, libc::SO_PASSCRED, For::All),
    ("SO_TIMESTAMP", libc::SOL_SOCKET, libc::SO_TIMESTAMP, For::All),
    ("SO_BUSY_POLL", libc::SOL_SOCKET, libc::SO_BUSY_POLL, For::All),
    ("TCP_NODELAY", libc::IPPROTO_TCP, libc::TCP_NODELAY, For::Tcp),
    ("TCP_CORK", libc::IPPROTO_TCP, libc::TCP_CORK, For::Tcp),
    ("TCP_KEEPIDLE", libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, For::Tcp),
    ("TCP_KEEPINTVL", libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, For::Tcp),
    ("TCP_KEEPCNT", libc::IPPROTO_TCP, libc::TCP_KEEPCNT, For::Tcp),
    ("TCP_USER_TIMEOUT", libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, For::Tcp),
    ("TCP_SYNCNT", libc::IPPROTO_TCP, libc::TCP_SYNCNT, For::Tcp),
    ("TCP_LINGER2", libc::IPPROTO_TCP, libc::TCP_LINGER2, For::Tcp),
    ("TCP_DEFER_ACCEPT", libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, For::Tcp),
    ("TCP_FASTOPEN", libc::IPPROTO_TCP, libc::TCP_FASTOPEN, For::Tcp),
    ("TCP_NOTSENT_LOWAT", libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, For::Tcp),
    ("IP_TOS", libc::IPPROTO_IP, libc::IP_TOS, For::V4),
    ("IP_TTL", libc::IPPROTO_IP, libc::IP_TTL, For::V4),
    ("IP_FREEBIND", libc::IPPROTO_IP, libc::IP_FREEBIND, For::V4),
    ("IP_TRANSPARENT", libc::IPPROTO_IP, libc::IP_TRANSPARENT, For::V4),
    ("IP_RECVERR", libc::IPPROTO_IP, libc::IP_RECVERR, For::V4),
    ("IP_PKTINFO", libc::IPPROTO_IP, libc::IP_PKTINFO, For::V4),
    ("IP_MTU_DISCOVER", libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, For::V4),
    ("IP_BIND_ADDRESS_NO_PORT", libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, For::V4),
    ("IPV6_V6ONLY", libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, For::V6),
    ("IPV6_TCLASS", libc::IPPROTO_IPV6, libc::IPV6_TCLASS, For::V6),
    ("IPV6_UNICAST_HOPS", libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, For::V6),
    ("IPV6_RECVPKTINFO", libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, For::V6),
    ("IPV6_RECVERR", libc::IPPROTO_IPV6, libc::IPV6_RECVERR, For::V6),
    ("IPV6_MTU_DISCOVER", libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, For::V6),
    ("IPV6_FREEBIND", libc::IPPROTO_IPV6, 78, For::V6),
    ("IPV6_TRANSPARENT", libc::IPPROTO_IPV6, 75, For::V6),
];

fn applies(f: For, family: i32, kind: i32) -> bool {
    match f {
        For::All => true,
        For::Tcp => kind == libc::SOCK_STREAM,
        // An IPv6 socket answers the IPv4 options too (for its v4-mapped
        // side), but they are the IPv6 ones that count.
        For::V4 => family == libc::AF_INET,
        For::V6 => family == libc::AF_INET6,
    }
}

/// Everything readable from `sock` that a program can set.
fn read_all(sock: RawFd, family: i32, kind: i32, quiet: bool) -> Options {
    let mut out = Options::default();
    for &(name, level, opt, _) in INT_OPTIONS.iter().filter(|o| applies(o.3, family, kind)) {
        match get_int(sock, level, opt) {
            Ok(v) => {
                out.ints.insert(name.to_string(), v);
            }
            Err(e) if !quiet => tracing::info!("socket option {name} cannot be read here ({e}): not kept"),
            Err(_) => {}
        }
    }
    let mut l = libc::linger { l_onoff: 0, l_linger: 0 };
    let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: a struct linger into a local of its size.
    if unsafe {
        libc::getsockopt(sock, libc::SOL_SOCKET, libc::SO_LINGER, (&mut l as *mut libc::linger).cast(), &mut len)
    } == 0
        && l.l_onoff != 0
    {
        out.linger = Some(l.l_linger);
    }
    out.device = get_string(sock, libc::SOL_SOCKET, libc::SO_BINDTODEVICE).filter(|s| !s.is_empty());
    if kind == libc::SOCK_STREAM {
        out.congestion = get_string(sock, libc::IPPROTO_TCP, libc::TCP_CONGESTION);
    }
    out
}

fn get_string(sock: RawFd, level: i32, opt: i32) -> Option<String> {
    let mut buf = [0u8; 64];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: into a local buffer of the length given.
    if unsafe { libc::getsockopt(sock, level, opt, buf.as_mut_ptr().cast(), &mut len) } != 0 {
        return None;
    }
    let s = &buf[..len as usize];
    let s = s.split(|&b| b == 0).next().unwrap_or(s);
    Some(String::from_utf8_lossy(s).into_owned())
}

/// The options of `sock` that differ from a fresh socket's of the same
/// family and type.
pub fn read(sock: RawFd, family: i32, kind: i32, quiet: bool) -> Result<Options> {
    let fresh = socket(family, kind)?;
    let base = read_all(fresh.as_raw_fd(), family, kind, true);
    let mut mine = read_all(sock, family, kind, quiet);
    mine.ints.retain(|k, v| base.ints.get(k) != Some(v));
    if mine.congestion == base.congestion {
        mine.congestion = None;
    }
    Ok(mine)
}

/// Set what [`read`] kept (before bind: SO_REUSEADDR and IPV6_V6ONLY
/// decide what bind may do).
pub fn write(sock: RawFd, o: &Options) -> Result<()> {
    for (name, &v) in &o.ints {
        let Some(&(_, level, opt, _)) = INT_OPTIONS.iter().find(|x| x.0 == name) else {
            bail!("unknown socket option {name:?} (written by a newer ferry?)");
        };
        set_int(sock, level, opt, v).with_context(|| name.clone())?;
    }
    if let Some(secs) = o.linger {
        let l = libc::linger { l_onoff: 1, l_linger: secs };
        // SAFETY: a struct linger from a local.
        let r = unsafe {
            libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        if r != 0 {
            bail!("SO_LINGER: {}", std::io::Error::last_os_error());
        }
    }
    for (v, level, opt, name) in [
        (&o.device, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE"),
        (&o.congestion, libc::IPPROTO_TCP, libc::TCP_CONGESTION, "TCP_CONGESTION"),
    ] {
        if let Some(s) = v {
            // SAFETY: the string's bytes, with their length.
            let r = unsafe { libc::setsockopt(sock, level, opt, s.as_ptr().cast(), s.len() as u32) };
            if r != 0 {
                bail!("{name} {s}: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// "SO_REUSEADDR=1 TCP_NODELAY=1 ..." for `ferry show`.
pub fn describe(o: &Options) -> String {
    let mut parts: Vec<String> = o.ints.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(l) = o.linger {
        parts.push(format!("SO_LINGER={l}s"));
    }
    if let Some(d) = &o.device {
        parts.push(format!("SO_BINDTODEVICE={d}"));
    }
    if let Some(c) = &o.congestion {
        parts.push(format!("TCP_CONGESTION={c}"));
    }
    parts.join(" ")
}

/// struct tcp_info's first fields (linux/tcp.h), as far as ferry reads.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct TcpInfo {
    pub state: u8,
    pub ca_state: u8,
    pub retransmits: u8,
    pub probes: u8,
    pub backoff: u8,
    pub options: u8,
    /// snd_wscale in the low 4 bits, rcv_wscale in the high 4.
    pub wscale: u8,
    pub flags: u8,
    pub rto: u32,
    pub ato: u32,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    /// A listener: connections waiting to be accepted.
    pub unacked: u32,
    /// A listener: its backlog.
    pub sacked: u32,
}

pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;

pub fn tcp_info(sock: RawFd) -> Result<TcpInfo> {
    let mut info = TcpInfo::default();
    let mut len = std::mem::size_of::<TcpInfo>() as libc::socklen_t;
    // SAFETY: the start of struct tcp_info into a local of that size (the
    // kernel copies at most `len` bytes).
    let r = unsafe {
        libc::getsockopt(sock, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut TcpInfo).cast(), &mut len)
    };
    if r != 0 {
        bail!("TCP_INFO: {}", std::io::Error::last_os_error());
    }
    Ok(info)
}

/// The TCP states by the kernel's numbers, for messages.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}
