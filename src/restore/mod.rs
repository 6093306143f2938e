//! `ferry restore`: rebuild a dumped process tree at its original PIDs.
//!
//! The shared objects are re-created in ferry first ([`objects`]); then
//! ferry forks the root, which forks the rest of the tree down from there
//! at their PIDs, each process setting up what is easy from inside
//! ([`child`]). ferry seizes every process and drives it through injected
//! syscalls ([`mm`], [`thread`], [`finish`]) until it is the dumped one.
//! Only when all are complete does any of them run: the tree comes back
//! whole or not at all. Every process is traced with PTRACE_O_EXITKILL
//! until then, and the ones not seized yet die with their parent
//! (PR_SET_DEATHSIG): if anything fails, or ferry dies, none is left.

pub mod child;
pub mod container;
pub mod deleted_cwd;
pub mod finish;
pub mod fork;
pub mod mm;
pub mod objects;
pub mod paths;
pub mod plan;
pub mod pty;
pub mod thread;
pub mod tmpfs;

use crate::action_script::Action;
use crate::image::pagemap::PageFlags;
use crate::image::tree::ProcessState;
use crate::proc::ProcDir;
use crate::ptrace::inject::{find_syscall_insn, Injector};
use crate::ptrace::remote::RemoteMem;
use crate::ptrace::{OnDrop, Stop, Tracee, O_EXITKILL, O_TRACECLONE, O_TRACESYSGOOD};
use crate::testhook;
use crate::uffd::{self, feature, Uffd};
use anyhow::{anyhow, bail, Context, Result};
use ferry_arch::{Backend, Native, Syscall};
use plan::{ProcessPlan, TreePlan};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tracing::{debug, info};

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    pub detached: bool,
    pub shell_job: bool,
    pub pidfile: Option<PathBuf>,
    pub pid_wait: Duration,
    /// The image left pages on the source: who serves them.
    pub lazy: Option<LazyRestore>,
    /// `--inherit-fd`: ferry's fds to use for objects shared with the
    /// outside, by key (`pipe:[INODE]`).
    pub inherited: std::collections::HashMap<String, std::os::fd::RawFd>,
    /// `--tcp-close`: established connections come back aborted.
    pub tcp_close: bool,
    /// `--action-script`.
    pub scripts: crate::action_script::Scripts,
    /// `--network-lock`: how the connections' packets are held here
    /// until the tree runs.
    pub network_lock: crate::netlock::Method,
    /// `--root`, `--external mnt[...]`, `--restore-sibling`.
    pub container: container::ContainerRestore,
}

/// `--inherit-fd fd[N]:KEY` values, each checked to be an open fd.
pub fn parse_inherit_fds(values: &[String]) -> Result<std::collections::HashMap<String, std::os::fd::RawFd>> {
    let mut out = std::collections::HashMap::new();
    for v in values {
        let bad = || anyhow::anyhow!("--inherit-fd {v}: expected fd[N]:OBJECT, e.g. fd[3]:pipe:[52411]");
        let rest = v.strip_prefix("fd[").ok_or_else(bad)?;
        let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
        let fd: std::os::fd::RawFd = n.parse().map_err(|_| bad())?;
        if key.is_empty() || !crate::handed_fd::is_open(fd) {
            anyhow::bail!("--inherit-fd {v}: ferry has no fd {fd} open (hand it in from the shell, e.g. {fd}<>FILE)");
        }
        out.insert(key.to_string(), fd);
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyRestore {
    /// Hand the userfaultfd to `ferry lazy-pages` (socket in the images dir).
    Daemon,
    /// Give it back to the caller (`ferry receive` serves it itself).
    Caller,
}

/// A restored, running tree.
pub struct Restored {
    /// ferry's PID of the root (the dumped one, unless the tree has a PID
    /// namespace of its own).
    pub pid: i32,
    /// With `LazyRestore::Caller`: each process with lazy pages, and its
    /// userfaultfd.
    pub lazy: Vec<LazyProcess>,
    /// With `LazyRestore::Daemon`: the connection to the lazy-pages
    /// daemon, which starts its background transfers when this closes.
    pub handoff: Option<std::os::unix::net::UnixStream>,
}

/// A restored process whose missing pages are to be served.
pub struct LazyProcess {
    /// Its PID in the tree's namespace (how the source knows it) and ferry's.
    pub vpid: i32,
    pub pid: i32,
    pub uffd: Uffd,
    /// Its pre-copied pages not placed yet (see [`crate::lazy::local`]).
    pub local: Option<std::sync::Arc<crate::lazy::local::LocalPages>>,
}

pub fn run(opts: &RestoreOptions) -> Result<ExitCode> {
    let t0 = Instant::now();
    let restored = restore(opts)?;
    let pid = restored.pid;
    info!(pid, ms = t0.elapsed().as_millis() as u64, "tree restored");
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, pid.to_string()).with_context(|| format!("writing pidfile {}", p.display()))?;
    }
    // Done here: the lazy-pages daemon may start its background transfers.
    drop(restored);
    if opts.detached {
        return Ok(ExitCode::SUCCESS);
    }
    wait_for(pid)
}

/// Rebuild the tree; returns once it runs.
pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    restore_then(opts, |_| Ok(()))
}

/// Rebuild the tree and call `before_run` just before letting it run; if
/// that fails, the tree is killed and never runs (`ferry receive` waits
/// there for the source to give the task up).
pub fn restore_then(opts: &RestoreOptions, before_run: impl FnOnce(i32) -> Result<()>) -> Result<Restored> {
    crate::image::trust::check_images_dir(&opts.dir)?;
    // Before the sockets exist (and before pre-restore brings a moved
    // service address up): a packet for a connection with no socket yet
    // would be answered with a reset.
    let restore_lock = lock_connections(opts)?;
    opts.scripts.run(Action::PreRestore, &opts.dir, None)?;
    // A container's mounts first: its files are opened inside them.
    let mut stage =
        container::Stage::start(&crate::image::ImageDir::open(&opts.dir)?, &opts.container, &opts.inherited)?;
    let in_root = stage.as_ref().map(|s| paths::InRoot::set(&s.root));
    let in_net = match &stage {
        Some(s) => s.in_net()?,
        None => None,
    };
    let ptys = stage.as_mut().map(|s| std::mem::take(&mut s.ptys)).unwrap_or_default();
    let mut plan = plan::prepare(opts, ptys)?;
    drop((in_root, in_net));
    plan.setup.container = stage.as_mut().and_then(|s| s.child.take());
    if opts.container.sibling && !plan.tree.pid_ns {
        // The root's parent is ours (CLONE_PARENT).
        plan.setup.ferry_pid = nix::unistd::getppid().as_raw();
    }
    let result = build(&mut plan, opts, stage.as_ref(), before_run);
    match result {
        Ok(_) => plan.opened.commit(),
        Err(_) => plan.opened.discard(),
    }
    let restored = result?;
    // The connections are live: the dump's lock (same host) goes.
    let lock = plan.images.read_json::<crate::netlock::Record>(crate::netlock::RECORD_FILE).ok();
    if lock.is_some() || plan.objects.files.iter().any(|f| f.kind == "tcp-connection") {
        opts.scripts.run(Action::NetworkUnlock, &opts.dir, Some(restored.pid))?;
    }
    if let Some(record) = lock {
        crate::netlock::remove(&record, &crate::netlock::Netns::default())?;
        info!(name = record.name, "network unlocked");
    }
    drop(restore_lock);
    opts.scripts.run(Action::PostResume, &opts.dir, Some(restored.pid))?;
    Ok(restored)
}

/// Hold the packets of the image's TCP connections in ferry's network
/// namespace until the tree runs.
fn lock_connections(opts: &RestoreOptions) -> Result<Option<crate::netlock::Lock>> {
    use crate::image::objects::{ObjectsImage, OBJECTS};
    // An image that cannot be read is refused by the restore proper,
    // which says why; there is nothing to lock then.
    let Ok(images) = crate::image::ImageDir::open(&opts.dir) else { return Ok(None) };
    let Ok(objects) = images.read_json::<ObjectsImage>(OBJECTS) else { return Ok(None) };
    let conns: Vec<crate::netlock::Connection> = objects
        .files
        .iter()
        .filter(|f| f.kind == crate::objects::tcp_connection::NAME && !opts.tcp_close)
        .filter_map(|f| serde_json::from_value(f.state.clone()).ok())
        .collect();
    let Ok(tree) = images.read_json::<crate::image::tree::TreeImage>(crate::image::tree::TREE) else { return Ok(None) };
    let root = tree.root;
    crate::netlock::Lock::take(
        opts.network_lock,
        crate::netlock::Netns::default(),
        &format!("ferry-restore-{root}"),
        &conns,
    )
}

/// Kills the forked root (and so, by PDEATHSIG, the processes it forked)
/// unless disarmed: the tree before ferry has seized it.
struct RootGuard {
    pid: i32,
    armed: bool,
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
            }
        }
    }
}

/// One process being rebuilt: its main thread, its other threads (once
/// created), and where ferry's PIDs of it are.
struct Live {
    /// Index in the tree.
    index: usize,
    /// In the tree's namespace and in ferry's.
    vpid: i32,
    pid: i32,
    /// Dropped (killed and waited for) before `main`: a dead traced thread
    /// stays until its tracer waits for it, and holds its leader's exit.
    threads: Vec<Tracee>,
    main: Tracee,
}

fn build(
    plan: &mut TreePlan,
    opts: &RestoreOptions,
    stage: Option<&container::Stage>,
    before_run: impl FnOnce(i32) -> Result<()>,
) -> Result<Restored> {
    // Pre-copied pages left to the caller's daemon: it checks each block
    // as it first uses it, and fetches a damaged one from the source. A
    // separate `ferry lazy-pages` opens them itself.
    let mut locals = std::collections::HashMap::new();
    let caller_serves = matches!(opts.lazy, Some(LazyRestore::Caller));
    for pp in plan.processes.iter().filter(|pp| caller_serves && !pp.deferred.is_empty()) {
        let deferred = pp.deferred.sources().context("deferred pages not looked up for the restore's own daemon")?;
        let l = std::sync::Arc::new(crate::lazy::local::LocalPages::open(&pp.chain, deferred)?);
        locals.insert(pp.task.pid, l);
    }
    if !plan.tree.pid_ns {
        let pids: Vec<i32> = plan.tree.processes.iter().map(|p| p.pid).collect();
        fork::wait_free(&pids, opts.pid_wait)?;
    }
    let flags = fork::root_flags(plan.tree.pid_ns, opts.container.sibling, stage.map(|s| &s.image));
    let forked = match stage {
        Some(s) => s.fork(plan.tree.root, flags, opts.pid_wait, &plan.setup)?,
        None => match fork::fork_with(plan.tree.root, flags, opts.pid_wait)? {
            None => child::run(&plan.setup),
            Some(f) => f,
        },
    };
    let mut guard = RootGuard { pid: forked.pid, armed: true };
    // The processes have their copies now; closing ours lets the report
    // pipe show EOF if they all die.
    plan.files.clear();
    read_reports(plan)?;
    // Every process is in its cwd: the ones standing for deleted cwds go.
    plan.deleted_cwds = Default::default();
    let plan: &TreePlan = plan;
    let tree = &plan.tree;
    let pids = map_pids(forked.pid, tree)?;
    debug!(processes = tree.processes.len(), "tree forked and set up");

    // Seize every process; from here each dies with ferry.
    let mut live = LiveTree(Vec::new());
    for (index, p) in tree.processes.iter().enumerate() {
        let pid = pids[&p.pid];
        let main = Tracee::seize(pid, O_TRACESYSGOOD | O_EXITKILL | O_TRACECLONE, OnDrop::Kill)?;
        main.interrupt()?;
        main.wait_interrupted()?;
        live.push(Live { index, vpid: p.pid, pid, threads: Vec::new(), main });
    }
    guard.armed = false;
    testhook::stage("restore-seized");

    // Rebuild each live process; each ends with an injector whose last
    // call is still to come.
    let mut built = Vec::new();
    for pp in &plan.processes {
        let l = live.iter_mut().find(|l| l.index == pp.index).expect("every live process is seized");
        let b = rebuild(l, pp, opts).with_context(|| format!("task {}", pp.task.pid))?;
        built.push(b);
        testhook::stage("restore-process");
    }
    debug!("every process built");
    let lazy: Vec<LazyProcess> = built
        .iter_mut()
        .zip(&plan.processes)
        .filter_map(|(b, pp)| b.uffd.take().map(|uffd| (pp.task.pid, uffd)))
        .map(|(vpid, uffd)| LazyProcess { vpid, pid: pids[&vpid], uffd, local: locals.remove(&vpid) })
        .collect();

    // The tree as a whole: process groups, zombies, pending signals.
    set_groups(plan, &live)?;
    end_group_helpers(plan, &pids, &live)?;
    end_zombies(plan, &live)?;
    for (b, pp) in built.iter().zip(&plan.processes) {
        let l = live.iter().find(|l| l.index == pp.index).unwrap();
        let mut inj = Injector::new(&l.main, b.regs.clone(), b.scratch.base);
        let mem = RemoteMem::open(l.pid)?;
        flush_child_signals(&mut inj, &mem, plan, pp, &b.scratch)?;
        let pending: Vec<(i32, &crate::image::task::PendingSignal)> = pp
            .task
            .shared_pending
            .iter()
            .map(|p| (pp.task.pid, p))
            .chain(pp.task.threads.iter().flat_map(|t| t.pending.iter().map(move |p| (t.tid, p))))
            .collect();
        finish::queue_signals(&mut inj, &mem, pp.task.pid, &pending, &b.scratch)?;
        finish::take_posix_locks(&mut inj, &mem, &pp.task.fds, &b.scratch)?;
        if matches!(pp.task.prctl.dumpable, 0 | 1) {
            // After every thread's credentials: a uid change resets it.
            inj.call(Syscall::Prctl, &[libc::PR_SET_DUMPABLE as u64, pp.task.prctl.dumpable as u64], || {
                "prctl(PR_SET_DUMPABLE)".into()
            })?;
        }
        inj.call(Syscall::CloseRange, &[pp.helpers_from as u64, u64::from(u32::MAX), 0], || {
            "closing ferry's helper files".into()
        })?;
    }
    plan.opened.finish_memory(&plan.objects)?;
    plan.opened.set_owners(&plan.objects, |vpid| owner_pid(tree, &pids, vpid))?;

    // Last: every thread gets its own registers and mask back. The main
    // thread's last injected syscall removes the scratch area it runs from.
    for (b, pp) in built.iter().zip(&plan.processes) {
        let l = live.iter().find(|l| l.index == pp.index).unwrap();
        for (t, (img, cpu)) in l.threads.iter().zip(pp.task.threads.iter().zip(&pp.cpus).skip(1)) {
            t.set_cpu_state(cpu, None)?;
            t.set_sigmask(img.blocked)?;
        }
        let mut inj = Injector::new(&l.main, b.regs.clone(), b.scratch.base);
        inj.call(Syscall::Munmap, &[b.scratch.base, b.scratch.len], || "unmapping scratch".into())?;
        l.main.set_cpu_state(&pp.cpus[0], None)?;
        l.main.set_sigmask(pp.task.main_thread().blocked)?;
    }
    let root_pid = pids[&tree.root];
    let (lazy, handoff) = match opts.lazy {
        Some(LazyRestore::Daemon) if !lazy.is_empty() => {
            let handed: Vec<(i32, i32, &std::os::fd::OwnedFd)> =
                lazy.iter().map(|l| (l.vpid, l.pid, l.uffd.fd())).collect();
            let s = crate::lazy::handoff::send(&opts.dir, &handed, Duration::from_secs(10))?;
            debug!("userfaultfds handed to the lazy-pages daemon");
            (Vec::new(), Some(s))
        }
        _ => (lazy, None),
    };
    opts.scripts.run(Action::PostRestore, &opts.dir, Some(root_pid))?;
    before_run(root_pid)?;
    // Last before the tree runs: connections leave repair mode.
    plan.opened.go_live(&plan.objects, &plan.images, opts.tcp_close)?;
    testhook::stage("detach");
    // Signals held back while ferry injected, and SIGSTOP for a process
    // that was stopped: queued while each is still held, so it stops
    // before its first instruction.
    for (b, pp) in built.iter().zip(&plan.processes) {
        let pid = pids[&pp.task.pid];
        for sig in b.deferred.iter().copied().chain(pp.task.stopped.then_some(libc::SIGSTOP)) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, sig) };
        }
    }
    for l in live.iter() {
        if tree.processes[l.index].state != ProcessState::Alive {
            continue;
        }
        for t in l.threads.iter().chain(std::iter::once(&l.main)) {
            t.detach(0)?;
        }
    }
    // Return once the stopped ones show as stopped.
    for pp in plan.processes.iter().filter(|pp| pp.task.stopped) {
        let pid = pids[&pp.task.pid];
        let start = Instant::now();
        while ProcDir::new(pid).status().is_ok_and(|s| s.state != 'T') && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    info!(pid = root_pid, processes = tree.processes.len(), "tree running");
    Ok(Restored { pid: root_pid, lazy, handoff })
}

/// The seized processes; dropped (killed) children first, as a PID
/// namespace's init or a thread group's leader is only gone after the
/// tasks it waits for.
struct LiveTree(Vec<Live>);

impl Drop for LiveTree {
    fn drop(&mut self) {
        while let Some(l) = self.0.pop() {
            drop(l);
        }
    }
}

impl std::ops::Deref for LiveTree {
    type Target = Vec<Live>;
    fn deref(&self) -> &Vec<Live> {
        &self.0
    }
}

impl std::ops::DerefMut for LiveTree {
    fn deref_mut(&mut self) -> &mut Vec<Live> {
        &mut self.0
    }
}

/// What rebuilding one process leaves for the tree-wide steps.
struct Built {
    /// The main thread's registers injected frames start from.
    regs: ferry_arch::NativeState,
    scratch: mm::Scratch,
    uffd: Option<Uffd>,
    /// SIGSTOP-like signals that arrived while ferry injected.
    deferred: Vec<i32>,
}

/// One process: its address space, its threads, its state.
fn rebuild(l: &mut Live, pp: &ProcessPlan, opts: &RestoreOptions) -> Result<Built> {
    let pid = l.pid;
    let child_maps = ProcDir::new(pid).maps()?;
    let mem = RemoteMem::open(pid)?;
    let insn = find_syscall_insn(&mem, &child_maps)?;
    let regs = l.main.cpu_state()?;
    let mut inj = Injector::new(&l.main, regs.clone(), insn);
    let scratch = mm::clear(&mut inj, &mem, pp, &child_maps)?;
    debug!(pid = pp.task.pid, "inherited address space cleared");
    mm::build(&mut inj, &mem, pp, &scratch)?;
    debug!(pid = pp.task.pid, "address space rebuilt and filled");
    mm::set_mm(&mut inj, &mem, pp, &scratch)?;
    // Created before credentials change (a task that is not root could not
    // open one that also catches kernel-mode faults), registered only after
    // ferry's own injected syscalls are done reading task memory (rseq
    // registration reads its area, which may be a lazy page).
    let uffd = lazy_uffd(&mut inj, pp)?;
    if uffd.is_some() && opts.lazy.is_none() {
        bail!("task {}: the image has lazy pages; restore with --lazy-pages", pp.task.pid);
    }
    for t in pp.task.threads.iter().skip(1) {
        let tracee = thread::create(&mut inj, &mem, &scratch, pid, t.tid)?;
        l.threads.push(tracee);
    }
    finish::process_state(&mut inj, &mem, pp, &scratch)?;
    for (k, t) in pp.task.threads.iter().enumerate().skip(1) {
        let tr = &l.threads[k - 1];
        let mut ti = thread::injector(tr, &scratch)?;
        finish::thread_state(&mut ti, &mem, t, &scratch, false).with_context(|| format!("thread {}", t.tid))?;
    }
    finish::thread_state(&mut inj, &mem, pp.task.main_thread(), &scratch, true)?;
    if let Some(u) = &uffd {
        register_lazy(u, pp)?;
    }
    debug!(pid = pp.task.pid, threads = pp.task.threads.len(), "process state restored");
    Ok(Built { regs: inj.base().clone(), scratch, uffd, deferred: std::mem::take(&mut inj.deferred_signals) })
}

/// Read one report per process: all set up, or the first failure.
fn read_reports(plan: &mut TreePlan) -> Result<()> {
    let n = plan.setup.processes.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ok = vec![false; n];
    let mut f = std::fs::File::from(plan.report.try_clone()?);
    let mut buf = [0u8; child::Report::SIZE];
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd =
            libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&plan.report), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r == 0 {
            let missing: Vec<i32> =
                ok.iter().enumerate().filter(|(_, o)| !**o).map(|(i, _)| plan.setup.processes[i].pid).collect();
            bail!("the new processes {missing:?} did not report within 60 s");
        }
        f.read_exact(&mut buf).map_err(|e| {
            let missing: Vec<i32> =
                ok.iter().enumerate().filter(|(_, o)| !**o).map(|(i, _)| plan.setup.processes[i].pid).collect();
            anyhow!("the new processes {missing:?} died while setting themselves up ({e})")
        })?;
        let r = child::Report::decode(&buf).with_context(|| format!("garbled report from a new process: {buf:?}"))?;
        if r.step != child::Step::Ok {
            bail!("{}: {}", plan.setup.describe(&r), nix::errno::Errno::from_raw(r.errno).desc());
        }
        if let Some(o) = ok.get_mut(r.process as usize) {
            *o = true;
        }
    }
    Ok(())
}

/// ferry's PID of every process, found down the tree from the root (in a
/// PID namespace of the tree's own they differ from the image's).
fn map_pids(root: i32, tree: &crate::image::tree::TreeImage) -> Result<HashMap<i32, i32>> {
    let mut out = HashMap::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let proc = ProcDir::new(pid);
        let vpid = proc.status().with_context(|| format!("new process {pid}"))?.vpid();
        out.insert(vpid, pid);
        queue.extend(proc.all_children()?);
    }
    for p in &tree.processes {
        if !out.contains_key(&p.pid) {
            bail!("process {} is missing from the new tree", p.pid);
        }
    }
    Ok(out)
}

/// ferry's PID for an F_SETOWN owner: a process (or group, by its leader).
fn owner_pid(_tree: &crate::image::tree::TreeImage, pids: &HashMap<i32, i32>, vpid: i32) -> Option<i32> {
    pids.get(&vpid).copied()
}

/// Process groups: each process joins its group (leaders first, so the
/// group exists), by an injected setpgid.
fn set_groups(plan: &TreePlan, live: &[Live]) -> Result<()> {
    let tree = &plan.tree;
    let mut order: Vec<&Live> = live.iter().collect();
    // Leaders first.
    order.sort_by_key(|l| tree.processes[l.index].pgid != l.vpid);
    for l in order {
        let p = &tree.processes[l.index];
        let now = ProcDir::new(l.pid).status()?;
        let pgid_now = now.nspgid.last().copied().unwrap_or(0);
        if pgid_now == p.pgid || p.sid == p.pid {
            continue;
        }
        let led_here =
            tree.processes.iter().any(|q| q.pid == p.pgid) || plan.group_helpers.iter().any(|h| h.0 == p.pgid);
        if !led_here {
            // The group's leader is outside the tree: a --shell-job root
            // and its group stay in ferry's group.
            continue;
        }
        inject_once(&l.main, l.pid, Syscall::Setpgid, &[0, p.pgid as u64], || {
            format!("task {}: joining process group {}", p.pid, p.pgid)
        })?;
    }
    Ok(())
}

/// One injected syscall into a stopped process between its rebuild steps
/// (at its vDSO's syscall instruction), its registers put back after.
fn inject_once(t: &Tracee, pid: i32, call: Syscall, args: &[u64], what: impl FnOnce() -> String) -> Result<u64> {
    let mem = RemoteMem::open(pid)?;
    let maps = ProcDir::new(pid).maps()?;
    let insn = find_syscall_insn(&mem, &maps)?;
    let regs = t.cpu_state()?;
    let mut inj = Injector::new(t, regs.clone(), insn);
    let r = inj.call(call, args, what);
    t.set_cpu_state(&regs, None)?;
    r
}

/// The group helpers have done their part once every member has joined:
/// each ends, and its parent reaps it (by an injected wait4; it sent no
/// signal), so nothing of it is left.
fn end_group_helpers(plan: &TreePlan, pids: &HashMap<i32, i32>, live: &[Live]) -> Result<()> {
    for &(group, parent) in &plan.group_helpers {
        let pid = pids[&group];
        // SAFETY: plain kill(2) of a process of ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let start = Instant::now();
        while ProcDir::new(pid).status().map(|s| s.state != 'Z').unwrap_or(false) {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the helper of process group {group} did not end");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let l = live.iter().find(|l| l.vpid == parent).context("the helper's parent is not part of the tree")?;
        inject_once(&l.main, l.pid, Syscall::Wait4, &[group as u64, 0, libc::__WALL as u64, 0], || {
            format!("task {parent}: reaping the helper of process group {group}")
        })?;
    }
    Ok(())
}

/// Zombies: each exits now with its dumped status (or dies of its
/// signal), and stays a zombie until its parent waits for it.
fn end_zombies(plan: &TreePlan, live: &[Live]) -> Result<()> {
    for l in live {
        let p = &plan.tree.processes[l.index];
        let ProcessState::Zombie { status } = p.state else { continue };
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            l.main.set_sigmask(0)?;
            // SAFETY: plain kill(2) of a process of ours.
            unsafe { libc::kill(l.pid, sig) };
            l.main.cont(0)?;
            loop {
                match l.main.wait()? {
                    Stop::Signal(s) => l.main.cont(s)?,
                    Stop::Killed(_) | Stop::Exited(_) => break,
                    _ => l.main.cont(0)?,
                }
            }
        } else {
            let code = libc::WEXITSTATUS(status);
            let maps = ProcDir::new(l.pid).maps()?;
            let mem = RemoteMem::open(l.pid)?;
            let insn = find_syscall_insn(&mem, &maps)?;
            let mut frame = l.main.cpu_state()?;
            Native::prepare_syscall(&mut frame, insn, Native::sysno(Syscall::ExitGroup), [code as u64, 0, 0, 0, 0, 0]);
            l.main.set_cpu_state(&frame, Some(<Native as Backend>::INJECTION_REGSETS))?;
            l.main.cont(0)?;
            loop {
                match l.main.wait()? {
                    Stop::Exited(_) | Stop::Killed(_) => break,
                    Stop::Signal(s) => l.main.cont(s)?,
                    _ => l.main.cont(0)?,
                }
            }
        }
        debug!(pid = p.pid, status, "zombie made");
    }
    Ok(())
}

/// The signals the new zombies sent their parent while the tree was being
/// built are not the program's: take them off the queue.
fn flush_child_signals(
    inj: &mut Injector,
    mem: &RemoteMem,
    plan: &TreePlan,
    pp: &ProcessPlan,
    scratch: &mm::Scratch,
) -> Result<()> {
    let signals: Vec<i32> = plan
        .tree
        .children(pp.task.pid)
        .filter(|c| matches!(c.state, ProcessState::Zombie { .. }) && c.exit_signal > 0)
        .map(|c| c.exit_signal)
        .collect();
    if signals.is_empty() {
        return Ok(());
    }
    let set: u64 = signals.iter().fold(0, |m, s| m | 1 << (s - 1));
    // rt_sigtimedwait(set, NULL, {0, 0}) until nothing is left (EAGAIN).
    let at = scratch.data();
    mem.write(at, &set.to_ne_bytes())?;
    mem.write(at + 8, &[0u8; 16])?;
    loop {
        match inj.raw(Syscall::RtSigtimedwait, &[at, 0, at + 8, 8])? {
            Ok(_) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(e) => bail!("task {}: discarding the signals of new zombies: {}", pp.task.pid, e.desc()),
        }
    }
}

/// Whether the daemon fills any of the process's pages: lazy ones, or
/// pre-copied ones deferred.
fn has_lazy(plan: &ProcessPlan) -> bool {
    !plan.deferred.is_empty() || plan.pagemap().entries.iter().any(|e| e.flags == PageFlags::Lazy)
}

/// The areas holding pages the daemon fills. Both lists are in address
/// order and disjoint, and so are the areas: one forward pass each.
fn lazy_areas(plan: &ProcessPlan) -> impl Iterator<Item = &crate::image::task::Vma> {
    let pm = plan.pagemap();
    let page = pm.page_size;
    plan.task.vmas.iter().filter(move |v| {
        let from = pm.entries.partition_point(|e| e.vaddr + e.nr_pages * page <= v.start);
        let lazy = pm.entries[from..].iter().take_while(|e| e.vaddr < v.end).any(|e| e.flags == PageFlags::Lazy);
        lazy || plan.deferred.meets(v.start, v.end)
    })
}

/// For an image with lazy pages: a userfaultfd of the task's, with the
/// events the daemon follows.
fn lazy_uffd(inj: &mut Injector, plan: &ProcessPlan) -> Result<Option<Uffd>> {
    if !has_lazy(plan) {
        return Ok(None);
    }
    let u = uffd::create_in(inj, libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    u.api(feature::EVENT_FORK | feature::EVENT_REMAP | feature::EVENT_REMOVE | feature::EVENT_UNMAP)?;
    Ok(Some(u))
}

/// Register every area that has lazy pages (whole areas, so none is split).
fn register_lazy(u: &Uffd, plan: &ProcessPlan) -> Result<()> {
    for v in lazy_areas(plan) {
        u.register(v.start, v.len(), uffd::REGISTER_MODE_MISSING)
            .with_context(|| format!("task {}: lazy area {:#x}-{:#x}", plan.task.pid, v.start, v.end))?;
    }
    Ok(())
}

/// As CRIU without -d: stay the root's parent and exit with its status.
fn wait_for(pid: i32) -> Result<ExitCode> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitCode::from(code as u8)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitCode::from(128 + sig as u8)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("waiting for task {pid}: {}", e.desc()),
        }
    }
}
