//! Connections between ferry endpoints. A [`Link`] is one authenticated
//! connection: TCP with the shared-key handshake ([`auth`]), optionally
//! inside TLS with certificates on both sides ([`tls`]); [`wire`] is the
//! framing on top. Nothing is sent or accepted before the peer is proven.

pub mod admission;
pub mod auth;
pub mod tls;
pub mod wire;

use anyhow::{bail, Context, Result};
use auth::Key;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// How this endpoint proves itself and checks its peer: a shared key, TLS
/// certificates, or both (never neither).
#[derive(Clone, Debug)]
pub struct Credentials {
    key: Option<Key>,
    tls: Option<Arc<tls::Tls>>,
}

impl Credentials {
    pub fn new(key: Option<Key>, tls: Option<Arc<tls::Tls>>) -> Result<Credentials> {
        if key.is_none() && tls.is_none() {
            bail!("no way to authenticate the peer: give a shared key (--auth-key) or TLS certificates (--tls)");
        }
        Ok(Credentials { key, tls })
    }

    pub fn key(key: Key) -> Credentials {
        Credentials { key: Some(key), tls: None }
    }
}

/// How long a peer may take to authenticate.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A proven peer of a listening endpoint and the request it opened with.
pub struct Admitted {
    pub link: Link,
    pub peer: String,
    /// Its first frame, a Status naming what it wants.
    pub hello: String,
}

/// Listen on `listener` for peers that authenticate and then say what they
/// want (one Status frame), all within the admission deadline; strangers
/// and silent peers are refused with a log line and never delay the others.
pub fn admit(
    listener: std::net::TcpListener,
    what: &'static str,
    creds: &Credentials,
) -> admission::Admission<Admitted> {
    let creds = creds.clone();
    admission::Admission::start(listener, what, move |tcp: TcpStream| {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut link = Link::accept(tcp, &creds).with_context(|| format!("peer {peer}"))?;
        let first = wire::read_frame_limited(&mut link, wire::SMALL).with_context(|| format!("peer {peer}"))?;
        if first.kind != wire::Kind::Status {
            bail!("peer {peer} did not follow the protocol (sent {:?} first)", first.kind);
        }
        Ok(Admitted { link, peer, hello: first.text() })
    })
}

/// One authenticated connection.
#[derive(Debug)]
pub enum Link {
    Tcp(TcpStream),
    /// TLS: the plaintext side of the pump (see [`tls`]).
    Tls {
        app: tls::TlsStream,
        peer: SocketAddr,
    },
}

/// How long data may go unacknowledged before a link counts as dead: short,
/// so that post-copy notices a cut at once (a faulting task waits on it).
pub const USER_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for bulk transfers nobody waits on page by page (pre-copy
/// rounds): since Linux 5.11 the user timeout also ends a connection whose
/// receiver keeps its window shut that long, which a busy destination
/// checking a round's files can do for seconds.
pub const BULK_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// Set TCP_USER_TIMEOUT (see [`USER_TIMEOUT`]).
fn set_user_timeout(s: &TcpStream, t: Duration) -> std::io::Result<()> {
    let ms = t.as_millis().min(u32::MAX as u128) as u32;
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::TcpUserTimeout, &ms).map_err(std::io::Error::from)
}

/// Set socket options for page traffic: no Nagle delay, and a bounded
/// time for unacknowledged data so a dead link is noticed.
fn tune(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = s.set_nodelay(true);
    let _ = set_user_timeout(s, USER_TIMEOUT);
    // An idle end learns of a cut too (the source waiting for page
    // requests while the destination already gave the connection up):
    // probes every second, which the user timeout turns into an error.
    let _ = setsockopt(s, sockopt::KeepAlive, &true);
    let _ = setsockopt(s, sockopt::TcpKeepIdle, &1);
    let _ = setsockopt(s, sockopt::TcpKeepInterval, &1);
}

/// Open a TCP connection to `target` (HOST:PORT).
pub fn dial(target: &str, timeout: Duration) -> Result<TcpStream> {
    let addr = target
        .to_socket_addrs()
        .with_context(|| format!("resolving {target}"))?
        .next()
        .with_context(|| format!("no address for {target}"))?;
    TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {target}"))
}

/// The host part of HOST:PORT (brackets of an IPv6 literal removed).
/// A TCP port bound but not yet listening: taking the port early makes a
/// busy port fail before anything else happens, while peers are refused
/// (not queued) until [`Reserved::listen`] says the service is ready.
pub struct Reserved {
    fd: std::os::fd::OwnedFd,
    addr: SocketAddr,
}

impl Reserved {
    pub fn bind(address: &str, port: u16) -> Result<Reserved> {
        use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
        let addr = (address, port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {address}"))?
            .next()
            .with_context(|| format!("{address} has no address"))?;
        let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).context("socket")?;
        // As std's TcpListener does: a restarted server may reuse the port
        // while old connections linger in TIME_WAIT.
        setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))
            .with_context(|| format!("listening on {addr}"))?;
        Ok(Reserved { fd, addr })
    }

    pub fn listen(self) -> Result<std::net::TcpListener> {
        nix::sys::socket::listen(&self.fd, nix::sys::socket::Backlog::new(64)?)
            .with_context(|| format!("listening on {}", self.addr))?;
        Ok(std::net::TcpListener::from(self.fd))
    }
}

fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Link {
    /// Dial `target` and authenticate as the client.
    pub fn connect(target: &str, creds: &Credentials, timeout: Duration) -> Result<Link> {
        Link::client(dial(target, timeout)?, target, creds)
    }

    /// Authenticate as the client on a connection made to `target`.
    pub fn client(tcp: TcpStream, target: &str, creds: &Credentials) -> Result<Link> {
        let handshake = || -> Result<Link> {
            tune(&tcp);
            let mut link = match &creds.tls {
                Some(t) => Link::Tls { peer: tcp.peer_addr()?, app: t.client(tcp.try_clone()?, host_of(target))? },
                None => Link::Tcp(tcp.try_clone()?),
            };
            link.set_read_timeout(Some(HANDSHAKE))?;
            auth::connect(&mut link, creds.key.as_ref())?;
            link.set_read_timeout(None)?;
            Ok(link)
        };
        handshake().with_context(|| format!("authenticating with {target}"))
    }

    /// Authenticate an accepted connection as the server.
    pub fn accept(tcp: TcpStream, creds: &Credentials) -> Result<Link> {
        tune(&tcp);
        let mut link = match &creds.tls {
            Some(t) => Link::Tls { peer: tcp.peer_addr()?, app: t.server(tcp)? },
            None => Link::Tcp(tcp),
        };
        link.set_read_timeout(Some(HANDSHAKE))?;
        auth::accept(&mut link, creds.key.as_ref())?;
        link.set_read_timeout(None)?;
        Ok(link)
    }

    pub fn try_clone(&self) -> std::io::Result<Link> {
        Ok(match self {
            Link::Tcp(s) => Link::Tcp(s.try_clone()?),
            Link::Tls { app, peer } => Link::Tls { app: app.try_clone()?, peer: *peer },
        })
    }

    /// TCP_USER_TIMEOUT of the connection ([`USER_TIMEOUT`] at first).
    pub fn set_user_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Link::Tcp(s) => set_user_timeout(s, t),
            Link::Tls { app, .. } => app.with_tcp(|s| set_user_timeout(s, t)),
        }
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Link::Tcp(s) => s.set_read_timeout(t),
            Link::Tls { app, .. } => app.set_read_timeout(t),
        }
    }

    /// Close both directions (a reader on a clone sees the end).
    pub fn shutdown(&self) {
        let _ = match self {
            Link::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Link::Tls { app, .. } => app.shutdown(),
        };
    }

    pub fn peer(&self) -> String {
        match self {
            Link::Tcp(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            Link::Tls { peer, .. } => format!("{peer} (TLS)"),
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Tcp(s) => s.read(buf),
            Link::Tls { app, .. } => app.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Tcp(s) => s.write(buf),
            Link::Tls { app, .. } => app.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Link::Tcp(s) => s.write_vectored(bufs),
            Link::Tls { app, .. } => app.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(super::host_of("10.0.0.2:7000"), "10.0.0.2");
        assert_eq!(super::host_of("[::1]:7000"), "::1");
        assert_eq!(super::host_of("dest.example:1"), "dest.example");
    }
}
