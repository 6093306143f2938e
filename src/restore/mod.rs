//! `ferry restore`: rebuild a dumped task at its original PID.
//!
//! A child is forked at the PID and sets up what is easy from inside
//! ([`child`]); ferry then seizes it and drives it through injected
//! syscalls ([`mm`], [`finish`]) until it is the dumped task, writes the
//! dumped registers at the last syscall-exit stop, and detaches. Until that
//! detach the child is traced with PTRACE_O_EXITKILL: if anything fails, or
//! ferry dies, it is killed and never runs half-built.

pub mod child;
pub mod finish;
pub mod fork;
pub mod mm;
pub mod plan;

use crate::proc::ProcDir;
use crate::ptrace::inject::{find_syscall_insn, Injector};
use crate::ptrace::remote::RemoteMem;
use crate::ptrace::{OnDrop, Tracee, O_EXITKILL, O_TRACESYSGOOD};
use crate::testhook;
use crate::uffd::{self, feature, Uffd};
use anyhow::{anyhow, bail, Context, Result};
use ferry_arch::Syscall;
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyRestore {
    /// Hand the userfaultfd to `ferry lazy-pages` (socket in the images dir).
    Daemon,
    /// Give it back to the caller (`ferry receive` serves it itself).
    Caller,
}

/// A restored, running task.
pub struct Restored {
    pub pid: i32,
    /// With `LazyRestore::Caller`: the task's userfaultfd.
    pub uffd: Option<Uffd>,
}

pub fn run(opts: &RestoreOptions) -> Result<ExitCode> {
    let t0 = Instant::now();
    let pid = restore(opts)?.pid;
    info!(pid, ms = t0.elapsed().as_millis() as u64, "task restored");
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, pid.to_string()).with_context(|| format!("writing pidfile {}", p.display()))?;
    }
    if opts.detached {
        return Ok(ExitCode::SUCCESS);
    }
    wait_for(pid)
}

/// Rebuild the task; returns once it runs.
pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    restore_then(opts, |_| Ok(()))
}

/// Rebuild the task and call `before_run` just before letting it run; if
/// that fails, the task is killed and never runs (`ferry receive` waits
/// there for the source to give the task up).
pub fn restore_then(opts: &RestoreOptions, before_run: impl FnOnce(i32) -> Result<()>) -> Result<Restored> {
    let mut plan = plan::prepare(opts)?;
    let pid = plan.task.pid;
    debug!(pid, "images read and files opened");
    let forked = match fork::fork_at(pid, opts.pid_wait)? {
        None => child::run(&plan.setup),
        Some(f) => f,
    };
    // Seize at once: from here on the child dies with ferry.
    let seized = Tracee::seize(forked.pid, O_TRACESYSGOOD | O_EXITKILL, OnDrop::Kill);
    // The child has its copies now; closing ours lets a dead child show as EOF.
    drop(std::mem::take(&mut plan.opened));
    let report = read_report(&mut plan.report);
    let tracee = match (seized, report) {
        (Ok(t), Ok(r)) if r.step == child::Step::Ok => t,
        (seized, report) => {
            if seized.is_err() {
                // Not ours to trace, still ours to kill: it is our child.
                // SAFETY: kill and reap our own child.
                unsafe {
                    libc::kill(forked.pid, libc::SIGKILL);
                    libc::waitpid(forked.pid, std::ptr::null_mut(), libc::__WALL);
                }
            }
            // A seized child is killed and reaped when `seized` drops.
            return Err(match report {
                Ok(r) if r.step != child::Step::Ok => {
                    anyhow!("task {pid}: {}: {}", plan.setup.describe(&r), nix::errno::Errno::from_raw(r.errno).desc())
                }
                Err(e) => e.context(format!("task {pid}: the new process died while setting itself up")),
                Ok(_) => seized.expect_err("only a failed seize is left"),
            });
        }
    };

    tracee.interrupt()?;
    tracee.wait_interrupted()?;
    debug!(pid, "child set up and stopped");
    let child_maps = ProcDir::new(pid).maps()?;
    let mem = RemoteMem::open(pid)?;
    let insn = find_syscall_insn(&mem, &child_maps)?;
    let mut inj = Injector::new(&tracee, tracee.cpu_state()?, insn);
    let scratch = mm::clear(&mut inj, &mem, &plan, &child_maps)?;
    debug!(pid, "inherited address space cleared");
    mm::build(&mut inj, &mem, &plan, &scratch)?;
    debug!(pid, "address space rebuilt and filled");
    mm::set_mm(&mut inj, &mem, &plan, &scratch)?;
    // Created before credentials change (a task that is not root could not
    // open one that also catches kernel-mode faults), registered only after
    // ferry's own injected syscalls are done reading task memory (rseq
    // registration reads its area, which may be a lazy page).
    let uffd = lazy_uffd(&mut inj, &plan)?;
    finish::task_state(&mut inj, &mem, &plan, &scratch)?;
    if let Some(u) = &uffd {
        register_lazy(u, &plan)?;
    }
    debug!(pid, "task state restored");
    // The last injected syscall removes the scratch area it runs from; at its
    // exit stop the task gets its own registers and signal mask back.
    inj.call(Syscall::Munmap, &[scratch.base, scratch.len], || "unmapping scratch".into())?;
    tracee.set_cpu_state(&plan.cpu, None)?;
    tracee.set_sigmask(plan.task.signals.blocked)?;
    let uffd = match (uffd, opts.lazy) {
        (Some(u), Some(LazyRestore::Daemon)) => {
            crate::lazy::handoff::send(&opts.dir, pid, u.fd(), Duration::from_secs(10))?;
            None
        }
        (u, _) => u,
    };
    before_run(pid)?;
    testhook::stage("detach");
    tracee.detach(0)?;
    for sig in &inj.deferred_signals {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, *sig) };
    }
    if plan.task.stopped {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    info!(pid, injected = inj.calls, "task running");
    Ok(Restored { pid, uffd })
}

fn lazy_extents(plan: &plan::Plan) -> Vec<(u64, u64)> {
    use crate::image::pagemap::PageFlags;
    let page = plan.pagemap.page_size;
    plan.pagemap
        .entries
        .iter()
        .filter(|e| e.flags == PageFlags::Lazy)
        .map(|e| (e.vaddr, e.vaddr + e.nr_pages * page))
        .collect()
}

/// For an image with lazy pages: a userfaultfd of the task's, with the
/// events the daemon follows.
fn lazy_uffd(inj: &mut Injector, plan: &plan::Plan) -> Result<Option<Uffd>> {
    if lazy_extents(plan).is_empty() {
        return Ok(None);
    }
    let u = uffd::create_in(inj, libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    u.api(feature::EVENT_FORK | feature::EVENT_REMAP | feature::EVENT_REMOVE | feature::EVENT_UNMAP)?;
    Ok(Some(u))
}

/// Register every area that has lazy pages (whole areas, so none is split).
fn register_lazy(u: &Uffd, plan: &plan::Plan) -> Result<()> {
    let lazy = lazy_extents(plan);
    for v in plan.task.vmas.iter().filter(|v| lazy.iter().any(|&(s, e)| s < v.end && v.start < e)) {
        u.register(v.start, v.len(), uffd::REGISTER_MODE_MISSING)
            .with_context(|| format!("task {}: lazy area {:#x}-{:#x}", plan.task.pid, v.start, v.end))?;
    }
    Ok(())
}

fn read_report(r: &mut std::os::fd::OwnedFd) -> Result<child::Report> {
    let mut buf = [0u8; child::Report::SIZE];
    let mut f = std::fs::File::from(r.try_clone()?);
    f.read_exact(&mut buf).context("no report from the new process")?;
    child::Report::decode(&buf).with_context(|| format!("garbled report from the new process: {buf:?}"))
}

/// As CRIU without -d: stay the task's parent and exit with its status.
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
