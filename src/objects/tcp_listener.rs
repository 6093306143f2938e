//! Listening TCP sockets, IPv4 and IPv6 (dual-stack unless IPV6_V6ONLY):
//! the address and port, the backlog, and the options a program set
//! (SO_REUSEADDR, SO_REUSEPORT, TCP_DEFER_ACCEPT...). Shared by the tree's
//! processes as the kernel shares it (nginx's workers inherit the master's
//! listener: one description, many fds).
//!
//! Connections waiting to be accepted are refused by name, as CRIU does
//! ("in-flight connection"); `--skip-in-flight` lets them go (their
//! clients see the connection reset when the dumped listener goes).

use super::inet::{self, Options};
use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

pub struct TcpListener;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub local: SocketAddr,
    pub backlog: i32,
    #[serde(default)]
    pub options: Options,
}

/// A TCP socket's state by TCP_INFO, from ferry's copy of it.
pub(super) fn tcp_state(fd: &FdProbe) -> Option<(u8, OwnedFd)> {
    let proto = inet::protocol(fd)?;
    if proto != "TCP" && proto != "TCPv6" {
        return None;
    }
    let copy = inet::copy(fd).ok()?;
    let info = inet::tcp_info(copy.as_raw_fd()).ok()?;
    Some((info.state, copy))
}

const LISTEN: u8 = 10;

impl FileKind for TcpListener {
    const NAME: &'static str = "tcp-listener";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        tcp_state(fd).is_some_and(|(s, _)| s == LISTEN)
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        let copy = inet::copy(fd)?;
        let sock = copy.as_raw_fd();
        let info = inet::tcp_info(sock)?;
        let local = inet::local(&copy)?;
        let what = format!("{}: TCP listener on {local}", fd.what());
        if info.unacked > 0 && fd.pidfd.is_some() {
            if !fd.policy.skip_in_flight {
                bail!(
                    "{what}: {} in-flight connection(s) not yet accepted; dump again once the server has accepted \
                     them, or let them go with --skip-in-flight",
                    info.unacked
                );
            }
            reg.warn(format!("{what}: {} connection(s) not yet accepted are let go (--skip-in-flight)", info.unacked));
        }
        let options = inet::read(sock, inet::family(&local), libc::SOCK_STREAM, fd.pidfd.is_none())?;
        Ok(State { local, backlog: info.sacked as i32, options })
    }

    fn open(_file: &FileObject, s: &State, _ctx: &OpenContext) -> Result<OwnedFd> {
        let sock = inet::socket(inet::family(&s.local), libc::SOCK_STREAM)?;
        inet::write(sock.as_raw_fd(), &s.options)?;
        inet::bind_anywhere(&sock, &s.local, &s.options)?;
        // SAFETY: listen takes no pointers.
        if unsafe { libc::listen(sock.as_raw_fd(), s.backlog) } != 0 {
            bail!("listen on {}: {}", s.local, std::io::Error::last_os_error());
        }
        Ok(sock)
    }

    fn describe(s: &State) -> String {
        let opts = inet::describe(&s.options);
        let sep = if opts.is_empty() { "" } else { " " };
        format!("TCP listener on {} (backlog {}){sep}{opts}", s.local, s.backlog)
    }
}
