//! The source side: serve the pages a lazy dump left behind, from the
//! frozen task's memory, to authenticated peers only, and only pages the peer
//! may need (lazy ones, and pre-copied ones again for a damaged local copy).

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
    /// Fill `buf` with the bytes of each (addr, len) piece of `process` in
    /// turn; refuse anything not servable.
    fn read(&self, process: u64, pieces: &[(u64, u64)], buf: &mut [u8]) -> Result<()>;
}

/// The lazy pages of a frozen tree, by process (its PID in the tree's
/// namespace): nothing else of its memory is served.
pub struct TreePages {
    pub processes: std::collections::HashMap<u64, TaskPages>,
}

impl PageStore for TreePages {
    fn read(&self, process: u64, pieces: &[(u64, u64)], buf: &mut [u8]) -> Result<()> {
        match self.processes.get(&process) {
            Some(t) => t.read(pieces, buf),
            None => bail!("process {process} has no lazy pages in this dump"),
        }
    }
}

/// The lazy pages of one frozen process.
pub struct TaskPages {
    pub mem: RemoteMem,
    pub allowed: RangeSet,
}

impl TaskPages {
    fn read(&self, pieces: &[(u64, u64)], buf: &mut [u8]) -> Result<()> {
        let page = crate::page_size();
        for &(addr, len) in pieces {
            let mut at = addr;
            while at < addr + len {
                if !self.allowed.contains(at) {
                    bail!("{at:#x} is not a lazy page of this dump");
                }
                at += page;
            }
        }
        let iovs: Vec<RemoteIoVec> =
            pieces.iter().map(|&(addr, len)| RemoteIoVec { base: addr as usize, len: len as usize }).collect();
        self.mem.readv(&iovs, buf)
    }
}

/// Most pieces one request may ask for (one readv).
pub const MAX_PIECES: usize = 1024;

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

/// Bulk requests waiting to be answered, and how the reader ended.
type Queue = (Mutex<(VecDeque<Frame>, Option<Ended>)>, Condvar);

/// Answer one request on `out`; false if the connection is unusable.
fn answer(req: &Frame, store: &dyn PageStore, stats: &ServeStats, out: &Mutex<Link>, buf: &mut Vec<u8>) -> bool {
    let Ok((process, pieces)) = req.pieces() else { return false };
    let len: u64 = pieces.iter().map(|p| p.1).sum();
    if len > 16 << 20 || pieces.len() > MAX_PIECES {
        return false;
    }
    buf.resize(len as usize, 0);
    let mut out = out.lock().unwrap();
    let sent = match store.read(process, &pieces, buf) {
        Ok(()) => {
            let c = if req.prio == URGENT { &stats.urgent } else { &stats.bulk };
            c.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(len, Ordering::Relaxed);
            write_data(&mut *out, req.id, pieces[0].0, buf)
        }
        Err(e) => {
            let mut f = Frame::new(Kind::Error, format!("{e:#}").into_bytes());
            f.id = req.id;
            write_frame(&mut *out, &f)
        }
    };
    sent.and_then(|_| out.flush().map_err(Into::into)).is_ok()
}

/// What a page client asks right after authenticating, and the answer: the
/// source has made sure its task can never run again (it dies with ferry),
/// so the destination may let its copy run.
pub const ARM: &str = "arm";
pub const ARMED: &str = "armed";

/// Serve one authenticated connection until Done or disconnect. A fault's
/// request is answered by the reading thread at once; bulk requests queue
/// for a writer thread at background priority, so a fault never waits for
/// bulk work that has not started yet.
pub fn serve_conn(stream: Link, store: &dyn PageStore, stats: &ServeStats) -> Ended {
    let Ok(mut reader) = stream.try_clone() else { return Ended::Disconnected };
    let out = Mutex::new(stream);
    let queue: Queue = (Mutex::new((VecDeque::new(), None)), Condvar::new());
    let finish = |end: Ended| {
        let (lock, cv) = &queue;
        let mut g = lock.lock().unwrap();
        g.1.get_or_insert(end);
        cv.notify_one();
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            super::background_thread(true);
            let mut buf = Vec::new();
            let (lock, cv) = &queue;
            loop {
                let mut g = lock.lock().unwrap();
                let req = loop {
                    if let Some(f) = g.0.pop_front() {
                        break f;
                    }
                    if g.1.is_some() {
                        return;
                    }
                    g = cv.wait(g).unwrap();
                };
                drop(g);
                if !answer(&req, store, stats, &out, &mut buf) {
                    finish(Ended::Disconnected);
                    return;
                }
            }
        });
        let mut buf = Vec::new();
        let end = loop {
            match read_frame(&mut reader) {
                Ok(f) if f.kind == Kind::Get && f.prio == URGENT => {
                    if !answer(&f, store, stats, &out, &mut buf) {
                        break Ended::Disconnected;
                    }
                }
                Ok(f) if f.kind == Kind::Get => {
                    let (lock, cv) = &queue;
                    lock.lock().unwrap().0.push_back(f);
                    cv.notify_one();
                }
                Ok(f) if f.kind == Kind::Done => break Ended::Done,
                Ok(_) => {}
                Err(_) => break Ended::Disconnected,
            }
        };
        finish(end);
    });
    // The writer is gone: every request read was answered (or the line is dead).
    let end = queue.0.lock().unwrap().1.take().unwrap_or(Ended::Disconnected);
    if end == Ended::Done {
        let _ = write_frame(&mut *out.lock().unwrap(), &Frame::new(Kind::Bye, Vec::new()));
    }
    end
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
    let stats = Arc::new(ServeStats::default());
    let done = Arc::new(AtomicBool::new(false));
    let anyone = Arc::new(AtomicBool::new(false));
    let peers = crate::net::admit(listener, "page source", creds);
    let mut armed = false;
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) {
        let crate::net::Admitted { link: mut s, peer, hello } = match peers.next_timeout(Duration::from_millis(2)) {
            Ok(a) => a,
            // The listener failed (as an accept error did before).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("the page source stopped listening"),
            Err(_) => {
                if !anyone.load(Ordering::SeqCst) && !armed && start.elapsed() > wait {
                    return Ok((false, stats));
                }
                continue;
            }
        };
        if hello != ARM {
            warn!("peer {peer} did not follow the protocol (asked for {hello:?})");
            continue;
        }
        // Armed here, on the tracer's thread, before the first page goes.
        if !armed {
            armed = arm().map_err(|e| warn!("cannot arm: {e:#}")).is_ok();
        }
        if !armed || write_frame(&mut s, &Frame::new(Kind::Status, ARMED.as_bytes().to_vec())).is_err() {
            continue;
        }
        let (store, stats, done, anyone) = (store.clone(), stats.clone(), done.clone(), anyone.clone());
        std::thread::spawn(move || {
            anyone.store(true, Ordering::SeqCst);
            info!("serving pages to {peer}");
            if serve_conn(s, store.as_ref(), &stats) == Ended::Done {
                done.store(true, Ordering::SeqCst);
            } else {
                info!("peer {peer} disconnected");
            }
        });
    }
    Ok((true, stats))
}
