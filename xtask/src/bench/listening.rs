//! Whether a TCP port listens in our network namespace, asked through
//! sock_diag for listening sockets only. /proc/net/tcp walks the whole
//! connection hash table instead: 4-5 ms of kernel time per read on this
//! machine, so polling it kept a core busy during the very freeze the
//! migration benchmark measures, and saw the port up to 5 ms late.

use std::io::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const HEADER: usize = 16;

/// Whether something listens on `port` (IPv4 or IPv6).
pub fn listening(port: u16) -> bool {
    [libc::AF_INET, libc::AF_INET6].into_iter().any(|family| listens(family as u8, port).unwrap_or(false))
}

fn listens(family: u8, port: u16) -> Result<bool> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // struct nlmsghdr, then struct inet_diag_req_v2 (family, protocol,
    // ext, pad, states, a zeroed inet_diag_sockid: 56 bytes).
    let mut req = [0u8; HEADER + 56];
    req[0..4].copy_from_slice(&((HEADER + 56) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[HEADER] = family;
    req[HEADER + 1] = libc::IPPROTO_TCP as u8;
    req[HEADER + 4..HEADER + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: send(2) of a buffer we own, on our socket (to the kernel).
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 << 10];
    loop {
        // SAFETY: recv(2) into a buffer we own, at most its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= HEADER {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
            if len < HEADER || len > msgs.len() {
                return Err(Error::other("a truncated sock_diag message"));
            }
            match kind {
                NLMSG_DONE => return Ok(false),
                NLMSG_ERROR => return Err(Error::other("sock_diag refused the request")),
                // struct inet_diag_msg: family, state, timer, retrans, then
                // the socket id, which starts with the source port (big endian).
                _ if len >= HEADER + 6 => {
                    let sport = u16::from_be_bytes([msgs[HEADER + 4], msgs[HEADER + 5]]);
                    if sport == port {
                        return Ok(true);
                    }
                }
                _ => {}
            }
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sees_a_listener_and_not_a_bound_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(super::listening(port));
        drop(l);
        assert!(!super::listening(port));
    }
}
