//! `ferry receive --listen ADDR:PORT -D DIR`: take in the rounds, restore
//! the final one at the task's PID, and serve its faults from the source.

use super::{receive_round, status, GO, RESUME, START};
use crate::image::show::human_bytes;
use crate::image::{ImageDir, LAZY_STATS};
use crate::lazy::client::PageClient;
use crate::lazy::{daemon, guard::Guard, lazy_ranges};
use crate::net::wire::{read_frame, Kind};
use crate::net::{Credentials, Link};
use crate::restore::{self, LazyRestore, RestoreOptions};
use anyhow::{anyhow, bail, Context, Result};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    pub listen: String,
    pub dir: PathBuf,
    pub creds: Credentials,
    pub shell_job: bool,
    pub pidfile: Option<PathBuf>,
    /// How long to wait for the source to come back after a cut.
    pub reconnect: Duration,
    /// `--tcp-close`, `--action-script` and `--network-lock`, as with restore.
    pub tcp_close: bool,
    pub scripts: crate::action_script::Scripts,
    pub network_lock: crate::netlock::Method,
}

fn say(msg: &str) {
    crate::progress::above(|| println!("receive: {msg}"));
}

/// Accept authenticated peers; the first migration goes to `first`, later
/// reconnections to `resumed`. Strangers are refused and logged.
fn accept_loop(listener: TcpListener, creds: Credentials, first: mpsc::Sender<Link>, resumed: mpsc::Sender<Link>) {
    let mut started = false;
    let peers = crate::net::admit(listener, "receive", &creds);
    while let Some(crate::net::Admitted { link, peer, hello }) = peers.next() {
        let sent = match hello.as_str() {
            START if !started => {
                started = true;
                first.send(link)
            }
            RESUME if started => resumed.send(link),
            _ => {
                tracing::warn!("peer {peer} asked for {hello:?} out of turn");
                continue;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

pub fn run(o: &ReceiveOptions) -> Result<()> {
    let listener = TcpListener::bind(&o.listen).with_context(|| format!("listening on {}", o.listen))?;
    say(&format!("listening on {}", o.listen));
    let (first_tx, first_rx) = mpsc::channel();
    let (resume_tx, resume_rx) = mpsc::channel();
    let creds = o.creds.clone();
    std::thread::spawn(move || accept_loop(listener, creds, first_tx, resume_tx));
    let mut stream: Link = first_rx.recv().map_err(|_| anyhow!("stopped listening"))?;
    // As on the source: until post-copy, a side busy for a while (a long
    // round, a window held shut) is not a dead link.
    stream.set_user_timeout(crate::net::BULK_USER_TIMEOUT)?;
    let t0 = Instant::now();
    say(&format!("migration from {} started", stream.peer()));

    let mut total = 0;
    let final_dir = loop {
        let (name, last, bytes) = receive_round(&mut stream, &o.dir)?;
        total += bytes;
        say(&format!("round {name}: {} received", human_bytes(bytes)));
        if last {
            break o.dir.join(name);
        }
    };
    let ropts = RestoreOptions {
        dir: final_dir.clone(),
        detached: true,
        shell_job: o.shell_job,
        pidfile: o.pidfile.clone(),
        pid_wait: Duration::from_secs(10),
        lazy: Some(LazyRestore::Caller),
        inherited: Default::default(),
        tcp_close: o.tcp_close,
        scripts: o.scripts.clone(),
        network_lock: o.network_lock,
        container: Default::default(),
    };
    // Two-phase hand-over: the task is ready but does not run until the
    // source has made sure its own copy never will.
    let mut handshake = stream.try_clone()?;
    let restored = match restore::restore_then(&ropts, |pid| {
        status(&mut handshake, &format!("ready {pid}"))?;
        let go = read_frame(&mut handshake).context("waiting for the source to give up the task")?;
        if go.kind != Kind::Status || go.text() != GO {
            bail!("the source did not give up the task: {}", go.said());
        }
        Ok(())
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = status(&mut stream, &format!("failed: {e:#}"));
            return Err(e.context("restore failed; the task runs on at the source"));
        }
    };
    let pid = restored.pid;
    if let Some(p) = &o.pidfile {
        std::fs::write(p, pid.to_string()).with_context(|| format!("writing pidfile {}", p.display()))?;
    }
    if restored.lazy.is_empty() {
        status(&mut stream, &format!("running {pid}"))?;
        crate::net::wire::write_frame(&mut stream, &crate::net::wire::Frame::new(Kind::Done, Vec::new()))?;
        say(&format!("task {pid} running; nothing left to fetch"));
        return Ok(());
    }
    let images = ImageDir::open(&final_dir)?;
    let mut guards = Vec::new();
    let mut tasks = Vec::new();
    let pids: Vec<i32> = restored.lazy.iter().map(|l| l.pid).collect();
    for l in restored.lazy {
        let pagemap = images.read_pagemap(l.vpid)?;
        guards.push(Guard::start(l.uffd.fd(), l.pid)?);
        let lazy = lazy_ranges(&pagemap);
        tasks.push(daemon::LazyTask { uffd: l.uffd, pid: l.pid, process: l.vpid as u64, lazy, local: l.local });
    }
    status(&mut stream, &format!("running {pid}"))?;
    // Post-copy: the task waits on faults, so a cut must show at once.
    stream.set_user_timeout(crate::net::USER_TIMEOUT)?;
    say(&format!("task {pid} running after {} of images; fetching the rest", human_bytes(total)));

    let reconnect = o.reconnect;
    let resumed = std::sync::Mutex::new(resume_rx);
    let connector: crate::lazy::client::Connector = Box::new(move || {
        // After a cut the source reconnects to us; wait for it.
        resumed.lock().unwrap().recv_timeout(reconnect).map_err(|_| anyhow!("the source did not come back"))
    });
    let client = PageClient::with_stream(stream, connector, o.reconnect)?;
    match daemon::run(tasks, client, daemon::Gate::opened()) {
        Ok(r) => {
            guards.into_iter().for_each(Guard::release);
            let st = r.stats();
            say(&format!(
                "all pages in place after {:.2} s: {} faults (median {} µs, p99 {} µs), {} pushed",
                t0.elapsed().as_secs_f64(),
                st.faults,
                st.fault_p50_us,
                st.fault_p99_us,
                human_bytes(st.pushed_bytes)
            ));
            if let Err(e) = st.save(&final_dir) {
                tracing::warn!("could not write {LAZY_STATS}: {e:#}");
            }
            Ok(())
        }
        Err(e) => {
            for p in pids {
                // SAFETY: plain kill(2): the tree cannot get its memory any more.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            guards.into_iter().for_each(Guard::release);
            bail!("killed task {pid}: {e:#}")
        }
    }
}
