//! Established TCP connections (`--tcp-established`), by the kernel's
//! repair mode (TCP_REPAIR): dump puts ferry's copy of the socket in repair
//! mode (the task is frozen and the connection's packets are held by the
//! network lock), reads both sequence numbers, both queues without taking
//! from them (the send queue holds what was sent but not yet acknowledged
//! and what was not sent yet), MSS, window scaling, SACK, timestamps and
//! the window. Restore makes a socket in repair mode, sets the sequence
//! numbers, binds and connects it (no SYN in repair mode), sets the TCP
//! options, puts the queues back and the window; just before the tree runs
//! it leaves repair mode (the kernel sends a window probe, the peer answers,
//! unacknowledged data is sent again by the retransmit timer) and the data
//! that was never sent is written as the program would have.
//!
//! A dumped task that is killed (a dump without --leave-running, the
//! source of a migration) closes its sockets while they are still in repair
//! mode: the kernel sends neither FIN nor RST, the peer sees nothing.
//!
//! Only ESTABLISHED connections: the half-closed states are refused by
//! name. `--tcp-close` on restore gives the program its connections
//! aborted (a read answers ECONNABORTED) instead, without a packet sent.

use super::inet::{self, Options};
use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

pub struct TcpConnection;

/// Its kind's name in images.
pub const NAME: &str = "tcp-connection";

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const SIOCOUTQ: libc::c_ulong = libc::TIOCOUTQ;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
const SO_BUF_LOCK: i32 = 72;
const ESTABLISHED: u8 = 1;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    #[serde(default)]
    pub options: Options,
    /// Read in repair mode on the look that counts of a final dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
}

#[derive(Serialize, Deserialize, Default)]
pub struct Repair {
    /// Sequence number of the first byte in the send queue (sent but
    /// unacknowledged first, then not sent).
    pub snd_seq: u32,
    /// Sequence number of the first byte in the receive queue.
    pub rcv_seq: u32,
    /// Bytes in the send queue, of which `notsent` were never sent.
    pub outq: u32,
    pub notsent: u32,
    /// Bytes in the receive queue.
    pub inq: u32,
    pub mss: u32,
    pub sack: bool,
    pub timestamps: bool,
    /// Window scaling, when both ends agreed on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wscale: Option<(u8, u8)>,
    /// TCP_TIMESTAMP, the clock the peer sees in our timestamps.
    pub timestamp: u32,
    pub window: Window,
    /// SO_SNDBUF and SO_RCVBUF, when the program fixed them (SO_BUF_LOCK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sndbuf: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcvbuf: Option<i32>,
}

/// struct tcp_repair_window (linux/tcp.h).
#[repr(C)]
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug)]
pub struct Window {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

fn tcp_set(sock: RawFd, opt: i32, v: i32) -> Result<()> {
    inet::set_int(sock, libc::IPPROTO_TCP, opt, v)
}

fn tcp_get(sock: RawFd, opt: i32, name: &str) -> Result<i32> {
    inet::get_int(sock, libc::IPPROTO_TCP, opt).with_context(|| name.to_string())
}

fn ioctl_int(sock: RawFd, req: libc::c_ulong, name: &str) -> Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: these socket ioctls write one int.
    if unsafe { libc::ioctl(sock, req as _, &mut n) } != 0 {
        bail!("{name}: {}", std::io::Error::last_os_error());
    }
    Ok(n as u32)
}

/// ferry's copies of the sockets a final dump read, held until the task's
/// fate is known: if it lives on (--leave-running, a failed dump, a
/// migration given up) they are just closed; if it is killed, each goes
/// back into repair mode and is closed last, so the kernel sends neither
/// FIN nor RST. (Between the read and the kill the socket is out of
/// repair mode: a ferry killed in the middle leaves the task connections
/// it can use. The task is frozen and the lock holds the packets, so
/// nothing changes them meanwhile.)
#[derive(Default)]
pub struct Repaired(Mutex<Vec<OwnedFd>>);

impl Repaired {
    pub fn push(&self, sock: OwnedFd) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(sock);
    }

    /// The task runs on.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The task is killed: closed without a packet.
    pub fn close_silently(&self) {
        for s in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            if let Err(e) = tcp_set(s.as_raw_fd(), TCP_REPAIR, 1) {
                tracing::warn!("a TCP connection could not go back to repair mode to be closed silently: {e:#}");
            }
        }
    }
}

/// Peek `len` bytes of the queue selected by TCP_REPAIR_QUEUE.
fn peek_queue(sock: RawFd, queue: i32, len: u32, what: &str) -> Result<Vec<u8>> {
    tcp_set(sock, TCP_REPAIR_QUEUE, queue)?;
    let mut buf = vec![0u8; len as usize];
    let mut got = 0usize;
    if len > 0 {
        // SAFETY: recv into our own buffer of that length.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            bail!("{what}: reading its {} queue: {}", queue_name(queue), std::io::Error::last_os_error());
        }
        got = n as usize;
    }
    tcp_set(sock, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    if got != len as usize {
        bail!("{what}: its {} queue holds {len} bytes, {got} could be read", queue_name(queue));
    }
    Ok(buf)
}

fn queue_name(q: i32) -> &'static str {
    if q == TCP_SEND_QUEUE {
        "send"
    } else {
        "receive"
    }
}

/// Queue lengths and sequence numbers, read together.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Counters {
    inq: u32,
    outq: u32,
    notsent: u32,
    write_seq: u32,
    rcv_nxt: u32,
}

fn read_counters(sock: RawFd) -> Result<Counters> {
    let inq = ioctl_int(sock, libc::FIONREAD as _, "SIOCINQ")?;
    let outq = ioctl_int(sock, SIOCOUTQ, "SIOCOUTQ")?;
    let notsent = ioctl_int(sock, SIOCOUTQNSD, "SIOCOUTQNSD")?;
    tcp_set(sock, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let write_seq = tcp_get(sock, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (send)")? as u32;
    tcp_set(sock, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    let rcv_nxt = tcp_get(sock, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (receive)")? as u32;
    tcp_set(sock, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    Ok(Counters { inq, outq, notsent, write_seq, rcv_nxt })
}

/// Both queues with the counters they belong to. Repair mode does not stop
/// the kernel from taking in segments: without a network lock an ACK can
/// shorten the send queue, or data lengthen the receive queue, between two
/// reads, and queues paired with counters read at another moment restore a
/// stream with a gap. So read, peek, read again, and start over until
/// nothing moved.
fn read_queues(sock: RawFd, what: &str) -> Result<(Counters, Vec<u8>, Vec<u8>)> {
    const TRIES: u32 = 50;
    for _ in 0..TRIES {
        let before = read_counters(sock)?;
        let recv = peek_queue(sock, TCP_RECV_QUEUE, before.inq, what);
        let send = peek_queue(sock, TCP_SEND_QUEUE, before.outq, what);
        if read_counters(sock)? == before {
            return Ok((before, recv?, send?));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!("{what}: its queues kept changing while they were read ({TRIES} tries); dump with the network locked")
}

fn read_repair(sock: RawFd, what: &str, reg: &mut dyn Registry) -> Result<Repair> {
    let (Counters { inq, outq, notsent, write_seq, rcv_nxt }, recv, send) = read_queues(sock, what)?;
    let info = inet::tcp_info(sock)?;
    let mss = tcp_get(sock, libc::TCP_MAXSEG, "TCP_MAXSEG")? as u32;
    let timestamps = info.options & inet::TCPI_OPT_TIMESTAMPS != 0;
    let timestamp = if timestamps { tcp_get(sock, TCP_TIMESTAMP, "TCP_TIMESTAMP")? as u32 } else { 0 };
    let mut window = Window::default();
    let mut len = std::mem::size_of::<Window>() as libc::socklen_t;
    // SAFETY: struct tcp_repair_window into a local of its size.
    let r = unsafe {
        libc::getsockopt(sock, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, (&mut window as *mut Window).cast(), &mut len)
    };
    if r != 0 {
        bail!("TCP_REPAIR_WINDOW: {}", std::io::Error::last_os_error());
    }
    let locks = inet::get_int(sock, libc::SOL_SOCKET, SO_BUF_LOCK).unwrap_or(0);
    let sndbuf = (locks & 1 != 0).then(|| inet::get_int(sock, libc::SOL_SOCKET, libc::SO_SNDBUF)).transpose()?;
    let rcvbuf = (locks & 2 != 0).then(|| inet::get_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUF)).transpose()?;
    let mut data = recv;
    data.extend_from_slice(&send);
    reg.data(data);
    Ok(Repair {
        snd_seq: write_seq.wrapping_sub(outq),
        rcv_seq: rcv_nxt.wrapping_sub(inq),
        outq,
        notsent,
        inq,
        mss,
        sack: info.options & inet::TCPI_OPT_SACK != 0,
        timestamps,
        wscale: (info.options & inet::TCPI_OPT_WSCALE != 0).then_some((info.wscale & 0xf, info.wscale >> 4)),
        timestamp,
        window,
        sndbuf,
        rcvbuf,
    })
}

impl FileKind for TcpConnection {
    const NAME: &'static str = NAME;
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        super::tcp_listener::tcp_state(fd).is_some_and(|(s, _)| s != 10)
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        let copy = inet::copy(fd)?;
        let sock = copy.as_raw_fd();
        let info = inet::tcp_info(sock)?;
        let local = inet::local(&copy)?;
        let Some(peer) = inet::peer(&copy)? else {
            bail!(
                "{}: TCP socket on {local} in state {}: only listening and established TCP sockets are supported",
                fd.what(),
                inet::tcp_state_name(info.state)
            );
        };
        let what = format!("{}: TCP connection {local} -> {peer}", fd.what());
        if info.state != ESTABLISHED {
            bail!(
                "{what} is {}: only ESTABLISHED connections are supported yet (half-closed ones are not)",
                inet::tcp_state_name(info.state)
            );
        }
        if !fd.policy.tcp_established {
            bail!("{what}: dump with --tcp-established to take established connections along");
        }
        let options = inet::read(sock, inet::family(&local), libc::SOCK_STREAM, fd.pidfd.is_none())?;
        let mut state = State { local, peer, options, repair: None };
        if fd.policy.repair && fd.pidfd.is_some() {
            tcp_set(sock, TCP_REPAIR, 1).with_context(|| format!("{what}: entering repair mode"))?;
            let read = read_repair(sock, &what, reg);
            // Out again at once, without a window probe.
            tcp_set(sock, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP).with_context(|| format!("{what}: leaving repair mode"))?;
            state.repair = Some(read?);
            reg.repaired(copy);
        }
        Ok(state)
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        let r = s.repair.as_ref().context("the connection's state was not read (an image of a pre-dump?)")?;
        let sock = inet::socket(inet::family(&s.local), libc::SOCK_STREAM)?;
        let fd = sock.as_raw_fd();
        // Before repair mode: SO_REUSEADDR would undo the forced reuse
        // that lets a repaired socket bind beside its listener.
        inet::write(fd, &s.options)?;
        tcp_set(fd, TCP_REPAIR, 1).context("entering repair mode")?;
        tcp_set(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
        tcp_set(fd, TCP_QUEUE_SEQ, r.snd_seq as i32)?;
        tcp_set(fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        tcp_set(fd, TCP_QUEUE_SEQ, r.rcv_seq as i32)?;
        tcp_set(fd, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
        // Repair mode binds beside the listener that owns the port.
        inet::bind_anywhere(&sock, &s.local, &s.options)?;
        inet::connect(&sock, &s.peer)?;
        if ctx.tcp_close {
            // In repair mode a disconnect sends nothing: the program reads
            // ECONNABORTED.
            let unspec = libc::sockaddr { sa_family: libc::AF_UNSPEC as u16, sa_data: [0; 14] };
            // SAFETY: connect with a local AF_UNSPEC address.
            unsafe { libc::connect(fd, &unspec, std::mem::size_of::<libc::sockaddr>() as u32) };
            tcp_set(fd, TCP_REPAIR, 0)?;
            return Ok(sock);
        }
        set_tcp_options(fd, r)?;
        let data = ctx.data(file)?;
        if data.len() != (r.inq + r.outq) as usize {
            bail!("{} bytes of queued data, the image says {} + {}", data.len(), r.inq, r.outq);
        }
        let (recv, send) = data.split_at(r.inq as usize);
        // Room for the queues (SO_*BUFFORCE locks the sizes; unlocked
        // again below unless the program had fixed them).
        inet::set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (r.inq as i32).max(1 << 16))?;
        inet::set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (r.outq as i32).max(1 << 16))?;
        write_queue(fd, TCP_RECV_QUEUE, recv)?;
        write_queue(fd, TCP_SEND_QUEUE, &send[..(r.outq - r.notsent) as usize])?;
        let w = r.window;
        // SAFETY: struct tcp_repair_window from a local.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                TCP_REPAIR_WINDOW,
                (&w as *const Window).cast(),
                std::mem::size_of::<Window>() as u32,
            )
        };
        if rc != 0 {
            bail!("TCP_REPAIR_WINDOW {w:?}: {}", std::io::Error::last_os_error());
        }
        match (r.sndbuf, r.rcvbuf) {
            (None, None) => inet::set_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, 0)?,
            (snd, rcv) => {
                if let Some(v) = snd {
                    inet::set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v / 2)?;
                }
                if let Some(v) = rcv {
                    inet::set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v / 2)?;
                }
                inet::set_int(
                    fd,
                    libc::SOL_SOCKET,
                    SO_BUF_LOCK,
                    i32::from(snd.is_some()) | (2 * i32::from(rcv.is_some())),
                )?;
            }
        }
        Ok(sock)
    }

    fn go_live(file: &FileObject, s: &State, fd: &OwnedFd, ctx: &super::LiveContext) -> Result<()> {
        let Some(r) = &s.repair else { return Ok(()) };
        if ctx.tcp_close {
            return Ok(());
        }
        let sock = fd.as_raw_fd();
        tcp_set(sock, TCP_REPAIR, 0).context("leaving repair mode")?;
        if r.notsent > 0 {
            let data = ctx.images.read_verified(&file.data)?;
            let unsent = &data[(r.inq + r.outq - r.notsent) as usize..];
            send_all(sock, unsent).context("writing the data it had not sent yet")?;
        }
        Ok(())
    }

    fn describe(s: &State) -> String {
        let mut out = format!("TCP connection {} -> {}", s.local, s.peer);
        if let Some(r) = &s.repair {
            out += &format!(
                ", {} bytes to read, {} to send ({} not sent yet), mss {}{}{}",
                r.inq,
                r.outq,
                r.notsent,
                r.mss,
                if r.sack { " sack" } else { "" },
                if r.timestamps { " timestamps" } else { "" }
            );
        }
        let opts = inet::describe(&s.options);
        if !opts.is_empty() {
            out += &format!(" {opts}");
        }
        out
    }
}

fn set_tcp_options(fd: RawFd, r: &Repair) -> Result<()> {
    // struct tcp_repair_opt { u32 opt_code; u32 opt_val; }
    const TCPOPT_MAXSEG: u32 = 2;
    const TCPOPT_WINDOW: u32 = 3;
    const TCPOPT_SACK_PERM: u32 = 4;
    const TCPOPT_TIMESTAMP: u32 = 8;
    let mut opts: Vec<[u32; 2]> = vec![[TCPOPT_MAXSEG, r.mss]];
    if let Some((snd, rcv)) = r.wscale {
        opts.push([TCPOPT_WINDOW, u32::from(snd) | (u32::from(rcv) << 16)]);
    }
    if r.sack {
        opts.push([TCPOPT_SACK_PERM, 0]);
    }
    if r.timestamps {
        opts.push([TCPOPT_TIMESTAMP, 0]);
    }
    // SAFETY: an array of struct tcp_repair_opt from a local vector.
    let rc = unsafe {
        libc::setsockopt(fd, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts.as_ptr().cast(), (opts.len() * 8) as u32)
    };
    if rc != 0 {
        bail!("TCP_REPAIR_OPTIONS: {}", std::io::Error::last_os_error());
    }
    if r.timestamps {
        tcp_set(fd, TCP_TIMESTAMP, r.timestamp as i32)?;
    }
    Ok(())
}

/// Put `data` in a queue as repair mode does: the receive queue as if it
/// had arrived, the send queue as if sent and not yet acknowledged.
fn write_queue(fd: RawFd, queue: i32, data: &[u8]) -> Result<()> {
    tcp_set(fd, TCP_REPAIR_QUEUE, queue)?;
    send_all(fd, data).with_context(|| format!("filling its {} queue ({} bytes)", queue_name(queue), data.len()))?;
    tcp_set(fd, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
}

fn send_all(fd: RawFd, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        // SAFETY: send from a live buffer.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: poll on one local pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
                continue;
            }
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("send: {e}");
        }
        data = &data[n as usize..];
    }
    Ok(())
}
