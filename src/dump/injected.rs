//! Task state that only the task itself can report: signal handlers, brk,
//! interval timers and a few prctl values per process; the alternate
//! signal stack, clear_child_tid, parent-death signal and securebits per
//! thread. Read by injecting the syscalls that return them, with a scratch
//! buffer below the thread's stack pointer, then putting everything back.

use crate::image::task::{AltStack, ITimers, PrctlState, SigAction};
use crate::proc::maps::Mapping;
use crate::ptrace::inject::{find_syscall_insn, stack_scratch, Injector};
use crate::ptrace::remote::RemoteMem;
use crate::ptrace::Tracee;
use anyhow::{Context, Result};
use ferry_arch::{Backend, Native, NativeState, Syscall};

/// What one process reports of itself (asked through its main thread).
pub struct ProcessState {
    pub brk: u64,
    pub actions: Vec<SigAction>,
    pub itimers: ITimers,
    pub prctl: PrctlState,
}

/// What one thread reports of itself.
pub struct ThreadState {
    pub altstack: AltStack,
    pub clear_child_tid: u64,
    pub pdeathsig: i32,
    pub securebits: u32,
    /// SIGSTOP-like signals that arrived meanwhile, to re-send on release.
    pub deferred_signals: Vec<i32>,
}

/// Bytes of scratch: one reply at a time, the largest is a sigaction.
const SCRATCH: u64 = 256;

/// Ask one thread (and, for the main thread, its process), then return it
/// to exactly the stop it was in.
pub fn collect(
    tracee: &Tracee,
    maps: &[Mapping],
    original: &NativeState,
    mask: u64,
    main: bool,
) -> Result<(ThreadState, Option<ProcessState>)> {
    let ((mut thread, process), deferred) = with_injector(tracee, maps, original, mask, |inj, mem, scratch| {
        let thread = ask_thread(inj, mem, scratch)?;
        let process = if main { Some(ask_process(inj, mem, scratch)?) } else { None };
        Ok((thread, process))
    })?;
    thread.deferred_signals = deferred;
    Ok((thread, process))
}

/// Run `f` with an injector on the frozen task and a scratch buffer below
/// its stack pointer; afterwards put back the borrowed bytes, its
/// registers and signal mask, and return it to a plain interrupt stop,
/// whatever `f` did. Also returns the signals held back meanwhile.
pub fn with_injector<T>(
    tracee: &Tracee,
    maps: &[Mapping],
    original: &NativeState,
    mask: u64,
    f: impl FnOnce(&mut Injector, &RemoteMem, u64) -> Result<T>,
) -> Result<(T, Vec<i32>)> {
    let mem = RemoteMem::open(tracee.pid)?;
    let insn = find_syscall_insn(&mem, maps).with_context(|| format!("task {}", tracee.pid))?;
    let scratch = stack_scratch(maps, Native::sp(original), SCRATCH).with_context(|| {
        format!("task {}: no room below the stack pointer {:#x} for scratch data", tracee.pid, Native::sp(original))
    })?;
    let mut saved = vec![0u8; SCRATCH as usize];
    mem.read(scratch, &mut saved)?;

    // Block every signal while the task runs our syscalls, so none is
    // delivered into a frame that is not the task's own.
    tracee.set_sigmask(!0)?;
    let mut inj = Injector::new(tracee, original.clone(), insn);
    let result = f(&mut inj, &mem, scratch);
    let deferred = std::mem::take(&mut inj.deferred_signals);
    let touched = inj.calls > 0;

    // Put back the borrowed bytes, the registers and the mask, whatever happened.
    let restored = mem.write(scratch, &saved).and_then(|_| {
        if touched {
            return_to_interrupt_stop(tracee, original, mask)
        } else {
            tracee.set_sigmask(mask)
        }
    });
    let value = result?;
    restored.with_context(|| format!("task {}: putting its state back after injection", tracee.pid))?;
    Ok((value, deferred))
}

/// After injection the task sits at a syscall-exit stop. Restore its own
/// registers there, then let it take a fresh PTRACE_INTERRUPT stop: from that
/// stop, detaching behaves exactly as if we had never injected anything
/// (the kernel applies its own syscall-restart logic on the way out).
pub fn return_to_interrupt_stop(tracee: &Tracee, original: &NativeState, mask: u64) -> Result<()> {
    tracee.set_cpu_state(original, None)?;
    tracee.set_sigmask(mask)?;
    tracee.interrupt()?;
    tracee.cont(0)?;
    tracee.wait_interrupted()?;
    Ok(())
}

fn ask_thread(inj: &mut Injector, mem: &RemoteMem, scratch: u64) -> Result<ThreadState> {
    inj.call(Syscall::Sigaltstack, &[0, scratch], || "sigaltstack".into())?;
    // stack_t: ss_sp, int ss_flags (then padding), ss_size.
    let v = mem.read_u64s(scratch, 3)?;
    let altstack = AltStack { sp: v[0], flags: mem.read_i32(scratch + 8)?, size: v[2] };
    mem.write(scratch, &[0u8; 8])?;
    inj.call(Syscall::Prctl, &[libc::PR_GET_PDEATHSIG as u64, scratch], || "prctl(PR_GET_PDEATHSIG)".into())?;
    let pdeathsig = mem.read_i32(scratch)?;
    // A pointer, not an int.
    mem.write(scratch, &[0u8; 8])?;
    inj.call(Syscall::Prctl, &[PR_GET_TID_ADDRESS as u64, scratch], || "prctl(PR_GET_TID_ADDRESS)".into())?;
    let clear_child_tid = mem.read_u64s(scratch, 1)?[0];
    let securebits =
        inj.call(Syscall::Prctl, &[libc::PR_GET_SECUREBITS as u64], || "prctl(PR_GET_SECUREBITS)".into())? as u32;
    Ok(ThreadState { altstack, clear_child_tid, pdeathsig, securebits, deferred_signals: Vec::new() })
}

/// prctl(PR_GET_TID_ADDRESS, &addr): the thread's clear_child_tid.
const PR_GET_TID_ADDRESS: i32 = 40;

fn ask_process(inj: &mut Injector, mem: &RemoteMem, scratch: u64) -> Result<ProcessState> {
    let brk = inj.call(Syscall::Brk, &[0], || "brk(0)".into())?;

    let mut actions = Vec::new();
    for signo in 1..=64i32 {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        inj.call(Syscall::RtSigaction, &[signo as u64, 0, scratch, 8], || format!("rt_sigaction({signo})"))?;
        // The kernel's struct sigaction: handler, flags, restorer, mask.
        let v = mem.read_u64s(scratch, 4)?;
        actions.push(SigAction { signo, handler: v[0], flags: v[1], restorer: v[2], mask: v[3] });
    }

    let mut timers = [[0u64; 2]; 3];
    for (which, t) in timers.iter_mut().enumerate() {
        inj.call(Syscall::Getitimer, &[which as u64, scratch], || format!("getitimer({which})"))?;
        // struct itimerval: interval {sec, usec}, value {sec, usec}
        let v = mem.read_u64s(scratch, 4)?;
        *t = [v[0] * 1_000_000 + v[1], v[2] * 1_000_000 + v[3]];
    }
    let itimers = ITimers { real: timers[0], virt: timers[1], prof: timers[2] };

    let prctl_int = |inj: &mut Injector, option: i32, what: &str| -> Result<i32> {
        inj.call(Syscall::Prctl, &[option as u64, scratch], || format!("prctl({what})"))?;
        mem.read_i32(scratch)
    };
    let child_subreaper = prctl_int(inj, libc::PR_GET_CHILD_SUBREAPER, "PR_GET_CHILD_SUBREAPER")? != 0;
    let dumpable =
        inj.call(Syscall::Prctl, &[libc::PR_GET_DUMPABLE as u64], || "prctl(PR_GET_DUMPABLE)".into())? as i32;
    let thp_disable =
        inj.call(Syscall::Prctl, &[libc::PR_GET_THP_DISABLE as u64], || "prctl(PR_GET_THP_DISABLE)".into())? != 0;
    Ok(ProcessState { brk, actions, itimers, prctl: PrctlState { dumpable, thp_disable, child_subreaper } })
}
