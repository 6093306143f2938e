//! The destination side of the page connections: fetch pages by address,
//! from several threads at once. Faults (urgent) and background pushes
//! (bulk) travel on separate connections ("lanes") where the source allows
//! it, so a fault's page is never stuck in a socket buffer behind bulk
//! data. A lost connection is re-established with backoff and unanswered
//! requests are sent again; only after `give_up` without a connection do
//! fetches fail.

use crate::net::wire::{read_frame, write_frame, Frame, Kind, URGENT};
use crate::net::Link;
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How to (re)open the connection: connect and authenticate.
pub type Connector = Box<dyn Fn() -> Result<Link> + Send + Sync>;

struct Pending {
    frame: Frame,
    reply: Option<Result<Fetched, String>>,
}

/// Bytes fetched from the source (kept in the received frame, unsliced, to
/// save a copy).
pub struct Fetched(Vec<u8>);

impl std::ops::Deref for Fetched {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // The payload starts with the address it answers.
        &self.0[8..]
    }
}

struct State {
    writer: Option<Link>,
    /// Bumped on every reconnect, so a dying reader does not clobber a new one.
    generation: u64,
    next_id: u32,
    pending: HashMap<u32, Pending>,
    /// Set when the source is gone for good.
    failed: Option<String>,
    reconnecting: bool,
    bye: bool,
}

/// Pages from the source over one or two lanes.
pub struct PageClient {
    urgent: Arc<Lane>,
    /// None: bulk requests share the urgent lane.
    bulk: Option<Arc<Lane>>,
}

impl PageClient {
    /// Connect both lanes now (failing fast if that does not work at all).
    pub fn connect(connector: Connector, give_up: Duration) -> Result<Arc<PageClient>> {
        let urgent = connector()?;
        let bulk = connector();
        PageClient::with_lanes(Ok(urgent), bulk, connector, give_up)
    }

    /// Both lanes on streams made ready already; `connector` makes new
    /// ones when a lane is cut.
    pub fn with_lanes(
        urgent: Result<Link>,
        bulk: Result<Link>,
        connector: Connector,
        give_up: Duration,
    ) -> Result<Arc<PageClient>> {
        let connector = Arc::new(connector);
        let urgent = Lane::start(urgent, connector.clone(), give_up, false)?;
        let bulk = Lane::start(bulk, connector, give_up, true)?;
        Ok(Arc::new(PageClient { urgent, bulk: Some(bulk) }))
    }

    /// One lane on an established, authenticated stream.
    pub fn with_stream(stream: Link, connector: Connector, give_up: Duration) -> Result<Arc<PageClient>> {
        Ok(Arc::new(PageClient { urgent: Lane::start(Ok(stream), Arc::new(connector), give_up, false)?, bulk: None }))
    }

    fn lane(&self, prio: u8) -> &Arc<Lane> {
        match &self.bulk {
            Some(b) if prio != URGENT => b,
            _ => &self.urgent,
        }
    }

    /// Fetch `len` bytes at `addr` (the source's address) of `process`
    /// (its PID in the tree's namespace).
    pub fn fetch(&self, process: u64, addr: u64, len: u64, prio: u8) -> Result<Fetched> {
        self.fetch_many(process, &[(addr, len)], prio)
    }

    /// Fetch several (addr, len) pieces of `process` in one request:
    /// scattered pages cost one round trip and one reply, not one each. The
    /// bytes come back concatenated, in order.
    pub fn fetch_many(&self, process: u64, pieces: &[(u64, u64)], prio: u8) -> Result<Fetched> {
        let lane = self.lane(prio);
        let id = lane.send(process, pieces, prio)?;
        let total: u64 = pieces.iter().map(|p| p.1).sum();
        let got = lane.wait(id, pieces[0].0, total)?;
        if got.len() as u64 != total {
            return Err(anyhow!("the source sent {} bytes for a request of {total}", got.len()));
        }
        Ok(got)
    }

    /// Times a lane had to reconnect.
    pub fn reconnects(&self) -> u32 {
        *self.urgent.reconnects.lock().unwrap() + self.bulk.as_ref().map_or(0, |b| *b.reconnects.lock().unwrap())
    }

    /// Tell the source everything arrived (closing the bulk lane first, so
    /// its end is not taken for a cut); wait briefly for its goodbye.
    pub fn done(&self) -> Result<()> {
        if let Some(b) = &self.bulk {
            b.close();
        }
        self.urgent.done()
    }
}

/// One connection to the source, re-established when it breaks.
struct Lane {
    shared: Arc<(Mutex<State>, Condvar)>,
    connector: Arc<Connector>,
    give_up: Duration,
    reconnects: Mutex<u32>,
    /// Its reader runs at background priority (a bulk lane).
    background: bool,
}

impl Lane {
    /// Start on an established stream.
    fn start(first: Result<Link>, connector: Arc<Connector>, give_up: Duration, background: bool) -> Result<Arc<Lane>> {
        let stream = first?;
        let c = Arc::new(Lane {
            shared: Arc::new((
                Mutex::new(State {
                    writer: None,
                    generation: 0,
                    next_id: 1,
                    pending: HashMap::new(),
                    failed: None,
                    reconnecting: false,
                    bye: false,
                }),
                Condvar::new(),
            )),
            connector,
            give_up,
            reconnects: Mutex::new(0),
            background,
        });
        c.attach(stream)?;
        Ok(c)
    }

    /// Use `stream` from now on: re-send what is unanswered, start its reader.
    fn attach(self: &Arc<Self>, stream: Link) -> Result<()> {
        let reader = stream.try_clone()?;
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap();
        st.generation += 1;
        let generation = st.generation;
        let mut w = stream;
        for p in st.pending.values().filter(|p| p.reply.is_none()) {
            write_frame(&mut w, &p.frame)?;
        }
        st.writer = Some(w);
        st.reconnecting = false;
        cv.notify_all();
        drop(st);
        let me = self.clone();
        std::thread::spawn(move || me.read_loop(reader, generation));
        Ok(())
    }

    fn read_loop(self: Arc<Self>, mut r: Link, generation: u64) {
        super::background_thread(self.background);
        let (lock, cv) = &*self.shared;
        loop {
            match read_frame(&mut r) {
                Ok(f) => {
                    let mut st = lock.lock().unwrap();
                    match f.kind {
                        Kind::Data | Kind::Error => {
                            if let Some(p) = st.pending.get_mut(&f.id) {
                                p.reply = Some(if f.kind == Kind::Data && f.payload.len() >= 8 {
                                    Ok(Fetched(f.payload))
                                } else {
                                    Err(f.said())
                                });
                            }
                        }
                        Kind::Bye => st.bye = true,
                        _ => {}
                    }
                    cv.notify_all();
                }
                Err(e) => {
                    let mut st = lock.lock().unwrap();
                    if st.generation != generation || st.bye {
                        return;
                    }
                    warn!("page connection lost ({e:#}); reconnecting");
                    st.writer = None;
                    st.reconnecting = true;
                    drop(st);
                    self.reconnect();
                    return;
                }
            }
        }
    }

    /// Reconnect with backoff until it works or `give_up` has passed.
    fn reconnect(self: &Arc<Self>) {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match (self.connector)() {
                Ok(s) => {
                    *self.reconnects.lock().unwrap() += 1;
                    info!("page connection re-established after {:.1} s", start.elapsed().as_secs_f64());
                    if self.attach(s).is_ok() {
                        return;
                    }
                }
                Err(e) if start.elapsed() >= self.give_up => {
                    let (lock, cv) = &*self.shared;
                    let mut st = lock.lock().unwrap();
                    st.failed = Some(format!("the source is unreachable ({e:#}) for {} s", self.give_up.as_secs()));
                    cv.notify_all();
                    return;
                }
                Err(_) => {}
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Send a request; a failed send is retried by the reconnect.
    fn send(&self, process: u64, pieces: &[(u64, u64)], prio: u8) -> Result<u32> {
        let (lock, _) = &*self.shared;
        let mut st = lock.lock().unwrap();
        if let Some(f) = &st.failed {
            return Err(anyhow!("{f}"));
        }
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1).max(1);
        let frame = Frame::get_many(id, prio, process, pieces);
        if let Some(w) = st.writer.as_mut() {
            let _ = write_frame(w, &frame);
        }
        st.pending.insert(id, Pending { frame, reply: None });
        Ok(id)
    }

    /// Wait for the reply to request `id`.
    fn wait(&self, id: u32, addr: u64, len: u64) -> Result<Fetched> {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(r) = st.pending.get_mut(&id).and_then(|p| p.reply.take()) {
                st.pending.remove(&id);
                return r.map_err(|e| anyhow!("the source refused {len} bytes at {addr:#x}: {e}"));
            }
            if let Some(f) = st.failed.clone() {
                st.pending.remove(&id);
                return Err(anyhow!("{f}"));
            }
            st = cv.wait(st).unwrap();
        }
    }

    /// Stop using this lane: its end is expected, not a cut.
    fn close(&self) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap();
        st.bye = true;
        if let Some(w) = st.writer.take() {
            w.shutdown();
        }
        cv.notify_all();
    }

    /// Tell the source everything arrived; wait (briefly) for its goodbye.
    pub fn done(&self) -> Result<()> {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(w) = st.writer.as_mut() {
                write_frame(w, &Frame::new(Kind::Done, Vec::new()))?;
                break;
            }
            if st.failed.is_some() || Instant::now() > deadline {
                return Err(anyhow!("could not tell the source that all pages arrived"));
            }
            st = cv.wait_timeout(st, Duration::from_millis(100)).unwrap().0;
        }
        while !st.bye && Instant::now() < deadline {
            st = cv.wait_timeout(st, Duration::from_millis(100)).unwrap().0;
        }
        Ok(())
    }
}
