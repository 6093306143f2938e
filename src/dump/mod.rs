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

pub mod container;
pub mod files;
pub mod injected;
pub mod memory;
pub mod objects;
pub mod pages;
pub mod scope;
pub mod seccomp;
pub mod thread;
pub mod tmpfs;
pub mod tracking;
pub mod tree;

use crate::action_script::Action;
use crate::image::chain::MemoryView;
use crate::image::inventory::{ImageKind, Inventory};
use crate::image::objects::OBJECTS;
use crate::image::stats::DumpStats;
use crate::image::task::{FsState, Ids, MmState, PendingSignal, TaskImage, ThreadImage};
use crate::image::tree::{ProcessEntry, ProcessState, TreeImage, TREE};
use crate::image::{task_file, ImageDir, ImageWriter, STATS};
use crate::net::auth::Key;
use crate::proc::ProcDir;
use crate::ptrace::remote::RemoteMem;
use crate::ptrace::O_TRACESYSGOOD;
use crate::testhook;
use crate::track::{self, TrackRecord, TRACK_FILE};
use anyhow::{bail, Context, Result};
use ferry_arch::{Backend, Native, NativeState};
use objects::ObjectTable;
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
    /// `--file-locks`: take flock and OFD locks along.
    pub file_locks: bool,
    /// `--ext-unix-sk`: unix sockets whose peer is outside the tree.
    pub ext_unix_sk: crate::objects::ExtUnixSk,
    /// `--ghost-limit`: the most of a deleted file's content kept.
    pub ghost_limit: u64,
    /// `--tcp-established`: take established TCP connections along.
    pub tcp_established: bool,
    /// `--skip-in-flight`: let connections not yet accepted go.
    pub skip_in_flight: bool,
    /// `--network-lock`: how the connections' packets are held.
    pub network_lock: crate::netlock::Method,
    /// `--action-script`: run at CRIU's points.
    pub scripts: crate::action_script::Scripts,
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
    /// What the caller says about a container's namespaces.
    pub container: container::ContainerOptions,
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

/// A lazy dump's tree, still frozen, and the pages it has to serve.
pub struct Frozen {
    pub tree: tree::FrozenTree,
    /// ferry's PID of the tree's root.
    pub pid: i32,
    pub processes: Vec<LazyProcess>,
    /// When the tree stopped running (for the downtime).
    pub since: Instant,
    /// Its TCP connections, in repair mode.
    pub repaired: crate::objects::tcp_connection::Repaired,
    /// The network lock holding their packets.
    pub lock: std::sync::Mutex<Option<crate::netlock::Lock>>,
    /// Dirty tracking of the pre-copy rounds, ended with the tree's fate:
    /// ending it makes the kernel walk every tracked page table to lift the
    /// write protection, work that competed with the restore for the CPU
    /// inside the downtime, and a killed task needs none of it.
    pub tracking: Vec<crate::track::holder::HolderRef>,
}

/// One process of a lazy dump.
pub struct LazyProcess {
    /// In the tree's namespace (how the destination asks for its pages).
    pub vpid: i32,
    /// ferry's.
    pub pid: i32,
    pub pagemap: crate::image::pagemap::PagemapImage,
}

impl Frozen {
    /// What the destination may fetch: each process's lazy pages (and its
    /// pre-copied ones again, for a damaged copy), from its memory here.
    pub fn store(&self) -> Result<crate::lazy::serve::TreePages> {
        let mut processes = std::collections::HashMap::new();
        for p in &self.processes {
            let pages = crate::lazy::serve::TaskPages {
                mem: RemoteMem::open(p.pid)?,
                allowed: crate::lazy::servable_ranges(&p.pagemap),
            };
            processes.insert(p.vpid as u64, pages);
        }
        Ok(crate::lazy::serve::TreePages { processes })
    }

    /// Bytes left on the source for lazy transfer.
    pub fn lazy_bytes(&self) -> u64 {
        self.processes.iter().map(|p| crate::lazy::lazy_ranges(&p.pagemap).bytes()).sum()
    }

    /// Let the task run on here.
    pub fn release(&self) {
        self.end_tracking();
        self.repaired.release();
        self.unlock();
        self.tree.release(|_| {});
    }
    /// The destination has the task: the source's copy goes, its
    /// connections without a packet, and the lock here with it.
    pub fn kill(&self) -> Result<()> {
        let r = self.tree.kill();
        // The holders follow the task out; this only makes it sure.
        self.end_tracking();
        self.repaired.close_silently();
        self.unlock();
        r
    }
    fn end_tracking(&self) {
        for h in &self.tracking {
            h.stop();
            debug!(pid = self.pid, holder = h.pid, "dirty tracking ended");
        }
    }
    fn unlock(&self) {
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
    pub fn set_options(&self, options: u64) -> Result<()> {
        self.tree.set_options(options)
    }
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
            file_locks: false,
            ext_unix_sk: Default::default(),
            ghost_limit: crate::objects::deleted_file::DEFAULT_GHOST_LIMIT,
            tcp_established: false,
            skip_in_flight: false,
            network_lock: Default::default(),
            scripts: Default::default(),
            prev: None,
            track_mem: false,
            tracker: track::Choice::Auto,
            track_idle: Duration::from_secs(30 * 60),
            lazy: None,
            track_owner: None,
            container: Default::default(),
        }
    }
}

/// The previous round: its view of memory and how it was tracked.
struct Parent {
    rel: PathBuf,
    images: ImageDir,
    track: Option<TrackRecord>,
    /// Each process's view, read before the freeze (reading a large
    /// pagemap takes milliseconds the task need not spend frozen).
    views: std::sync::Mutex<std::collections::HashMap<i32, MemoryView>>,
}

impl Parent {
    /// Process `vpid`'s memory in the previous round (None: it was not
    /// there yet, so all of its pages are new).
    fn view(&self, vpid: i32) -> Result<Option<MemoryView>> {
        if !self.images.inventory.tasks.contains(&vpid) {
            return Ok(None);
        }
        if let Some(v) = self.views.lock().unwrap().remove(&vpid) {
            return Ok(Some(v));
        }
        MemoryView::load(self.images.clone(), vpid).map(Some)
    }
}

fn open_parent(opts: &DumpOptions) -> Result<Option<Parent>> {
    let Some(rel) = &opts.prev else { return Ok(None) };
    // The path is relative to the images directory, which may not exist yet.
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let dir = opts.dir.join(rel);
    let images = ImageDir::open(&dir).with_context(|| format!("--prev-images-dir {}", rel.display()))?;
    // Images name processes by their PID in the tree's namespace.
    let vpid = ProcDir::new(opts.pid).status().map(|s| s.vpid()).unwrap_or(opts.pid);
    if images.inventory.root_pid != vpid {
        bail!("{}: the previous images are of task {}, not {}", dir.display(), images.inventory.root_pid, opts.pid);
    }
    let track =
        if images.entry(TRACK_FILE).is_ok() { Some(images.read_json::<TrackRecord>(TRACK_FILE)?) } else { None };
    let views = images
        .inventory
        .tasks
        .iter()
        .map(|&p| MemoryView::load(images.clone(), p).map(|v| (p, v)))
        .collect::<Result<_>>()?;
    link_parent(&opts.dir, rel)?;
    Ok(Some(Parent { rel: rel.clone(), images, track, views: std::sync::Mutex::new(views) }))
}

/// Whether task `pid` runs under seccomp filters.
fn under_seccomp(pid: i32) -> bool {
    ProcDir::new(pid).status().is_ok_and(|s| s.seccomp != 0)
}

/// CRIU's `parent` symlink in the images directory, to the previous
/// images (runc checks it is there); ferry itself follows
/// `inventory.parent`.
fn link_parent(dir: &std::path::Path, rel: &std::path::Path) -> Result<()> {
    let link = dir.join("parent");
    if link.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(rel, &link).with_context(|| format!("linking {} to {}", link.display(), rel.display()))
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
        if f.lazy_bytes() == 0 {
            // Nothing changed since the last round (or nothing is lazy-able):
            // the images hold everything, so this is a plain dump.
            info!(pid = f.pid, "no page was left lazy: the images hold the whole task");
            f.kill()?;
            return Ok(d.stats);
        }
        let creds = crate::net::Credentials::new(Some(key), tls.clone())?;
        serve_lazy(&f, &creds, *wait, listener.listen()?, opts)?;
    }
    Ok(d.stats)
}

/// Dump; a lazy dump returns with the task still frozen.
pub fn dump_frozen(opts: &DumpOptions) -> Result<Dumped> {
    let t0 = Instant::now();
    crate::objects::deleted_file::set_ghost_limit(opts.ghost_limit);
    let pre = opts.kind == ImageKind::PreDump;
    if !pre && opts.track_mem && opts.prev.is_none() && !opts.leave_running {
        bail!(
            "--track-mem without --prev-images-dir arms tracking for a later dump, which needs the task to live on: \
             add --leave-running, or use pre-dump"
        );
    }
    // Refuse what cannot be dumped before anything is changed.
    check(opts)?;
    let parent = open_parent(opts)?;
    let method = match parent.as_ref().and_then(|p| p.track.as_ref()) {
        Some(t) if opts.tracker != track::Choice::Auto && track::choose(opts.tracker)? != t.method => {
            bail!("the previous images were tracked with {}; a chain keeps one dirty tracker", t.method.name())
        }
        Some(t) => t.method,
        None if opts.tracker == track::Choice::Auto && under_seccomp(opts.pid) => {
            // uffd-wp has the task call userfaultfd(2) itself, which
            // container profiles (podman's, Docker's) deny.
            info!(pid = opts.pid, "the task runs under seccomp filters: dirty tracking by hashing");
            track::Method::Hashing
        }
        None => track::choose(opts.tracker)?,
    };
    let holders = parent.as_ref().and_then(|p| p.track.as_ref()).map(|t| t.holders.clone()).unwrap_or_default();
    // Tracking goes on after this round for pre-dumps and iterative dumps.
    let keep_tracking = pre || (opts.track_mem && opts.leave_running);
    if pre && opts.lazy.is_some() {
        bail!("--lazy-pages goes with the final dump, not pre-dump");
    }
    let mut writer = ImageWriter::create(&opts.dir)?;
    opts.scripts.run(Action::PreDump, &opts.dir, Some(opts.pid))?;

    let frozen_at = Instant::now();
    let frozen = tree::freeze(opts.pid, O_TRACESYSGOOD)?;
    info!(pid = opts.pid, processes = frozen.processes.len(), "tree frozen");
    // A final dump's written-page scan only reads: it can run beside the inspection too.
    let early_page_tables = pages::EarlyPageTables::start(
        frozen
            .alive()
            .map(|p| (p.pid, !keep_tracking && tracking::scans_written(method, holders.get(&p.vpid))))
            .collect(),
    );
    testhook::stage("freeze");
    // Before any socket is read: their packets are held from here on.
    let lock = if pre { None } else { lock_network(&frozen, opts)? };

    // The tree may have changed between the first look and the freeze:
    // this look is the one that counts.
    let mut table = ObjectTable::new(frozen.processes.iter().map(|p| (p.pid, p.vpid)).collect());
    let (tree_image, inspections) = look(&frozen.processes, opts, Some(&mut table))?;
    let repaired = table.take_repaired();
    let pids: Vec<(i32, i32)> = frozen.alive().map(|p| (p.pid, p.vpid)).collect();
    let container = if pre { None } else { container::inspect(&pids, &opts.container)? };

    let mut processes = Vec::new();
    for (p, insp) in frozen.alive().zip(&inspections) {
        processes.push(dump_process(&frozen, p, insp, pre)?);
    }
    debug!("registers and injected queries done");

    // Memory, per process: while frozen, what changed since the last round
    // and the page tables, and tracking armed for the next; then (a
    // pre-dump lets the tree run first) the pages copied.
    let mem_start = Instant::now();
    let mut record = keep_tracking.then(|| TrackRecord { method, ..Default::default() });
    let mut selections = Vec::new();
    let mut early_tables = early_page_tables.join().unwrap_or_default().into_iter();
    for (i, (p, insp)) in frozen.alive().zip(&inspections).enumerate() {
        let proc = ProcDir::new(p.pid);
        let pd = &processes[i];
        let holder = holders.get(&p.vpid);
        let mut early = early_tables.next().unwrap_or_default();
        let written = tracking::written(method, holder, &proc, &insp.planned, keep_tracking, &mut early)?;
        let collected = pages::collect(&proc, &insp.planned, early)?;
        debug!(pid = p.vpid, pages = collected.len(), tracker = method.name(), "page tables read");
        if let Some(r) = record.as_mut() {
            let main = frozen.tracee(p.pid);
            let regs = (&pd.main_regs, pd.main_mask);
            if let Some(h) = tracking::arm(
                method,
                holder.cloned(),
                &written,
                main,
                &insp.maps,
                &insp.planned,
                regs.0,
                regs.1,
                opts.track_idle,
                opts.track_owner,
            )? {
                r.holders.insert(p.vpid, h);
            }
        }
        let view = match &parent {
            Some(par) => par.view(p.vpid)?,
            None => None,
        };
        let eager =
            opts.lazy.as_ref().map(|_| track::merged(eager_ranges(&pd.thread_regs, pd.image.as_ref(), &insp.planned)));
        selections.push((collected, view, written, eager));
    }
    let mut released_at = None;
    if pre {
        // A pre-dump copies while the tree runs: tracking catches what it
        // changes meanwhile for the next round.
        frozen.release(|q| resend(q.pid, &[], frozen.was_stopped(q.pid)));
        released_at = Some(frozen_at.elapsed());
    }
    let mut mem_stats = Vec::new();
    let mut pagemaps = Vec::new();
    for (p, (collected, view, written, eager)) in frozen.alive().zip(selections) {
        let mem = RemoteMem::open(p.pid)?;
        let keep_ids = pre || opts.leave_running || method.ids_are_hashes();
        let sel = pages::Selection { method, parent: view.as_ref(), written, eager, running: pre, keep_ids };
        let md = pages::write(&mem, &collected, &sel, &mut writer, p.vpid)?;
        info!(pid = p.vpid, copied = md.pages_written, in_parent = md.pages_in_parent, "memory copied");
        mem_stats.push((md.pages_scanned, md.pages_written, md.pages_in_parent, md.pages_lazy));
        pagemaps.push((p.vpid, p.pid, md.pagemap));
    }
    let memdump_us = mem_start.elapsed().as_micros() as u64;

    let write_start = Instant::now();
    if !pre {
        writer.write_json(TREE, &tree_image)?;
        if let Some(c) = &container {
            for m in c.mounts.iter().filter(|m| m.kind == crate::image::container::MountKind::Tmpfs) {
                tmpfs::write(frozen.processes[0].pid, m, &mut writer)?;
            }
            writer.write_json(crate::image::container::CONTAINER, c)?;
        }
        let objects = table.write(&mut writer)?;
        writer.write_json(OBJECTS, &objects)?;
        for image in processes.iter().filter_map(|pd| pd.image.as_ref()) {
            writer.write_json(&task_file(image.pid), image)?;
        }
    }
    for (vpid, _, pm) in &pagemaps {
        writer.write_pagemap(*vpid, pm)?;
    }
    if let Some(r) = &record {
        writer.write_json(TRACK_FILE, r)?;
    }
    // The task is killed at the end: the lock stays for the restore.
    let kill = !pre && opts.lazy.is_none() && !opts.leave_running;
    if let (true, Some(l)) = (kill, &lock) {
        writer.write_json(crate::netlock::RECORD_FILE, l.record())?;
    }
    testhook::stage("write");

    let page = crate::page_size();
    let sum = |f: fn(&(u64, u64, u64, u64)) -> u64| mem_stats.iter().map(f).sum::<u64>();
    let stats = DumpStats {
        frozen_us: released_at.unwrap_or_else(|| frozen_at.elapsed()).as_micros() as u64,
        memdump_us,
        write_us: write_start.elapsed().as_micros() as u64,
        total_us: t0.elapsed().as_micros() as u64,
        vmas: inspections.iter().map(|i| i.planned.len() as u64).sum(),
        pages_scanned: sum(|s| s.0),
        pages_written: sum(|s| s.1),
        pages_in_parent: sum(|s| s.2),
        pages_lazy: sum(|s| s.3),
        bytes_written: sum(|s| s.1) * page,
    };
    writer.write_json(STATS, &stats)?;
    let root_vpid = frozen.processes[0].vpid;
    let mut inventory = Inventory::new(opts.kind.clone(), root_vpid, page);
    inventory.tasks = frozen.alive().map(|p| p.vpid).collect();
    inventory.parent = parent.as_ref().map(|p| p.rel.to_string_lossy().into_owned());
    writer.commit(inventory)?;
    crate::image::criu_inventory::write(&opts.dir)?;
    if !pre {
        opts.scripts.run(Action::PostDump, &opts.dir, Some(opts.pid))?;
    }

    // A lazy dump ends tracking with the tree's fate (see Frozen::tracking).
    if !keep_tracking && opts.lazy.is_none() {
        for h in holders.values() {
            h.stop();
            debug!(pid = opts.pid, holder = h.pid, "dirty tracking ended");
        }
    }
    if opts.lazy.is_some() {
        let processes = pagemaps.into_iter().map(|(vpid, pid, pagemap)| LazyProcess { vpid, pid, pagemap }).collect();
        let frozen = Frozen {
            tree: frozen,
            pid: opts.pid,
            processes,
            since: frozen_at,
            repaired,
            lock: std::sync::Mutex::new(lock),
            tracking: if keep_tracking { Vec::new() } else { holders.into_values().collect() },
        };
        return Ok(Dumped { stats, frozen: Some(frozen) });
    } else if pre {
        info!(pid = opts.pid, "pre-dump complete");
    } else if opts.leave_running {
        repaired.release();
        if lock.is_some() {
            opts.scripts.run(Action::NetworkUnlock, &opts.dir, Some(opts.pid))?;
        }
        drop(lock);
        frozen.release(|q| {
            let deferred = processes
                .iter()
                .find(|d| d.image.as_ref().is_some_and(|i| i.pid == q.vpid))
                .map(|d| d.deferred.clone());
            resend(q.pid, &deferred.unwrap_or_default(), frozen.was_stopped(q.pid))
        });
        info!(pid = opts.pid, "tree released");
    } else {
        frozen.kill()?;
        // Back in repair mode and closed: no packet.
        repaired.close_silently();
        if let Some(l) = lock {
            let r = l.keep();
            info!(name = r.name, "the network lock stays until the restore");
        }
        info!(pid = opts.pid, "tree killed after dump");
    }
    Ok(Dumped { stats, frozen: None })
}

/// Hold the packets of the frozen tree's established TCP connections
/// (none without --tcp-established: such a dump refuses them).
fn lock_network(frozen: &tree::FrozenTree, opts: &DumpOptions) -> Result<Option<crate::netlock::Lock>> {
    if !opts.tcp_established || opts.network_lock == crate::netlock::Method::Skip {
        return Ok(None);
    }
    let pids: Vec<i32> = frozen.alive().map(|p| p.pid).collect();
    let conns = crate::proc::tcp_table::held_by(&pids)?;
    if conns.is_empty() {
        return Ok(None);
    }
    opts.scripts.run(Action::NetworkLock, &opts.dir, Some(opts.pid))?;
    let ns = crate::netlock::Netns::of(opts.pid);
    crate::netlock::Lock::take(opts.network_lock, ns, &format!("ferry-lock-{}", opts.pid), &conns)
}

/// cwd, root and umask; a cwd that was deleted is kept as where it was,
/// with its mode and owner (the directory is empty: rmdir saw to that).
fn fs_state(proc: &ProcDir, pid: i32, umask: Option<u32>) -> Result<FsState> {
    use std::os::unix::fs::MetadataExt;
    let mut cwd = proc.read_link("cwd")?;
    let meta = std::fs::metadata(proc.path("cwd")).with_context(|| format!("task {pid}: stat of its cwd"))?;
    let cwd_deleted = (meta.nlink() == 0).then(|| crate::image::task::DeletedDir {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    });
    if cwd_deleted.is_some() {
        let text = cwd.to_string_lossy();
        cwd = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text).to_string());
    }
    Ok(FsState {
        cwd,
        root: proc.read_link("root")?,
        umask: umask.with_context(|| format!("task {pid}: no Umask in status"))?,
        cwd_deleted,
    })
}

/// The first look: refuse what cannot be dumped while the tree runs on
/// untouched.
pub fn check(opts: &DumpOptions) -> Result<()> {
    crate::objects::deleted_file::set_ghost_limit(opts.ghost_limit);
    let mut attempt = 0;
    loop {
        let live = tree::discover(opts.pid)?;
        if live[0].zombie {
            bail!("task {} is a zombie (it has exited; its parent has not collected it)", opts.pid);
        }
        let looked = look(&live, opts, None).and_then(|_| {
            let pids: Vec<(i32, i32)> = live.iter().filter(|p| !p.zombie).map(|p| (p.pid, p.vpid)).collect();
            // A pre-dump saves memory only; the final dump reads the namespaces.
            if opts.kind == ImageKind::PreDump {
                return Ok(None);
            }
            container::inspect(&pids, &opts.container)
        });
        match looked {
            Ok(_) => return Ok(()),
            // A process of the running tree ended while it was looked at
            // (PostgreSQL's autovacuum workers come and go): look again.
            Err(e) if attempt < 10 && live.iter().any(|p| !ProcDir::new(p.pid).exists()) => {
                debug!(pid = opts.pid, "a process ended during the first look ({e:#}); looking again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Look at the whole tree: every process's own checks, then the tree's.
/// With a table (the second look, frozen) the fd tables and memory
/// objects go into it and the tree's image is returned; the first look
/// (tasks still running) only checks.
fn look(
    live: &[tree::LiveProcess],
    opts: &DumpOptions,
    table: Option<&mut ObjectTable>,
) -> Result<(TreeImage, Vec<scope::Inspection>)> {
    let frozen = table.is_some();
    let mut scratch = ObjectTable::new(live.iter().map(|p| (p.pid, p.vpid)).collect()).quiet();
    let table = table.unwrap_or(&mut scratch);
    let pid_ns = scope::check_pid_namespaces(live)?;
    tree::check_sharing(live)?;
    let container_mounts = container::mount_ids(live[0].pid)?.map(std::sync::Arc::new);
    let mut ids = Vec::new();
    let mut entries = Vec::new();
    let mut inspections = Vec::new();
    for (i, p) in live.iter().enumerate() {
        let proc = ProcDir::new(p.pid);
        let status = proc.status().with_context(|| format!("task {}", p.vpid))?;
        let stat = proc.stat().with_context(|| format!("task {}", p.vpid))?;
        let vsid = status.nssid.last().copied().unwrap_or(stat.session);
        let vpgid = status.nspgid.last().copied().unwrap_or(stat.pgrp);
        ids.push((vsid, vpgid));
        let vppid = live.iter().find(|q| q.pid == p.ppid).map(|q| q.vpid).unwrap_or(0);
        let state = if p.zombie {
            ProcessState::Zombie { status: stat.exit_code }
        } else {
            let pidfd = if frozen { Some(crate::pidfd::open(p.pid)?) } else { None };
            let at = scope::Place {
                vpid: p.vpid,
                root: i == 0,
                policy: crate::objects::FdPolicy {
                    shell_job: opts.shell_job,
                    orphan_pts_master: opts.container.orphan_pts_master,
                    container_mounts: container_mounts.clone(),
                    file_locks: opts.file_locks,
                    ext_unix_sk: opts.ext_unix_sk.clone(),
                    tcp_established: opts.tcp_established,
                    skip_in_flight: opts.skip_in_flight,
                    repair: frozen && opts.kind != ImageKind::PreDump,
                },
                frozen,
            };
            inspections.push(scope::inspect(&proc, &at, table, pidfd.as_ref())?);
            ProcessState::Alive
        };
        let threads = if p.zombie {
            Vec::new()
        } else {
            p.threads
                .iter()
                .map(|&t| {
                    proc.thread(t).status().map(|s| s.vpid()).with_context(|| format!("thread {t} of task {}", p.vpid))
                })
                .collect::<Result<_>>()?
        };
        entries.push(ProcessEntry {
            pid: p.vpid,
            comm: stat.comm.clone(),
            ppid: vppid,
            pgid: vpgid,
            sid: vsid,
            exit_signal: stat.exit_signal,
            threads,
            state,
        });
    }
    scope::check_tree(live, &ids, opts.shell_job)?;
    table.check_users()?;
    Ok((TreeImage { root: live[0].vpid, pid_ns, processes: entries }, inspections))
}

/// One process's state (not its memory), read while the tree is frozen.
struct ProcessDump {
    /// None for a pre-dump, which saves memory only.
    image: Option<TaskImage>,
    main_regs: NativeState,
    main_mask: u64,
    /// Every thread's registers, for the lazy dump's eager pages.
    thread_regs: Vec<NativeState>,
    deferred: Vec<i32>,
}

fn dump_process(
    frozen: &tree::FrozenTree,
    p: &tree::LiveProcess,
    insp: &scope::Inspection,
    pre: bool,
) -> Result<ProcessDump> {
    let proc = ProcDir::new(p.pid);
    let main = frozen.tracee(p.pid);
    if pre {
        // A pre-dump needs only what tracking and eager pages use.
        let regs = main.cpu_state()?;
        let thread_regs = p.threads.iter().map(|&t| frozen.tracee(t).cpu_state()).collect::<Result<_>>()?;
        return Ok(ProcessDump {
            image: None,
            main_mask: main.sigmask()?,
            main_regs: regs,
            thread_regs,
            deferred: Vec::new(),
        });
    }
    let mut threads = Vec::new();
    let mut thread_regs = Vec::new();
    let mut deferred = Vec::new();
    let mut process = None;
    for (k, &tid) in p.threads.iter().enumerate() {
        let tp = proc.thread(tid);
        let vtid = tp.status()?.vpid();
        let (t, ps) = thread::collect(frozen.tracee(tid), &tp, vtid, &insp.maps, k == 0)
            .with_context(|| format!("task {} thread {vtid}", p.vpid))?;
        if k == 0 {
            process = ps;
        }
        thread_regs.push(t.regs);
        deferred.extend(t.deferred_signals);
        threads.push(t.image);
    }
    let process = process.expect("the main thread answers for the process");
    let shared_pending = thread::pending_signals(main, true)?;
    let main_mask = threads[0].blocked;
    let image = assemble(&proc, p, insp, process, shared_pending, threads, frozen.was_stopped(p.pid))?;
    Ok(ProcessDump { main_regs: thread_regs[0].clone(), main_mask, image: Some(image), thread_regs, deferred })
}

/// Pages restored eagerly in a lazy dump (see [`crate::lazy::local::eager_ranges`]).
fn eager_ranges(regs: &[NativeState], image: Option<&TaskImage>, planned: &[memory::PlannedVma]) -> Vec<(u64, u64)> {
    let rseqs = image.map(|i| i.threads.as_slice()).unwrap_or_default().iter().filter_map(|t| t.rseq.as_ref());
    crate::lazy::local::eager_ranges(
        regs.iter().map(Native::sp),
        rseqs.map(|r| (r.addr, r.len)),
        planned.iter().map(|p| &p.vma),
        crate::page_size(),
    )
}

/// Keep the task frozen and serve its lazy pages until the destination has
/// them all; then kill it. If nobody comes, give the task back and make
/// the images unusable (they would be a second, stale copy).
fn serve_lazy(
    frozen: &Frozen,
    creds: &crate::net::Credentials,
    wait: Duration,
    listener: std::net::TcpListener,
    opts: &DumpOptions,
) -> Result<()> {
    use crate::lazy::serve;
    let (pid, dir) = (frozen.pid, opts.dir.as_path());
    let store = std::sync::Arc::new(frozen.store()?);
    info!(pid, bytes = frozen.lazy_bytes(), processes = frozen.processes.len(), "serving lazy pages");
    // The task runs on here; the images would be a second, stale copy.
    let give_back = || {
        let _ = std::fs::remove_file(dir.join(crate::image::INVENTORY));
        frozen.release();
        format!("task {pid} runs on here, and {} is no longer a usable image", dir.display())
    };
    // The port listens: the destination may start (--status-fd, a
    // status-ready script or notification).
    if let Err(e) = opts.scripts.run(Action::StatusReady, dir, Some(pid)) {
        return Err(e.context(give_back()));
    }
    testhook::stage("serve");
    let (served, stats) = serve::serve(listener, creds, store, wait, || {
        // From the first peer on, the task lives on the destination: it
        // must never run here again, even if ferry dies.
        frozen.set_options(O_TRACESYSGOOD | crate::ptrace::O_EXITKILL)
    })?;
    if !served {
        bail!("no lazy-pages daemon connected within {} s: {}", wait.as_secs(), give_back());
    }
    frozen.kill()?;
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

#[allow(clippy::too_many_arguments)]
fn assemble(
    proc: &ProcDir,
    p: &tree::LiveProcess,
    insp: &scope::Inspection,
    process: injected::ProcessState,
    shared_pending: Vec<PendingSignal>,
    threads: Vec<ThreadImage>,
    stopped: bool,
) -> Result<TaskImage> {
    let pid = p.vpid;
    let (status, stat) = (&insp.status, &insp.stat);
    let exe_path = proc.read_link("exe")?;
    let exe_meta = std::fs::metadata(proc.path("exe")).with_context(|| format!("task {pid}: stat exe"))?;
    let auxv = proc.read_bytes("auxv")?;
    let personality = proc.read("personality")?;
    let last = |v: &[i32], or: i32| v.last().copied().unwrap_or(or);
    Ok(TaskImage {
        pid,
        comm: proc.read("comm")?.trim_end_matches('\n').to_string(),
        stopped,
        ids: Ids {
            ppid: stat.ppid,
            pgid: last(&status.nspgid, stat.pgrp),
            sid: last(&status.nssid, stat.session),
            tty_nr: stat.tty_nr,
            tpgid: stat.tpgid,
        },
        fs: fs_state(proc, pid, status.umask)?,
        personality: u32::from_str_radix(personality.trim(), 16)
            .with_context(|| format!("task {pid}: bad personality {personality:?}"))?,
        rlimits: proc.limits()?,
        sigactions: process.actions,
        shared_pending,
        itimers: process.itimers,
        prctl: process.prctl,
        mm: MmState {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk: process.brk,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
            auxv: auxv.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect(),
            exe: crate::objects::regular::file_id(&exe_path, &exe_meta),
        },
        vmas: insp.planned.iter().map(|p| p.vma.clone()).collect(),
        fds: insp.fds.clone(),
        threads,
    })
}
