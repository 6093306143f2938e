//! `ferry dump` and `ferry pre-dump`: freeze a task, write its image.
//!
//! Order matters for the promise that a failed dump leaves the task as it
//! was: everything is checked before the task is touched; the only moment
//! its registers are not its own is the short injection phase, after which
//! it is returned to a plain PTRACE_INTERRUPT stop; memory is then copied
//! and files written while it sits there, and only a complete image
//! (inventory written) lets ferry kill it.
//!
//! A pre-dump freezes the task only to read its page tables and re-arm
//! dirty tracking, then lets it run while its pages are copied. Later rounds
//! (`--prev-images-dir`) copy only what changed since the previous one.

pub mod files;
pub mod injected;
pub mod memory;
pub mod pages;
pub mod scope;
pub mod tracking;

use crate::image::chain::MemoryView;
use crate::image::inventory::{ImageKind, Inventory};
use crate::image::stats::DumpStats;
use crate::image::task::{Creds, FsState, Ids, MmState, PendingSignal, Rseq, Signals, TaskImage};
use crate::image::{pagemap_file, task_file, ImageDir, ImageWriter, STATS};
use crate::net::auth::Key;
use crate::proc::ProcDir;
use crate::ptrace::remote::RemoteMem;
use crate::ptrace::{OnDrop, RseqConfig, Tracee, O_TRACESYSGOOD};
use crate::testhook;
use crate::track::{self, TrackRecord, TRACK_FILE};
use anyhow::{bail, Context, Result};
use ferry_arch::{Backend, Native, NativeState};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{debug, info};

#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub pid: i32,
    pub dir: PathBuf,
    pub kind: ImageKind,
    pub leave_running: bool,
    pub shell_job: bool,
    /// The previous round's images, relative to `dir` (CRIU's convention).
    pub prev: Option<PathBuf>,
    /// Keep tracking memory changes for a later round.
    pub track_mem: bool,
    pub tracker: track::Choice,
    /// How long an unused tracking holder lives.
    pub track_idle: Duration,
    /// Leave the changed pages on the source and serve them (post-copy).
    pub lazy: Option<LazyServe>,
    /// A tracking holder also ends when this process does (`ferry migrate`:
    /// killing it must leave the task untracked).
    pub track_owner: Option<i32>,
}

/// A lazy dump leaves the changed pages on the source. Who serves them:
#[derive(Clone, Debug)]
pub enum LazyServe {
    /// `--lazy-pages --address A --port P`: ferry dump itself, to a
    /// `ferry lazy-pages` daemon.
    Listen {
        address: String,
        port: u16,
        /// Shared key; without one a fresh key is written next to the images.
        key: Option<PathBuf>,
        /// TLS certificates, if asked for.
        tls: Option<std::sync::Arc<crate::net::tls::Tls>>,
        /// How long to wait for a destination before giving the task back.
        wait: Duration,
    },
    /// The caller (`ferry migrate`), over its own connection.
    Caller,
}

/// A lazy dump's task, still frozen, and the pages it has to serve.
pub struct Frozen {
    pub tracee: Tracee,
    pub pagemap: crate::image::pagemap::PagemapImage,
    /// When the task stopped running (for the downtime).
    pub since: Instant,
}

pub struct Dumped {
    pub stats: DumpStats,
    pub frozen: Option<Frozen>,
}

impl DumpOptions {
    /// A plain dump with CRIU's defaults.
    pub fn new(pid: i32, dir: PathBuf) -> DumpOptions {
        DumpOptions {
            pid,
            dir,
            kind: ImageKind::Dump,
            leave_running: false,
            shell_job: false,
            prev: None,
            track_mem: false,
            tracker: track::Choice::Auto,
            track_idle: Duration::from_secs(30 * 60),
            lazy: None,
            track_owner: None,
        }
    }
}

/// The previous round: its view of memory and how it was tracked.
struct Parent {
    rel: PathBuf,
    view: MemoryView,
    track: Option<TrackRecord>,
}

fn open_parent(opts: &DumpOptions) -> Result<Option<Parent>> {
    let Some(rel) = &opts.prev else { return Ok(None) };
    // The path is relative to the images directory, which may not exist yet.
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let dir = opts.dir.join(rel);
    let images = ImageDir::open(&dir).with_context(|| format!("--prev-images-dir {}", rel.display()))?;
    if images.inventory.root_pid != opts.pid {
        bail!("{}: the previous images are of task {}, not {}", dir.display(), images.inventory.root_pid, opts.pid);
    }
    let track =
        if images.entry(TRACK_FILE).is_ok() { Some(images.read_json::<TrackRecord>(TRACK_FILE)?) } else { None };
    Ok(Some(Parent { rel: rel.clone(), view: MemoryView::load(images)?, track }))
}

/// Dump; a lazy dump with `LazyServe::Listen` then serves its pages here.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    // Bind first: a busy port must fail before the task is touched. Listen
    // only once the images are complete, so that a listening port means
    // "images ready, waiting for lazy-pages", as with CRIU.
    let listener = match &opts.lazy {
        Some(LazyServe::Listen { address, port, .. }) => Some(crate::net::Reserved::bind(address, *port)?),
        _ => None,
    };
    let d = dump_frozen(opts)?;
    if let (Some(LazyServe::Listen { key, tls, wait, .. }), Some(listener), Some(f)) = (&opts.lazy, listener, d.frozen)
    {
        let key = match key {
            Some(p) => Key::load(p)?,
            None => Key::generate(&opts.dir.join(crate::lazy::KEY_FILE))?,
        };
        if crate::lazy::lazy_ranges(&f.pagemap).is_empty() {
            // Nothing changed since the last round (or nothing is lazy-able):
            // the images hold everything, so this is a plain dump.
            info!(pid = f.tracee.pid, "no page was left lazy: the images hold the whole task");
            f.tracee.kill()?;
            return Ok(d.stats);
        }
        let creds = crate::net::Credentials::new(Some(key), tls.clone())?;
        serve_lazy(&f.tracee, &creds, *wait, listener.listen()?, &opts.dir, &f.pagemap)?;
    }
    Ok(d.stats)
}

/// Dump; a lazy dump returns with the task still frozen.
pub fn dump_frozen(opts: &DumpOptions) -> Result<Dumped> {
    let t0 = Instant::now();
    let pid = opts.pid;
    let pre = opts.kind == ImageKind::PreDump;
    if !pre && opts.track_mem && opts.prev.is_none() && !opts.leave_running {
        bail!(
            "--track-mem without --prev-images-dir arms tracking for a later dump, which needs the task to live on: \
             add --leave-running, or use pre-dump"
        );
    }
    let proc = ProcDir::new(pid);
    // Refuse what cannot be dumped before anything is changed.
    scope::inspect(&proc, opts.shell_job, false)?;
    let parent = open_parent(opts)?;
    let method = match parent.as_ref().and_then(|p| p.track.as_ref()) {
        Some(t) if opts.tracker != track::Choice::Auto && track::choose(opts.tracker)? != t.method => {
            bail!("the previous images were tracked with {}; a chain keeps one dirty tracker", t.method.name())
        }
        Some(t) => t.method,
        None => track::choose(opts.tracker)?,
    };
    let holder = parent.as_ref().and_then(|p| p.track.as_ref()).and_then(|t| t.holder.clone());
    // Tracking goes on after this round for pre-dumps and iterative dumps.
    let keep_tracking = pre || (opts.track_mem && opts.leave_running);
    if pre && opts.lazy.is_some() {
        bail!("--lazy-pages goes with the final dump, not pre-dump");
    }
    let mut writer = ImageWriter::create(&opts.dir)?;

    let tracee = Tracee::seize(pid, O_TRACESYSGOOD, OnDrop::Detach)?;
    let frozen_at = Instant::now();
    tracee.interrupt()?;
    let stopped = tracee.wait_interrupted().with_context(|| format!("task {pid}: freezing"))?;
    info!(pid, "task frozen");
    testhook::stage("freeze");

    // The task may have changed between the first look and the freeze.
    let insp = scope::inspect(&proc, opts.shell_job, true)?;
    let regs = tracee.cpu_state()?;
    let mask = tracee.sigmask()?;
    let rseq = tracee.rseq_config()?;
    let injected = if pre { None } else { Some(injected::collect(&tracee, &insp.maps, &regs, mask)?) };
    debug!(pid, "registers and injected queries done");

    let mem_start = Instant::now();
    let written = tracking::written(method, holder.as_ref(), &proc, &insp.planned)?;
    let collected = pages::collect(&proc, &insp.planned)?;
    debug!(pid, pages = collected.len(), tracker = method.name(), "page tables read");
    let record = if keep_tracking {
        Some(tracking::arm(
            method,
            holder.clone(),
            &written,
            &tracee,
            &insp.maps,
            &insp.planned,
            &regs,
            mask,
            opts.track_idle,
            opts.track_owner,
        )?)
    } else {
        None
    };
    let mut released_at = None;
    if pre {
        // A pre-dump copies while the task runs: tracking catches what it
        // changes meanwhile for the next round.
        tracee.detach(0)?;
        released_at = Some(frozen_at.elapsed());
        resend(pid, &[], stopped);
    }
    let mem = RemoteMem::open(pid)?;
    let sel = pages::Selection {
        method,
        parent: parent.as_ref().map(|p| &p.view),
        written,
        eager: opts.lazy.as_ref().map(|_| eager_ranges(&regs, rseq.map(|r| (r.addr, u64::from(r.len))), &insp.planned)),
        running: pre,
    };
    let md = pages::write(&mem, &collected, &sel, &mut writer, pid)?;
    let memdump_us = mem_start.elapsed().as_micros() as u64;
    info!(pid, copied = md.pages_written, in_parent = md.pages_in_parent, "memory copied");

    let write_start = Instant::now();
    if let Some(inj) = &injected {
        let pending = pending_signals(&tracee)?;
        let task = assemble(&proc, &insp, &regs, mask, rseq, inj, pending, stopped)?;
        writer.write_json(&task_file(pid), &task)?;
    }
    writer.write_json(&pagemap_file(pid), &md.pagemap)?;
    if let Some(r) = &record {
        writer.write_json(TRACK_FILE, r)?;
    }
    testhook::stage("write");

    let page = crate::page_size();
    let stats = DumpStats {
        frozen_us: released_at.unwrap_or_else(|| frozen_at.elapsed()).as_micros() as u64,
        memdump_us,
        write_us: write_start.elapsed().as_micros() as u64,
        total_us: t0.elapsed().as_micros() as u64,
        vmas: insp.planned.len() as u64,
        pages_scanned: md.pages_scanned,
        pages_written: md.pages_written,
        pages_in_parent: md.pages_in_parent,
        pages_lazy: md.pages_lazy,
        bytes_written: md.pages_written * page,
    };
    writer.write_json(STATS, &stats)?;
    let mut inventory = Inventory::new(opts.kind.clone(), pid, page);
    inventory.parent = parent.as_ref().map(|p| p.rel.to_string_lossy().into_owned());
    writer.commit(inventory)?;

    if !keep_tracking {
        if let Some(h) = &holder {
            h.stop();
            debug!(pid, holder = h.pid, "dirty tracking ended");
        }
    }
    if opts.lazy.is_some() {
        return Ok(Dumped { stats, frozen: Some(Frozen { tracee, pagemap: md.pagemap, since: frozen_at }) });
    } else if pre {
        info!(pid, "pre-dump complete");
    } else if opts.leave_running {
        tracee.detach(0)?;
        resend(pid, &injected.as_ref().map(|i| i.deferred_signals.clone()).unwrap_or_default(), stopped);
        info!(pid, "task released");
    } else {
        tracee.kill()?;
        info!(pid, "task killed after dump");
    }
    Ok(Dumped { stats, frozen: None })
}

/// Pages restored eagerly in a lazy dump: those around the stack pointer,
/// which the task touches the moment it runs, and its rseq area, which the
/// kernel itself writes as the task resumes: such a write does not go
/// through the userfaultfd, it fills the page with zeros first, and the
/// lazy copy would then find the page taken.
fn eager_ranges(regs: &NativeState, rseq: Option<(u64, u64)>, planned: &[memory::PlannedVma]) -> Vec<(u64, u64)> {
    const AROUND: u64 = 64 << 10;
    let page = crate::page_size();
    let sp = Native::sp(regs);
    let mut out: Vec<(u64, u64)> = planned
        .iter()
        .filter(|p| p.vma.start <= sp && sp < p.vma.end)
        .map(|p| (sp.saturating_sub(AROUND).max(p.vma.start), (sp + AROUND).min(p.vma.end)))
        .collect();
    if let Some((addr, len)) = rseq.filter(|&(a, l)| a != 0 && l != 0) {
        out.push((addr & !(page - 1), (addr + len).div_ceil(page) * page));
    }
    out
}

/// Keep the task frozen and serve its lazy pages until the destination has
/// them all; then kill it. If nobody comes, give the task back and make
/// the images unusable (they would be a second, stale copy).
fn serve_lazy(
    tracee: &Tracee,
    creds: &crate::net::Credentials,
    wait: Duration,
    listener: std::net::TcpListener,
    dir: &std::path::Path,
    pagemap: &crate::image::pagemap::PagemapImage,
) -> Result<()> {
    use crate::lazy::{self, serve};
    let pid = tracee.pid;
    let store =
        std::sync::Arc::new(serve::TaskPages { mem: RemoteMem::open(pid)?, allowed: lazy::lazy_ranges(pagemap) });
    info!(pid, bytes = store.allowed.bytes(), "serving lazy pages");
    testhook::stage("serve");
    let (served, stats) = serve::serve(listener, creds, store, wait, || {
        // From the first peer on, the task lives on the destination: it
        // must never run here again, even if ferry dies.
        tracee.set_options(O_TRACESYSGOOD | crate::ptrace::O_EXITKILL)
    })?;
    if !served {
        let _ = std::fs::remove_file(dir.join(crate::image::INVENTORY));
        tracee.detach(0)?;
        bail!(
            "no lazy-pages daemon connected within {} s: task {pid} runs on here, and {} is no longer a usable image",
            wait.as_secs(),
            dir.display()
        );
    }
    tracee.kill()?;
    info!(
        pid,
        faults = stats.urgent.load(std::sync::atomic::Ordering::Relaxed),
        bytes = stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        "all lazy pages transferred; task killed"
    );
    Ok(())
}

/// Signals held back during injection, and the stop the task was in.
fn resend(pid: i32, deferred: &[i32], stopped: bool) {
    for &sig in deferred {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, sig) };
    }
    if stopped {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
}

fn pending_signals(tracee: &Tracee) -> Result<Vec<PendingSignal>> {
    let mut out = Vec::new();
    for shared in [false, true] {
        for info in tracee.pending_signals(shared)? {
            let signo = i32::from_ne_bytes(info[..4].try_into().unwrap());
            out.push(PendingSignal { shared, signo, siginfo: info });
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    proc: &ProcDir,
    insp: &scope::Inspection,
    regs: &NativeState,
    mask: u64,
    rseq: Option<RseqConfig>,
    inj: &injected::InjectedState,
    pending: Vec<PendingSignal>,
    stopped: bool,
) -> Result<TaskImage> {
    let pid = proc.pid;
    let (status, stat) = (&insp.status, &insp.stat);
    let exe_path = proc.read_link("exe")?;
    let exe_meta = std::fs::metadata(proc.path("exe")).with_context(|| format!("task {pid}: stat exe"))?;
    let auxv = proc.read_bytes("auxv")?;
    let personality = proc.read("personality")?;
    let mut cpu = regs.clone();
    let restart = Native::restart_fixup(&mut cpu);
    Ok(TaskImage {
        pid,
        comm: proc.read("comm")?.trim_end_matches('\n').to_string(),
        stopped,
        ids: Ids { ppid: stat.ppid, pgid: stat.pgrp, sid: stat.session, tty_nr: stat.tty_nr, tpgid: stat.tpgid },
        creds: Creds {
            uid: status.uid,
            gid: status.gid,
            groups: status.groups.clone(),
            cap_inh: status.cap_inh,
            cap_prm: status.cap_prm,
            cap_eff: status.cap_eff,
            cap_bnd: status.cap_bnd,
            cap_amb: status.cap_amb,
            securebits: inj.securebits,
            no_new_privs: status.no_new_privs,
        },
        fs: FsState {
            cwd: proc.read_link("cwd")?,
            root: proc.read_link("root")?,
            umask: status.umask.with_context(|| format!("task {pid}: no Umask in status"))?,
        },
        personality: u32::from_str_radix(personality.trim(), 16)
            .with_context(|| format!("task {pid}: bad personality {personality:?}"))?,
        rlimits: proc.limits()?,
        signals: Signals { blocked: mask, actions: inj.actions.clone(), pending, altstack: inj.altstack.clone() },
        itimers: inj.itimers.clone(),
        prctl: inj.prctl.clone(),
        rseq: rseq.map(|r| Rseq { addr: r.addr, len: r.len, sig: r.sig }),
        mm: MmState {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk: inj.brk,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
            auxv: auxv.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect(),
            exe: files::file_id(&exe_path, &exe_meta),
        },
        vmas: insp.planned.iter().map(|p| p.vma.clone()).collect(),
        fds: insp.fds.clone(),
        cpu: Native::wrap(cpu),
        restart,
    })
}
