//! `ferry lazy-pages`: the destination's userfaultfd daemon.

use super::security::{KeyDefault, SecurityArgs};
use crate::image::{ImageDir, LAZY_STATS};
use crate::lazy::local::LocalPages;
use crate::lazy::ranges::RangeSet;
use crate::lazy::{client::PageClient, daemon, guard::Guard, handoff, lazy_ranges, serve};
use crate::net::wire::{read_frame, write_frame, Frame, Kind};
use crate::net::{Credentials, Link};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

#[derive(Args, Debug)]
pub struct LazyPagesArgs {
    /// Fetch pages from the source's page server (the only source there is;
    /// accepted for CRIU compatibility)
    #[arg(long = "page-server")]
    pub page_server: bool,
    /// Address of the source (where `ferry dump --lazy-pages` listens)
    #[arg(long, value_name = "ADDR")]
    pub address: String,
    #[arg(long, value_name = "PORT")]
    pub port: u16,
    /// The images of the lazy dump (as given to `ferry restore --lazy-pages`)
    #[arg(short = 'D', long = "images-dir", value_name = "DIR", default_value = ".")]
    pub images_dir: PathBuf,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// How long to keep trying when the source cannot be reached, before
    /// giving up (and killing the restored task, whose pages are lost)
    #[arg(long = "reconnect-timeout", value_name = "SECONDS", default_value_t = 60)]
    pub reconnect_timeout: u64,
    #[command(flatten)]
    pub status: super::criu::StatusFd,
}

fn target(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Connect to `target` and authenticate.
fn open(target: &str, creds: &Credentials) -> Result<Link> {
    Link::connect(target, creds, Duration::from_secs(2))
}

/// Ask the source to give the task up; the task may only run here once
/// the source can never run it again.
fn arm(mut s: Link, target: &str) -> Result<Link> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write_frame(&mut s, &Frame::new(Kind::Status, serve::ARM.as_bytes().to_vec()))?;
    let armed = read_frame(&mut s).with_context(|| format!("waiting for {target} to hand over the task"))?;
    if armed.kind != Kind::Status || armed.text() != serve::ARMED {
        anyhow::bail!("{target} did not hand over the task");
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Connect to `addr:port`, authenticate and arm, for (re)connections.
pub fn connector(addr: String, port: u16, creds: Credentials) -> crate::lazy::client::Connector {
    Box::new(move || {
        let target = target(&addr, port);
        arm(open(&target, &creds)?, &target)
    })
}

/// The source admits a peer that authenticates and says what it wants
/// within its admission deadline (5 s): links opened early are used only
/// while younger than this.
const EARLY_LINKS_FRESH: Duration = Duration::from_secs(3);

/// Both lanes' links, connected and authenticated while the restore runs
/// (it waits for our answer, so this was inside the downtime), with when.
struct EarlyLinks(std::thread::JoinHandle<Option<(Link, Link, Instant)>>);

/// Every process's lazy pages, by its PID in the tree's namespace, and
/// the pre-copied pages the restore leaves to us (it picks the same ones
/// from the same images). Each block of those is checked as it is first
/// used; a damaged one is fetched from the source, which holds the task
/// until we are done.
type LazyProcesses = std::collections::HashMap<i32, (RangeSet, Option<Arc<LocalPages>>)>;

fn lazy_processes(images: &ImageDir) -> Result<LazyProcesses> {
    let mut lazy = LazyProcesses::new();
    for &vpid in &images.inventory.tasks {
        // The chain reads this image's pagemap too: parsed once.
        let chain = crate::image::chain::Chain::open(images.clone(), vpid)?;
        let ranges = lazy_ranges(&chain.views[0].pagemap);
        if !ranges.is_empty() {
            let local = crate::lazy::local::for_process(&chain, vpid)?.map(Arc::new);
            lazy.insert(vpid, (ranges, local));
        }
    }
    Ok(lazy)
}

impl EarlyLinks {
    fn open(addr: &str, port: u16, creds: &Credentials) -> EarlyLinks {
        let (target, creds) = (target(addr, port), creds.clone());
        EarlyLinks(std::thread::spawn(move || {
            let at = Instant::now();
            // Not there yet (the source may start later): connect after
            // the hand-over, as always.
            Some((open(&target, &creds).ok()?, open(&target, &creds).ok()?, at))
        }))
    }

    /// The client: on the early links, armed now, if they are fresh; on
    /// new ones otherwise.
    fn client(self, a: &LazyPagesArgs, creds: Credentials) -> Result<Arc<PageClient>> {
        let give_up = Duration::from_secs(a.reconnect_timeout);
        let connector = connector(a.address.clone(), a.port, creds);
        match self.0.join().ok().flatten() {
            Some((urgent, bulk, at)) if at.elapsed() < EARLY_LINKS_FRESH => {
                let target = target(&a.address, a.port);
                let urgent = arm(urgent, &target)?;
                PageClient::with_lanes(Ok(urgent), arm(bulk, &target), connector, give_up)
            }
            _ => PageClient::connect(connector, give_up),
        }
    }
}

pub fn run(a: LazyPagesArgs) -> Result<ExitCode> {
    crate::image::trust::check_images_dir(&a.images_dir)?;
    let images = ImageDir::open(&a.images_dir)?;
    let creds = a.security.credentials(KeyDefault::Images(&a.images_dir))?;
    let ready = a.status.notify()?;
    // Listen before reading the images: the restore, running meanwhile,
    // connects as soon as it has built the tree and waits for our answer,
    // not for the socket to appear (it looks again every millisecond).
    let sock = handoff::socket_path(&a.images_dir);
    let _ = std::fs::remove_file(&sock);
    let listener =
        std::os::unix::net::UnixListener::bind(&sock).with_context(|| format!("listening on {}", sock.display()))?;
    let restores = handoff::admit(listener);
    let early = EarlyLinks::open(&a.address, a.port, &creds);
    let mut lazy = match lazy_processes(&images) {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => {
            let _ = std::fs::remove_file(&sock);
            // A lazy dump that found nothing to leave behind is a plain
            // image: `restore --lazy-pages` restores it without us.
            eprintln!("lazy-pages: {}: no lazy pages, nothing to serve", a.images_dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&sock);
            // A restore already waiting hears why.
            if let Ok((_, mut waiting)) = restores.next_timeout(Duration::from_millis(1)) {
                handoff::answer(&mut waiting, &format!("{e:#}"));
            }
            return Err(e);
        }
    };
    info!(socket = %sock.display(), "waiting for ferry restore --lazy-pages");
    if let Err(e) = crate::action_script::ready(&ready) {
        let _ = std::fs::remove_file(&sock);
        return Err(e);
    }
    let (handed, mut answer) =
        restores.next().context("waiting for `ferry restore --lazy-pages`: the socket failed")?;
    let _ = std::fs::remove_file(&sock);
    let root = handed.first().map(|h| h.pid).unwrap_or(0);
    let pids: Vec<i32> = handed.iter().map(|h| h.pid).collect();
    let kill_all = || {
        for &p in &pids {
            // SAFETY: plain kill(2): the tree cannot get its memory any more.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    };
    let client = match early.client(&a, creds) {
        Ok(c) => c,
        Err(e) => {
            handoff::answer(&mut answer, &format!("{e:#}"));
            return Err(e);
        }
    };
    let mut guards = Vec::new();
    let mut tasks = Vec::new();
    for h in handed {
        let Some((ranges, local)) = lazy.remove(&h.vpid) else {
            handoff::answer(&mut answer, &format!("process {} has no lazy pages in these images", h.vpid));
            kill_all();
            bail!("the restore handed over process {}, which has no lazy pages in these images", h.vpid);
        };
        guards.push(Guard::start(&h.uffd, h.pid)?);
        tasks.push(daemon::LazyTask {
            uffd: crate::uffd::Uffd::from_fd(h.uffd),
            pid: h.pid,
            process: h.vpid as u64,
            lazy: ranges,
            local,
        });
    }
    handoff::answer(&mut answer, "ok");
    let bulk = handoff::until_closed(answer, Duration::from_secs(5));
    match daemon::run(tasks, client, bulk) {
        Ok(r) => {
            guards.into_iter().for_each(Guard::release);
            let st = r.stats();
            info!(
                task = root,
                faults = st.faults,
                p50_us = st.fault_p50_us,
                p99_us = st.fault_p99_us,
                pushed = st.pushed_bytes,
                "done"
            );
            // Statistics are a report, not part of the restore: a read-only
            // images directory must not fail a migration that worked.
            if let Err(e) = st.save(&a.images_dir) {
                tracing::warn!("could not write {LAZY_STATS}: {e:#}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            kill_all();
            guards.into_iter().for_each(Guard::release);
            Err(e.context(format!("killed task {root}: its remaining pages cannot be fetched")))
        }
    }
}
