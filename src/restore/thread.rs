//! Threads: each is created by a clone3 injected into its process's main
//! thread, at its TID (set_tid), sharing memory, files, fs state, signal
//! handlers and System V undo lists as threads do. ferry traces the main
//! thread with PTRACE_O_TRACECLONE, so the new thread starts traced and
//! stopped, before it runs a single instruction; its own state (registers
//! last) is then set by injection into it.

use super::mm::Scratch;
use crate::proc::ProcDir;
use crate::ptrace::inject::Injector;
use crate::ptrace::remote::RemoteMem;
use crate::ptrace::{OnDrop, Stop, Tracee};
use anyhow::{bail, Context, Result};
use ferry_arch::Syscall;

const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Create thread `tid` (in the process's PID namespace) from the main
/// thread behind `inj`; returns it traced and stopped. `pid` is ferry's
/// PID of the process.
pub fn create(inj: &mut Injector, mem: &RemoteMem, scratch: &Scratch, pid: i32, tid: i32) -> Result<Tracee> {
    // struct clone_args, then the one-entry set_tid array after it.
    let args_at = scratch.data();
    let set_tid_at = args_at + 128;
    let mut args = [0u64; 11];
    args[0] = THREAD_FLAGS;
    args[8] = set_tid_at;
    args[9] = 1;
    let bytes: Vec<u8> = args.iter().flat_map(|v| v.to_ne_bytes()).collect();
    mem.write(args_at, &bytes)?;
    mem.write(set_tid_at, &tid.to_ne_bytes())?;
    let got =
        inj.call(Syscall::Clone3, &[args_at, bytes.len() as u64], || format!("creating thread {tid} (clone3)"))?;
    if got as i32 != tid {
        bail!("task {pid}: thread {tid} was created as {got}");
    }
    let outer = outer_tid(pid, tid)?;
    let t = Tracee::attached(outer, OnDrop::Kill);
    match t.wait()? {
        Stop::Event(_) => Ok(t),
        other => bail!("task {pid}: new thread {tid} stopped unexpectedly ({other:?})"),
    }
}

/// ferry's TID of thread `tid` of process `pid` (they differ inside a
/// PID namespace of the tree's own).
fn outer_tid(pid: i32, tid: i32) -> Result<i32> {
    let proc = ProcDir::new(pid);
    for t in proc.threads()? {
        if proc.thread(t).status()?.vpid() == tid {
            return Ok(t);
        }
    }
    bail!("task {pid}: thread {tid} is not to be found after its creation")
}

/// An injector for thread `t`, running syscalls at the process's scratch page.
pub fn injector<'t>(t: &'t Tracee, scratch: &Scratch) -> Result<Injector<'t>> {
    let regs = t.cpu_state().with_context(|| format!("thread {}", t.pid))?;
    Ok(Injector::new(t, regs, scratch.base))
}
