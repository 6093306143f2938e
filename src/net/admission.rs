//! Listening without being held up: every accepted connection proves
//! itself on its own thread, many at once, each within a deadline, so a
//! peer that connects and says nothing (or dribbles a byte at a time)
//! cannot keep the right peer waiting. The number of handshakes in
//! progress is bounded: when it is reached, the oldest is cut to make room.
//! Used by every listening endpoint: the page server, the lazy dump's page
//! source, `receive`, and the lazy-pages daemon's handoff socket.

use anyhow::Result;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Handshakes in progress at once. A hundred silent peers still leave room
/// for the right one; more than this and the oldest is cut.
pub const MAX_PENDING: usize = 256;
/// How long one peer may take from connect to proven (TLS, the shared-key
/// exchange and its first request together).
pub const DEADLINE: Duration = Duration::from_secs(5);
/// A handshake's thread needs little stack (rustls and HMAC included).
const STACK: usize = 512 << 10;

/// A listening socket that hands out connections.
pub trait Listen: AsFd + Send + 'static {
    type Conn: AsFd + Send + 'static;
    fn accept_conn(&self) -> std::io::Result<Self::Conn>;
    fn set_nonblock(&self) -> std::io::Result<()>;
}

/// TCP and unix listeners work alike.
macro_rules! listen_impl {
    ($listener:ty, $conn:ty) => {
        impl Listen for $listener {
            type Conn = $conn;
            fn accept_conn(&self) -> std::io::Result<Self::Conn> {
                let (c, _) = self.accept()?;
                c.set_nonblocking(false)?;
                Ok(c)
            }
            fn set_nonblock(&self) -> std::io::Result<()> {
                self.set_nonblocking(true)
            }
        }
    };
}

listen_impl!(std::net::TcpListener, std::net::TcpStream);
listen_impl!(std::os::unix::net::UnixListener, std::os::unix::net::UnixStream);

struct Pending {
    id: u64,
    since: Instant,
    /// A duplicate of the connection, to cut it from outside the handshake.
    fd: OwnedFd,
}

#[derive(Default)]
struct Table {
    pending: Mutex<VecDeque<Pending>>,
    next: AtomicU64,
}

impl Table {
    fn cut(p: &Pending) {
        let _ = nix::sys::socket::shutdown(p.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }

    /// Register a new handshake; cut the oldest if the table is full.
    fn enter(&self, fd: OwnedFd) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut q = self.pending.lock().unwrap();
        while q.len() >= MAX_PENDING {
            if let Some(old) = q.pop_front() {
                Table::cut(&old);
            }
        }
        q.push_back(Pending { id, since: Instant::now(), fd });
        id
    }

    fn leave(&self, id: u64) {
        self.pending.lock().unwrap().retain(|p| p.id != id);
    }

    /// Cut every handshake older than the deadline (or all of them).
    fn reap(&self, all: bool) {
        let mut q = self.pending.lock().unwrap();
        q.retain(|p| {
            let keep = !all && p.since.elapsed() < DEADLINE;
            if !keep {
                Table::cut(p);
            }
            keep
        });
    }
}

/// The proven peers of one listener, in the order they proved themselves.
/// Dropping it stops listening and cuts the handshakes still going.
pub struct Admission<T> {
    rx: Receiver<T>,
    stop: Arc<AtomicBool>,
    /// The write end of a pipe the accept loop polls: closing it wakes the
    /// loop at once when the endpoint is done (no poll timeout to sit out).
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Admission<T> {
    /// Listen on `listener`; each connection goes through `handshake` on a
    /// thread of its own. `what` names the endpoint in log lines.
    pub fn start<L, H>(listener: L, what: &'static str, handshake: H) -> Admission<T>
    where
        L: Listen,
        H: Fn(L::Conn) -> Result<T> + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let handshake = Arc::new(handshake);
        let flag = stop.clone();
        let (woken, wake) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok((r, w)) => (Some(r), Some(w)),
            // Without a pipe the loop still notices `stop` within its poll timeout.
            Err(_) => (None, None),
        };
        let thread = std::thread::spawn(move || accept_loop(listener, what, handshake, tx, flag, woken));
        Admission { rx, stop, wake, thread: Some(thread) }
    }

    /// The next proven peer; None once the listener failed.
    pub fn next(&self) -> Option<T> {
        self.rx.recv().ok()
    }

    pub fn next_timeout(&self, wait: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(wait)
    }
}

impl<T> Drop for Admission<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop<L, T, H>(
    listener: L,
    what: &'static str,
    handshake: Arc<H>,
    tx: mpsc::Sender<T>,
    stop: Arc<AtomicBool>,
    woken: Option<OwnedFd>,
) where
    L: Listen,
    T: Send + 'static,
    H: Fn(L::Conn) -> Result<T> + Send + Sync + 'static,
{
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let table = Arc::new(Table::default());
    if let Err(e) = listener.set_nonblock() {
        tracing::warn!("{what}: {e}");
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        table.reap(false);
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(w) = &woken {
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) => continue,
            Ok(_) if fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty()) => break,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("{what}: poll: {e}");
                break;
            }
        }
        let conn = match listener.accept_conn() {
            Ok(c) => c,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => continue,
            // Out of fds or a connection reset before accept: the listener
            // itself is fine; give the table a moment to drain.
            Err(e) => {
                tracing::warn!("{what}: accepting: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(dup) = conn.as_fd().try_clone_to_owned() else { continue };
        let id = table.enter(dup);
        let (table2, handshake, tx, stopping) = (table.clone(), handshake.clone(), tx.clone(), stop.clone());
        let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(conn.as_fd().as_raw_fd())
            .ok()
            .map(|a| a.to_string())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "a local peer".into());
        let since = Instant::now();
        let spawned = std::thread::Builder::new().name("admit".into()).stack_size(STACK).spawn(move || {
            let result = handshake(conn);
            table2.leave(id);
            match result {
                Ok(t) => {
                    let _ = tx.send(t);
                }
                // Cut because the endpoint is done: nothing to say.
                Err(_) if stopping.load(Ordering::SeqCst) => {}
                Err(_) if since.elapsed() >= DEADLINE => {
                    tracing::warn!("{what}: cut {peer}: not proven within {} s", DEADLINE.as_secs())
                }
                Err(e) => tracing::warn!("{what}: refused {e:#}"),
            }
        });
        if spawned.is_err() {
            table.leave(id);
        }
    }
    table.reap(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A peer says "ok" first; silent ones must not delay it.
    fn hello(mut s: TcpStream) -> Result<TcpStream> {
        let mut b = [0u8; 2];
        s.read_exact(&mut b)?;
        anyhow::ensure!(&b == b"ok", "peer: wrong hello");
        Ok(s)
    }

    #[test]
    fn silent_peers_do_not_delay_the_right_one() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let a = Admission::start(l, "test", hello);
        let silent: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let t0 = Instant::now();
        let mut right = TcpStream::connect(addr).unwrap();
        right.write_all(b"ok").unwrap();
        assert!(a.next_timeout(Duration::from_secs(1)).is_ok());
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(silent);
    }

    #[test]
    fn a_full_table_cuts_the_oldest() {
        let t = Table::default();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        for _ in 0..MAX_PENDING + 3 {
            t.enter(a.as_fd().try_clone_to_owned().unwrap());
        }
        assert_eq!(t.pending.lock().unwrap().len(), MAX_PENDING);
        t.reap(true);
        assert!(t.pending.lock().unwrap().is_empty());
    }
}
