//! UDP sockets, IPv4 and IPv6: bound (or not), connected (or not), and the
//! options a program set.
//!
//! Datagrams waiting in the receive queue are dropped, as CRIU drops them:
//! a restored socket cannot make them come from their senders again, and
//! UDP promises no delivery. The dump says how many bytes it lets go.
//! Multicast memberships cannot be read back and are not kept.

use super::inet::{self, Options};
use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

pub struct UdpSocket;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// IPv6 or not, for a socket never bound.
    pub v6: bool,
    /// Its address, when bound (by bind, connect or a first send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    #[serde(default)]
    pub options: Options,
}

impl FileKind for UdpSocket {
    const NAME: &'static str = "udp-socket";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        inet::protocol(fd).is_some_and(|p| p == "UDP" || p == "UDPv6")
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        let copy = inet::copy(fd)?;
        let v6 = inet::protocol(fd).as_deref() == Some("UDPv6");
        let addr = inet::local(&copy)?;
        let local = (addr.port() != 0).then_some(addr);
        let peer = inet::peer(&copy)?;
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let options = inet::read(copy.as_raw_fd(), family, libc::SOCK_DGRAM, fd.pidfd.is_none())?;
        if fd.pidfd.is_some() {
            let queued = super::readable(&copy)?;
            if queued > 0 {
                reg.warn(format!("{}: UDP socket on {addr}: a waiting datagram is dropped (as CRIU does)", fd.what()));
            }
        }
        Ok(State { v6, local, peer, options })
    }

    fn open(_file: &FileObject, s: &State, _ctx: &OpenContext) -> Result<OwnedFd> {
        let family = if s.v6 { libc::AF_INET6 } else { libc::AF_INET };
        let sock = inet::socket(family, libc::SOCK_DGRAM)?;
        inet::write(sock.as_raw_fd(), &s.options)?;
        if let Some(local) = &s.local {
            inet::bind_anywhere(&sock, local, &s.options)?;
        }
        if let Some(peer) = &s.peer {
            inet::connect(&sock, peer)?;
        }
        Ok(sock)
    }

    fn describe(s: &State) -> String {
        let family = if s.v6 { "UDPv6" } else { "UDP" };
        let mut out = match &s.local {
            Some(a) => format!("{family} socket on {a}"),
            None => format!("{family} socket, not bound"),
        };
        if let Some(p) = &s.peer {
            out += &format!(" connected to {p}");
        }
        let opts = inet::describe(&s.options);
        if !opts.is_empty() {
            out += &format!(" {opts}");
        }
        out
    }
}
