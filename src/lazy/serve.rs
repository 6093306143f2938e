//! The source side: serve the pages a lazy dump left behind, from the
//! frozen task's memory, to authenticated peers only, and only those pages.

use super::ranges::RangeSet;
use crate::net::wire::{read_frame, write_data, write_frame, Frame, Kind, URGENT};
use crate::net::{Credentials, Link};
use crate::ptrace::remote::RemoteMem;
use anyhow::{bail, Result};
use nix::sys::uio::RemoteIoVec;
use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Where served pages come from.
pub trait PageStore: Send + Sync {
    /// Fill `buf` with the bytes at `addr`; refuse anything not servable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()>;
}

/// The lazy pages of a frozen task: nothing else of its memory is served.
pub struct TaskPages {
    pub mem: RemoteMem,
    pub allowed: RangeSet,
}

impl PageStore for TaskPages {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let end = addr + buf.len() as u64;
        let mut at = addr;
        while at < end {
            if !self.allowed.contains(at) {
                bail!("{at:#x} is not a lazy page of this dump");
            }
            at += 4096;
        }
        self.mem.readv(&[RemoteIoVec { base: addr as usize, len: buf.len() }], buf)
    }
}

/// Counters for the report at the end.
#[derive(Default)]
pub struct ServeStats {
    pub urgent: AtomicU64,
    pub bulk: AtomicU64,
    pub bytes: AtomicU64,
}

/// How one connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The peer has all pages (Done).
    Done,
    Disconnected,
}

/// Requests waiting to be answered (urgent, bulk) and how the reader ended.
type Queue = Arc<(Mutex<(VecDeque<Frame>, VecDeque<Frame>, Option<Ended>)>, Condvar)>;

/// What a page client asks right after authenticating, and the answer: the
/// source has made sure its task can never run again (it dies with ferry),
/// so the destination may let its copy run.
pub const ARM: &str = "arm";
pub const ARMED: &str = "armed";

/// Serve one authenticated connection until Done or disconnect.
pub fn serve_conn(stream: Link, store: &dyn PageStore, stats: &ServeStats) -> Ended {
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(_) => return Ended::Disconnected,
    };
    // Requests wait here, urgent ones first.
    let queue: Queue = Arc::new((Mutex::new((VecDeque::new(), VecDeque::new(), None)), Condvar::new()));
    let q = queue.clone();
    std::thread::spawn(move || {
        let mut r = reader;
        let end = loop {
            match read_frame(&mut r) {
                Ok(f) if f.kind == Kind::Get => {
                    let (lock, cv) = &*q;
                    let mut g = lock.lock().unwrap();
                    if f.prio == URGENT {
                        g.0.push_back(f);
                    } else {
                        g.1.push_back(f);
                    }
                    cv.notify_one();
                }
                Ok(f) if f.kind == Kind::Done => break Ended::Done,
                Ok(_) => {}
                Err(_) => break Ended::Disconnected,
            }
        };
        let (lock, cv) = &*q;
        lock.lock().unwrap().2 = Some(end);
        cv.notify_one();
    });
    let mut out = stream;
    let mut buf = Vec::new();
    loop {
        let (lock, cv) = &*queue;
        let mut g = lock.lock().unwrap();
        let req = loop {
            if let Some(f) = g.0.pop_front().or_else(|| g.1.pop_front()) {
                break f;
            }
            if let Some(end) = g.2.take() {
                if end == Ended::Done {
                    let _ = write_frame(&mut out, &Frame::new(Kind::Bye, Vec::new()));
                }
                return end;
            }
            g = cv.wait(g).unwrap();
        };
        drop(g);
        let Ok((addr, len)) = req.words() else { return Ended::Disconnected };
        if len > 16 << 20 {
            return Ended::Disconnected;
        }
        buf.resize(len as usize, 0);
        let sent = match store.read(addr, &mut buf) {
            Ok(()) => {
                let c = if req.prio == URGENT { &stats.urgent } else { &stats.bulk };
                c.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(len, Ordering::Relaxed);
                write_data(&mut out, req.id, addr, &buf)
            }
            Err(e) => {
                let mut f = Frame::new(Kind::Error, format!("{e:#}").into_bytes());
                f.id = req.id;
                write_frame(&mut out, &f)
            }
        };
        if sent.and_then(|_| out.flush().map_err(Into::into)).is_err() {
            return Ended::Disconnected;
        }
    }
}

/// Accept peers on `listener` until one reports Done. Peers that fail
/// authentication are refused with a log line; the right one is still
/// served. Before serving a peer, `arm` runs (on this thread: ptrace calls
/// must come from the tracer) and the peer is told. Returns false if no
/// peer authenticated within `wait`.
pub fn serve(
    listener: TcpListener,
    creds: &Credentials,
    store: Arc<dyn PageStore>,
    wait: Duration,
    mut arm: impl FnMut() -> Result<()>,
) -> Result<(bool, Arc<ServeStats>)> {
    listener.set_nonblocking(true)?;
    let stats = Arc::new(ServeStats::default());
    let done = Arc::new(AtomicBool::new(false));
    let anyone = Arc::new(AtomicBool::new(false));
    let (arm_tx, arm_rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<bool>>();
    let mut armed = false;
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) {
        while let Ok(reply) = arm_rx.try_recv() {
            if !armed {
                armed = arm().map_err(|e| warn!("cannot arm: {e:#}")).is_ok();
            }
            let _ = reply.send(armed);
        }
        match listener.accept() {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nonblocking(false);
                let (creds, store, stats, done, anyone, arm_tx) =
                    (creds.clone(), store.clone(), stats.clone(), done.clone(), anyone.clone(), arm_tx.clone());
                std::thread::spawn(move || {
                    let mut s = match Link::accept(tcp, &creds) {
                        Ok(s) => s,
                        Err(e) => {
                            warn!("refused peer {peer}: {e:#}");
                            return;
                        }
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    match read_frame(&mut s) {
                        Ok(f) if f.kind == Kind::Status && f.text() == ARM => {
                            let (tx, rx) = std::sync::mpsc::channel();
                            if arm_tx.send(tx).is_err() || !rx.recv().unwrap_or(false) {
                                return;
                            }
                            if write_frame(&mut s, &Frame::new(Kind::Status, ARMED.as_bytes().to_vec())).is_err() {
                                return;
                            }
                        }
                        _ => {
                            warn!("peer {peer} did not follow the protocol");
                            return;
                        }
                    }
                    let _ = s.set_read_timeout(None);
                    anyone.store(true, Ordering::SeqCst);
                    info!("serving pages to {peer}");
                    if serve_conn(s, store.as_ref(), &stats) == Ended::Done {
                        done.store(true, Ordering::SeqCst);
                    } else {
                        info!("peer {peer} disconnected");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !anyone.load(Ordering::SeqCst) && !armed && start.elapsed() > wait {
                    return Ok((false, stats));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((true, stats))
}
