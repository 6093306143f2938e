//! Syscall injection: make a stopped tracee execute one syscall of ours.
//!
//! The tracee's registers are set so that it sits on a syscall instruction
//! with our number and arguments, then PTRACE_SYSCALL runs it to the
//! syscall-entry stop and on to the syscall-exit stop, where the result is
//! read. Nothing after the syscall instruction ever executes, so no code has
//! to be written into the task and no trap is needed.

use super::remote::RemoteMem;
use super::{Stop, Tracee};
use crate::proc::maps::Mapping;
use anyhow::{bail, Context, Result};
use ferry_arch::{nt, Backend, Native, NativeState, Syscall};
use nix::errno::Errno;

/// Words per entry of a batch table: number, six arguments, result.
pub const BATCH_WORDS: usize = 8;
/// A result slot the loop has not reached (no syscall returns it).
const NOT_RUN: u64 = 0x8000_0000_0000_0000;

pub struct Injector<'t> {
    tracee: &'t Tracee,
    /// Registers every injected frame starts from.
    base: NativeState,
    insn: u64,
    /// Signals that cannot be blocked (SIGSTOP & co.) and arrived while we
    /// worked; the caller re-sends them once the task is released.
    pub deferred_signals: Vec<i32>,
    pub calls: u64,
}

impl<'t> Injector<'t> {
    pub fn new(tracee: &'t Tracee, base: NativeState, insn: u64) -> Injector<'t> {
        Injector { tracee, base, insn, deferred_signals: Vec::new(), calls: 0 }
    }

    pub fn tracee(&self) -> &Tracee {
        self.tracee
    }

    /// The registers injected frames are built from.
    pub fn base(&self) -> &NativeState {
        &self.base
    }

    /// Use another syscall instruction (e.g. one on a scratch page).
    pub fn set_insn(&mut self, insn: u64) {
        self.insn = insn;
    }

    /// Run one syscall. The outer error is a ptrace failure or the task
    /// dying; the inner one is the syscall's own errno.
    pub fn raw(&mut self, call: Syscall, args: &[u64]) -> Result<Result<u64, Errno>> {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        let mut frame = self.base.clone();
        Native::prepare_syscall(&mut frame, self.insn, Native::sysno(call), a);
        self.tracee
            .set_cpu_state(&frame, Some(<Native as Backend>::INJECTION_REGSETS))
            .with_context(|| format!("injecting {call:?}"))?;
        self.run_to_syscall_stop(call)?;
        self.run_to_syscall_stop(call)?;
        let size = <Native as Backend>::REGSETS[0].size;
        let gp = self.tracee.getregset(nt::PRSTATUS, size)?;
        <Native as Backend>::load_regset(&mut frame, nt::PRSTATUS, &gp)?;
        self.calls += 1;
        Ok(Native::syscall_result(&frame).map_err(Errno::from_raw))
    }

    /// Run one syscall; an errno becomes an error saying what failed.
    pub fn call(&mut self, call: Syscall, args: &[u64], what: impl FnOnce() -> String) -> Result<u64> {
        match self.raw(call, args)? {
            Ok(v) => Ok(v),
            Err(e) => bail!("task {}: {}: {}", self.tracee.pid, what(), e.desc()),
        }
    }

    /// Run `calls` inside the task with one stop, by the architecture's
    /// [`Backend::BATCH_LOOP`] written at `code` (an executable address of
    /// the task), its table at `table`. Returns the result of each call
    /// that ran: all of them, or up to and including the first failure.
    pub fn batch(&mut self, code: u64, table: u64, calls: &[(Syscall, [u64; 6])]) -> Result<Vec<Result<u64, Errno>>> {
        let mem = RemoteMem::open(self.tracee.pid)?;
        let mut words = Vec::with_capacity(calls.len() * BATCH_WORDS);
        for (call, args) in calls {
            words.push(Native::sysno(*call));
            words.extend_from_slice(args);
            words.push(NOT_RUN);
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        mem.write(table, &bytes)?;
        let mut frame = self.base.clone();
        Native::prepare_syscall(&mut frame, code, 0, [table, calls.len() as u64, 0, 0, 0, 0]);
        self.tracee.set_cpu_state(&frame, Some(<Native as Backend>::INJECTION_REGSETS)).context("injecting a batch")?;
        self.tracee.cont(0)?;
        loop {
            match self.tracee.wait()? {
                Stop::Signal(libc::SIGTRAP) => break,
                Stop::Signal(sig @ (libc::SIGSEGV | libc::SIGILL | libc::SIGBUS | libc::SIGFPE)) => {
                    bail!(
                        "task {}: the injected batch of {} syscalls faulted (signal {sig})",
                        self.tracee.pid,
                        calls.len()
                    )
                }
                Stop::Signal(sig) => {
                    self.deferred_signals.push(sig);
                    self.tracee.cont(0)?;
                }
                Stop::Syscall | Stop::Event(_) | Stop::OtherEvent(_) => self.tracee.cont(0)?,
                Stop::Exited(code) => bail!("task {} exited (status {code}) during an injected batch", self.tracee.pid),
                Stop::Killed(sig) => {
                    bail!("task {} was killed by signal {sig} during an injected batch", self.tracee.pid)
                }
            }
        }
        let mut back = vec![0u8; bytes.len()];
        mem.read(table, &mut back)?;
        let mut out = Vec::new();
        for entry in back.chunks_exact(BATCH_WORDS * 8) {
            let r = u64::from_ne_bytes(entry[(BATCH_WORDS - 1) * 8..].try_into().unwrap());
            if r == NOT_RUN {
                break;
            }
            let result = ferry_arch::negative_errno(r).map_err(Errno::from_raw);
            let failed = result.is_err();
            out.push(result);
            self.calls += 1;
            if failed {
                break;
            }
        }
        Ok(out)
    }

    fn run_to_syscall_stop(&mut self, call: Syscall) -> Result<()> {
        self.tracee.resume_to_syscall()?;
        loop {
            match self.tracee.wait()? {
                Stop::Syscall => return Ok(()),
                Stop::Signal(sig) => {
                    // All maskable signals are blocked while we inject; what
                    // gets here is SIGSTOP-like. Hold it back, re-send later.
                    self.deferred_signals.push(sig);
                    self.tracee.resume_to_syscall()?;
                }
                Stop::Event(_) | Stop::OtherEvent(_) => self.tracee.resume_to_syscall()?,
                Stop::Exited(code) => bail!("task {} exited (status {code}) during injected {call:?}", self.tracee.pid),
                Stop::Killed(sig) => {
                    bail!("task {} was killed by signal {sig} during injected {call:?}", self.tracee.pid)
                }
            }
        }
    }
}

/// Address of a syscall instruction the task can execute: the vDSO has one
/// on every architecture (its fallback paths), and it is never written to.
pub fn find_syscall_insn(mem: &RemoteMem, maps: &[Mapping]) -> Result<u64> {
    let insn = <Native as Backend>::SYSCALL_INSN;
    let align = <Native as Backend>::INSN_ALIGN as usize;
    let candidates = maps
        .iter()
        .filter(|m| m.path == "[vdso]")
        .chain(maps.iter().filter(|m| m.exec && m.read && m.path != "[vdso]" && m.path != "[vsyscall]"));
    for m in candidates {
        let len = m.len().min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        if mem.read(m.start, &mut buf).is_err() {
            continue;
        }
        if let Some(off) = (0..len.saturating_sub(insn.len())).step_by(align).find(|&o| &buf[o..o + insn.len()] == insn)
        {
            return Ok(m.start + off as u64);
        }
    }
    bail!("no syscall instruction found in the vDSO or any executable mapping")
}

/// A scratch window of `len` bytes below the task's stack pointer (and its
/// red zone), if it lies inside one writable mapping: memory the running
/// code has declared dead, so borrowing it changes nothing.
pub fn stack_scratch(maps: &[Mapping], sp: u64, len: u64) -> Option<u64> {
    let top = sp.checked_sub(<Native as Backend>::STACK_RED_ZONE)? & !63;
    let start = top.checked_sub(len)?;
    maps.iter().find(|m| m.read && m.write && m.start <= start && top <= m.end).map(|_| start)
}
