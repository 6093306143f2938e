//! One thread's own state: registers, signal mask and queue, rseq, robust
//! futex list, clear_child_tid, alternate stack, name, credentials and
//! scheduling.

use super::injected::{self, ProcessState};
use crate::image::task::{Creds, PendingSignal, Rseq, Sched, ThreadImage};
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use crate::ptrace::Tracee;
use anyhow::{Context, Result};
use ferry_arch::{Backend, Native, NativeState};

/// What dump keeps of a thread besides its image: for the lazy dump's
/// eager pages, and the signals to re-send on release.
pub struct ThreadDump {
    pub image: ThreadImage,
    /// The registers as they were (before the restart fix-up).
    pub regs: NativeState,
    pub deferred_signals: Vec<i32>,
}

/// Read one stopped thread. `tid` is its TID in the tree's namespace; the
/// main thread also answers for its process.
pub fn collect(
    tracee: &Tracee,
    thread_proc: &ProcDir,
    tid: i32,
    maps: &[Mapping],
    main: bool,
) -> Result<(ThreadDump, Option<ProcessState>)> {
    let regs = tracee.cpu_state()?;
    let mask = tracee.sigmask()?;
    let rseq = tracee.rseq_config()?;
    let pending = pending_signals(tracee, false)?;
    let status = thread_proc.status()?;
    let seccomp = super::seccomp::filters(tracee.pid, tid, status.seccomp)?;
    let (state, process) = injected::collect(tracee, maps, &regs, mask, main)?;
    let (robust_list, robust_list_len) = robust_list(tracee.pid)?;
    let mut cpu = regs.clone();
    let restart = Native::restart_fixup(&mut cpu);
    let image = ThreadImage {
        tid,
        comm: thread_proc.read("comm")?.trim_end_matches('\n').to_string(),
        creds: Creds {
            uid: status.uid,
            gid: status.gid,
            groups: status.groups.clone(),
            cap_inh: status.cap_inh,
            cap_prm: status.cap_prm,
            cap_eff: status.cap_eff,
            cap_bnd: status.cap_bnd,
            cap_amb: status.cap_amb,
            securebits: state.securebits,
            no_new_privs: status.no_new_privs,
        },
        blocked: mask,
        pending,
        altstack: state.altstack,
        rseq: rseq.map(|r| Rseq { addr: r.addr, len: r.len, sig: r.sig }),
        robust_list,
        robust_list_len,
        clear_child_tid: state.clear_child_tid,
        pdeathsig: state.pdeathsig,
        sched: sched(tracee.pid)?,
        seccomp,
        cpu: Native::wrap(cpu),
        restart,
    };
    Ok((ThreadDump { image, regs, deferred_signals: state.deferred_signals }, process))
}

/// Queued signals: this thread's own, or (`shared`) the process's.
pub fn pending_signals(tracee: &Tracee, shared: bool) -> Result<Vec<PendingSignal>> {
    Ok(tracee
        .pending_signals(shared)?
        .into_iter()
        .map(|info| {
            let signo = i32::from_ne_bytes(info[..4].try_into().unwrap());
            PendingSignal { shared, signo, siginfo: info }
        })
        .collect())
}

/// get_robust_list(tid): the head glibc registered and its size.
fn robust_list(tid: i32) -> Result<(u64, u64)> {
    let (mut head, mut len) = (0u64, 0u64);
    // SAFETY: the kernel writes one pointer and one size_t.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut u64) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("task {tid}: get_robust_list"));
    }
    Ok((head, len))
}

/// struct sched_attr (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

fn sched(tid: i32) -> Result<Sched> {
    let mut a = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel fills at most `size` bytes of `a`.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, tid, &mut a as *mut SchedAttr, size, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("task {tid}: sched_getattr"));
    }
    Ok(Sched {
        policy: a.policy,
        // SCHED_FLAG_RESET_ON_FORK and the deadline flags; the util-clamp
        // ones go with values sched_getattr reports as they are.
        flags: a.flags,
        nice: a.nice,
        priority: a.priority,
        runtime: a.runtime,
        deadline: a.deadline,
        period: a.period,
    })
}
