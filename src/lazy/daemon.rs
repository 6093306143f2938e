//! The lazy-pages daemon's work: serve the restored task's page faults
//! from the source at once (urgent requests), push every other lazy page
//! in the background from the first moment (bulk requests, never in the
//! way of a fault), follow the task's mremap/munmap/madvise/fork, and
//! finish when nothing is left.

use super::client::PageClient;
use super::local::{LocalPages, TAG};
use super::ranges::RangeSet;
use crate::net::wire::{BULK, URGENT};
use crate::uffd::{Copied, Event, Uffd};
use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// One address space being filled (a process of the tree, or a child one
/// forked during post-copy).
struct Space {
    uffd: Arc<Uffd>,
    /// Whose pages on the source fill it (its PID in the tree's
    /// namespace; a forked child's are its parent's).
    process: u64,
    /// A pidfd of the process, to notice its exit (none for forked children:
    /// their end shows as the userfaultfd going away).
    pidfd: Option<Arc<OwnedFd>>,
    /// Lazy pages nobody fetched yet.
    pending: RangeSet,
    /// Pre-copied pages not placed yet, and where they are.
    local: RangeSet,
    files: Option<Arc<LocalPages>>,
    /// Pages being fetched right now (local ones tagged with [`TAG`]).
    inflight: RangeSet,
    /// Every lazy page of this space (fetched or not), to tell "already
    /// here" from "never had data".
    lazy: RangeSet,
    gone: bool,
}

impl Space {
    fn finished(&self) -> bool {
        self.gone || (self.pending.is_empty() && self.local.is_empty() && self.inflight.is_empty())
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub faults: u64,
    /// Time from reading a fault to the page being in place, per fault.
    pub fault_latencies: Vec<Duration>,
    pub pushed_bytes: u64,
    /// Pre-copied pages placed from the local images, and the faults
    /// among them.
    pub local_bytes: u64,
    pub local_faults: u64,
    /// Of the pre-copied pages, those fetched from the source instead
    /// (their block of the local images was damaged).
    pub refetched_bytes: u64,
    pub zero_pages: u64,
    pub forks: u64,
    pub processes: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn stats(&self) -> crate::image::stats::LazyStats {
        let mut s =
            crate::image::stats::LazyStats::new(self.faults, &self.fault_latencies, self.pushed_bytes, self.elapsed);
        s.processes = self.processes;
        s.forks = self.forks;
        s.local_bytes = self.local_bytes;
        s.local_faults = self.local_faults;
        s.refetched_bytes = self.refetched_bytes;
        s
    }
}

const CHUNK: u64 = 256 << 10;
/// Scattered pages: at most this many separate pieces per bulk job.
const MAX_PIECES: usize = super::serve::MAX_PIECES;
const PUSHERS: usize = 2;
/// Local pages per copy: large, but short enough that a fault waiting for
/// the lock behind one is not held up for long.
const LOCAL_CHUNK: u64 = 1 << 20;

struct Shared {
    spaces: Mutex<Vec<Space>>,
    client: Arc<PageClient>,
    page: u64,
    pushed: AtomicU64,
    local: AtomicU64,
    /// Pre-copied pages fetched from the source: their local copy was damaged.
    refetched: AtomicU64,
}

/// Copy what of `[dst, dst + data.len())` is still wanted (still in
/// `inflight`) into the space, then forget it. Returns false if the layout
/// is changing and the caller must let the event reader run, then retry.
fn place(sp: &mut Space, dst: u64, data: &[u8], page: u64) -> Result<bool> {
    let end = dst + data.len() as u64;
    let wanted: Vec<(u64, u64)> = sp.inflight.overlapping(dst, end).into_iter().map(|(s, e, _)| (s, e)).collect();
    for (s, e) in wanted {
        let mut at = s;
        while at < e {
            let slice = &data[(at - dst) as usize..(e - dst) as usize];
            match sp.uffd.copy(at, slice, true)? {
                Copied::All => at = e,
                // Faulted in meanwhile (zero page or not): keep what is there.
                Copied::Exists(n) => at += n as u64 + page,
                // The task exited.
                Copied::Gone => {
                    sp.gone = true;
                    at = e;
                }
                // Lazy ranges join across areas that touch, but one copy
                // must stay within one area: go on page by page. A page in
                // no area at all was unmapped: nobody can read it.
                Copied::NoArea(n) => {
                    at += n as u64;
                    match sp.uffd.copy(at, &data[(at - dst) as usize..(at - dst + page) as usize], true)? {
                        Copied::Gone => {
                            sp.gone = true;
                            at = e;
                        }
                        Copied::Again(_) => {
                            sp.inflight.remove(s, at);
                            return Ok(false);
                        }
                        _ => at += page,
                    }
                }
                Copied::Again(n) => {
                    sp.inflight.remove(s, at + n as u64);
                    return Ok(false);
                }
            }
        }
        sp.inflight.remove(s, e);
    }
    Ok(true)
}

/// Place fetched data at `dst`, retrying while the layout changes.
fn place_when_settled(sh: &Shared, space: usize, dst: u64, data: &[u8]) -> Result<()> {
    loop {
        let mut spaces = sh.spaces.lock().unwrap();
        if place(&mut spaces[space], dst, data, sh.page)? {
            return Ok(());
        }
        drop(spaces);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One background job: a space and pieces `(dst, end, src)` of it,
/// together at most CHUNK bytes, fetched in one round trip.
type PushJob = (usize, Vec<(u64, u64, u64)>);

/// Move up to `max` bytes (at most MAX_PIECES pieces) from the start of
/// `from` to `inflight`; returns the pieces `(dst, end, location)`.
fn take_pieces(from: &mut RangeSet, inflight: &mut RangeSet, max: u64) -> Vec<(u64, u64, u64)> {
    let mut pieces = Vec::new();
    let mut left = max;
    while left > 0 && pieces.len() < MAX_PIECES {
        let Some((s, e, src)) = from.take_first(left) else { break };
        inflight.insert(s, e, src);
        left -= e - s;
        pieces.push((s, e, src));
    }
    pieces
}

/// The next job; Some(None) while the last fetches are still landing, None
/// when every space is finished.
fn next_push(sh: &Shared) -> Option<Option<PushJob>> {
    let mut spaces = sh.spaces.lock().unwrap();
    if spaces.iter().all(Space::finished) {
        return None;
    }
    Some(spaces.iter_mut().enumerate().find_map(|(i, sp)| {
        let pieces = take_pieces(&mut sp.pending, &mut sp.inflight, CHUNK);
        (!pieces.is_empty()).then_some((i, pieces))
    }))
}

fn push_loop(sh: Arc<Shared>) -> Result<()> {
    super::background_thread(true);
    while let Some(job) = next_push(&sh) {
        match job {
            Some((i, pieces)) => {
                let wanted: Vec<(u64, u64)> = pieces.iter().map(|&(s, e, src)| (src, e - s)).collect();
                let process = sh.spaces.lock().unwrap()[i].process;
                let got = sh.client.fetch_many(process, &wanted, BULK)?;
                let mut at = 0;
                for &(s, e, _) in &pieces {
                    let len = (e - s) as usize;
                    place_when_settled(&sh, i, s, &got[at..at + len])?;
                    at += len;
                    sh.pushed.fetch_add(e - s, Ordering::Relaxed);
                }
            }
            // Everything is requested; wait for the last fetches to land.
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    Ok(())
}

/// One local job: a space, its files, and pieces `(dst, end, location)`.
type LocalJob = (usize, Arc<LocalPages>, Vec<(u64, u64, u64)>);

fn next_local(sh: &Shared) -> Option<Option<LocalJob>> {
    let mut spaces = sh.spaces.lock().unwrap();
    if spaces.iter().all(Space::finished) {
        return None;
    }
    Some(spaces.iter_mut().enumerate().find_map(|(i, sp)| {
        let files = sp.files.clone()?;
        let pieces = take_pieces(&mut sp.local, &mut sp.inflight, LOCAL_CHUNK);
        (!pieces.is_empty()).then_some((i, files, pieces))
    }))
}

/// Place pre-copied pages from the local images, in address order, beside
/// the faults and the network pushers; a damaged block's pages come from
/// the source.
fn local_loop(sh: Arc<Shared>) -> Result<()> {
    super::background_thread(true);
    // UFFDIO_COPY straight from the mapped pages file ran at a third of
    // the speed of a copy from a buffer (measured here on tmpfs: 1 GiB in
    // 10-12 s against 3.5 s), so the pages go through one buffer.
    let mut buf = Vec::with_capacity(LOCAL_CHUNK as usize);
    while let Some(job) = next_local(&sh) {
        match job {
            Some((i, files, pieces)) => {
                for (s, e, at) in pieces.into_iter().flat_map(LocalPages::by_block) {
                    match files.bytes(at, e - s) {
                        Some(b) => {
                            buf.clear();
                            buf.extend_from_slice(b);
                            place_when_settled(&sh, i, s, &buf)?;
                        }
                        None => {
                            let process = sh.spaces.lock().unwrap()[i].process;
                            for (dst, src, len) in from_source(&files, s, e, at, CHUNK)? {
                                let got = sh.client.fetch_many(process, &[(src, len)], BULK)?;
                                place_when_settled(&sh, i, dst, &got)?;
                            }
                            sh.refetched.fetch_add(e - s, Ordering::Relaxed);
                        }
                    }
                    sh.local.fetch_add(e - s, Ordering::Relaxed);
                }
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    Ok(())
}

/// Local pages `[s, e)` at tagged location `at` as pieces (task address,
/// source address, length) of at most `max` bytes, to fetch from the
/// source instead.
fn from_source(files: &LocalPages, s: u64, e: u64, at: u64, max: u64) -> Result<Vec<(u64, u64, u64)>> {
    let mut out = Vec::new();
    let mut dst = s;
    while dst < e {
        let (src, run) = files
            .source_address(at + (dst - s))
            .with_context(|| format!("no source address for the local pages at {dst:#x}"))?;
        let len = run.min(max).min(e - dst);
        out.push((dst, src, len));
        dst += len;
    }
    Ok(out)
}

/// Place one faulted page, once. The thread reading events must not wait
/// for the layout to settle (only it can settle it): if it is changing,
/// the page goes back where it came from and the fault is retried once
/// the pending events are read. Returns false then.
fn place_fault(sh: &Shared, i: usize, page: u64, data: &[u8]) -> Result<bool> {
    let mut spaces = sh.spaces.lock().unwrap();
    let sp = &mut spaces[i];
    if place(sp, page, data, sh.page)? {
        return Ok(true);
    }
    for (s, e, src) in sp.inflight.remove(page, page + sh.page) {
        if src & TAG != 0 {
            sp.local.insert(s, e, src);
        } else {
            sp.pending.insert(s, e, src);
        }
    }
    Ok(false)
}

/// Handle one fault in space `i` at `addr`; false: retry it after the
/// events that are pending now.
fn fault(sh: &Shared, i: usize, addr: u64, report: &mut Report) -> Result<bool> {
    let t = Instant::now();
    let page = addr & !(sh.page - 1);
    let action = {
        let mut spaces = sh.spaces.lock().unwrap();
        let sp = &mut spaces[i];
        if let (Some(at), Some(files)) = (sp.local.source_of(page), sp.files.clone()) {
            sp.local.remove(page, page + sh.page);
            sp.inflight.insert(page, page + sh.page, at);
            let process = sp.process;
            drop(spaces);
            let fetched;
            let data = match files.bytes(at, sh.page) {
                Some(b) => b,
                None => {
                    let (src, _) = files.source_address(at).context("no source address for a local page")?;
                    fetched = sh.client.fetch(process, src, sh.page, URGENT)?;
                    sh.refetched.fetch_add(sh.page, Ordering::Relaxed);
                    &fetched[..]
                }
            };
            if !place_fault(sh, i, page, data)? {
                return Ok(false);
            }
            sh.local.fetch_add(sh.page, Ordering::Relaxed);
            report.local_faults += 1;
            return Ok(true);
        }
        if let Some(src) = sp.pending.source_of(page) {
            sp.pending.remove(page, page + sh.page);
            sp.inflight.insert(page, page + sh.page, src);
            Some((sp.process, src))
        } else if sp.inflight.contains(page) {
            // A bulk copy is about to land and wake the thread.
            return Ok(true);
        } else {
            if sp.lazy.contains(page) {
                // Placed already: the thread only needs waking.
                sp.uffd.wake(page, sh.page)?;
            } else if matches!(sp.uffd.zeropage(page, sh.page)?, Copied::All) {
                // The image never had this page: it reads as zeros.
                report.zero_pages += 1;
            } else {
                sp.uffd.wake(page, sh.page)?;
            }
            return Ok(true);
        }
    };
    if let Some((process, src)) = action {
        let data = sh.client.fetch(process, src, sh.page, URGENT)?;
        if !place_fault(sh, i, page, &data)? {
            return Ok(false);
        }
        report.faults += 1;
        report.fault_latencies.push(t.elapsed());
    }
    Ok(true)
}

/// Follow one change of layout (faults are handled by [`fault`]).
fn event(sh: &Shared, i: usize, ev: Event, report: &mut Report) -> Result<()> {
    match ev {
        Event::Fault { .. } => unreachable!("faults go to fault()"),
        Event::Remap { from, to, len } => {
            let mut spaces = sh.spaces.lock().unwrap();
            let sp = &mut spaces[i];
            sp.pending.shift(from, to, len);
            sp.local.shift(from, to, len);
            sp.inflight.shift(from, to, len);
            sp.lazy.shift(from, to, len);
        }
        Event::Remove { start, end } | Event::Unmap { start, end } => {
            let mut spaces = sh.spaces.lock().unwrap();
            let sp = &mut spaces[i];
            sp.pending.remove(start, end);
            sp.local.remove(start, end);
            sp.inflight.remove(start, end);
            sp.lazy.remove(start, end);
        }
        Event::Fork { uffd } => {
            // SAFETY: the kernel installed this fd in our table for the event.
            let fd = unsafe { OwnedFd::from_raw_fd(uffd) };
            let mut spaces = sh.spaces.lock().unwrap();
            let parent = &spaces[i];
            // The child misses what the parent missed at the moment of fork.
            let (mut pending, mut local) = (parent.pending.clone(), parent.local.clone());
            for (s, e, src) in parent.inflight.iter() {
                if src & TAG != 0 {
                    local.insert(s, e, src);
                } else {
                    pending.insert(s, e, src);
                }
            }
            let child = Space {
                uffd: Arc::new(Uffd::from_fd(fd)),
                process: parent.process,
                pidfd: None,
                pending,
                local,
                files: parent.files.clone(),
                inflight: RangeSet::default(),
                lazy: parent.lazy.clone(),
                gone: false,
            };
            spaces.push(child);
            report.forks += 1;
            debug!("the task forked: serving the child's lazy pages too");
        }
    }
    Ok(())
}

/// When background transfers may start. Faults are served at once; the
/// bulk waits while the restore that handed the task over finishes on
/// this machine (on a small one, it would share the CPU with them, and
/// the restore's end is the end of the downtime).
#[derive(Clone)]
pub struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn closed() -> Gate {
        Gate(Arc::new((Mutex::new(false), std::sync::Condvar::new())))
    }

    /// A gate already open: nothing to wait for.
    pub fn opened() -> Gate {
        let g = Gate::closed();
        g.open();
        g
    }

    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let (open, cv) = &*self.0;
        let _open = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
    }
}

/// One restored process whose lazy pages the daemon serves.
pub struct LazyTask {
    pub uffd: Uffd,
    /// ferry's PID of it here.
    pub pid: i32,
    /// Its PID in the tree's namespace: how the source knows it.
    pub process: u64,
    /// Its lazy pages (task address -> source address).
    pub lazy: RangeSet,
    /// Its pre-copied pages left for the daemon to place.
    pub local: Option<Arc<LocalPages>>,
}

/// Serve every task's userfaultfd until every lazy page is in place (or
/// its process is gone), then tell the source.
pub fn run(tasks: Vec<LazyTask>, client: Arc<PageClient>, bulk: Gate) -> Result<Report> {
    let start = Instant::now();
    let page = crate::page_size();
    let total: u64 = tasks.iter().map(|t| t.lazy.bytes() + t.local.as_ref().map_or(0, |l| l.ranges.bytes())).sum();
    let root = tasks.first().map(|t| t.pid).unwrap_or(0);
    let mut spaces = Vec::new();
    for t in tasks {
        let local = t.local.as_ref().map(|l| l.ranges.clone()).unwrap_or_default();
        let mut all: Vec<_> = t.lazy.iter().chain(local.iter()).collect();
        all.sort_unstable();
        let every = RangeSet::from_sorted(all);
        spaces.push(Space {
            uffd: Arc::new(t.uffd),
            process: t.process,
            pidfd: Some(Arc::new(crate::pidfd::open(t.pid)?)),
            pending: t.lazy,
            local,
            files: t.local,
            inflight: RangeSet::default(),
            lazy: every,
            gone: false,
        });
    }
    let processes = spaces.len();
    let has_local = spaces.iter().any(|s| s.files.is_some());
    let sh = Arc::new(Shared {
        spaces: Mutex::new(spaces),
        client,
        page,
        pushed: AtomicU64::new(0),
        local: AtomicU64::new(0),
        refetched: AtomicU64::new(0),
    });
    info!(pid = root, processes, bytes = total, "serving lazy pages");
    crate::testhook::stage("postcopy");
    let mut pushers: Vec<_> = (0..PUSHERS)
        .map(|_| {
            std::thread::spawn({
                let (sh, bulk) = (sh.clone(), bulk.clone());
                move || {
                    bulk.wait();
                    push_loop(sh)
                }
            })
        })
        .collect();
    if has_local {
        let sh = sh.clone();
        pushers.push(std::thread::spawn(move || {
            bulk.wait();
            local_loop(sh)
        }));
    }
    let mut report = Report { processes: processes as u64, ..Default::default() };
    let progress = crate::progress::Progress::new("post-copy", Some(total));
    // Faults that met a changing layout: tried again after the next events.
    let mut retry: Vec<(usize, u64)> = Vec::new();
    loop {
        progress.set(sh.pushed.load(Ordering::Relaxed) + sh.local.load(Ordering::Relaxed) + report.faults * page);
        type Watch = (usize, Arc<Uffd>, Option<Arc<OwnedFd>>);
        let watched: Vec<Watch> = {
            let spaces = sh.spaces.lock().unwrap();
            if spaces.iter().all(Space::finished) {
                break;
            }
            spaces
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.gone)
                .map(|(i, s)| (i, s.uffd.clone(), s.pidfd.clone()))
                .collect()
        };
        let mut fds: Vec<PollFd> = Vec::new();
        for (_, u, p) in &watched {
            fds.push(PollFd::new(u.fd().as_fd(), PollFlags::POLLIN));
            if let Some(p) = p {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
        }
        let wait = if retry.is_empty() { 50u16 } else { 1 };
        match poll(&mut fds, PollTimeout::from(wait)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let mut at = 0;
        for (i, u, p) in &watched {
            let uffd_ready = ready[at];
            let exited = p.is_some() && ready[at + 1];
            at += if p.is_some() { 2 } else { 1 };
            if uffd_ready {
                for ev in u.read_events()? {
                    match ev {
                        Event::Fault { addr, .. } => {
                            if !fault(&sh, *i, addr, &mut report)? {
                                retry.push((*i, addr));
                            }
                        }
                        ev => event(&sh, *i, ev, &mut report)?,
                    }
                }
            }
            if exited {
                // It exited: what it did not fetch, nobody needs.
                let mut spaces = sh.spaces.lock().unwrap();
                info!(process = spaces[*i].process, "a process exited; its pages are no longer needed");
                spaces[*i].gone = true;
            }
        }
        let mut again = Vec::new();
        for (i, addr) in std::mem::take(&mut retry) {
            if !fault(&sh, i, addr, &mut report)? {
                again.push((i, addr));
            }
        }
        retry = again;
        if let Some(p) = pushers.iter().position(|p| p.is_finished()) {
            // A pusher stopped early only on error (the source is gone).
            if !sh.spaces.lock().unwrap().iter().all(Space::finished) {
                let h = pushers.into_iter().nth(p).unwrap();
                h.join().expect("pusher panicked")?;
                anyhow::bail!("background transfer stopped");
            }
        }
    }
    for p in pushers {
        // Finished spaces make the pushers return.
        let _ = p.join();
    }
    sh.client.done()?;
    report.pushed_bytes = sh.pushed.load(Ordering::Relaxed);
    report.local_bytes = sh.local.load(Ordering::Relaxed);
    report.refetched_bytes = sh.refetched.load(Ordering::Relaxed);
    report.elapsed = start.elapsed();
    info!(
        pid = root,
        faults = report.faults,
        pushed = report.pushed_bytes,
        ms = report.elapsed.as_millis() as u64,
        "all lazy pages in place"
    );
    Ok(report)
}
