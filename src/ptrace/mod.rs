//! The ptrace edge: seize, interrupt, wait, register sets, signal state.
//! Architecture-neutral: register sets are moved as bytes and interpreted
//! by the `ferry-arch` backend.

pub mod batch;
pub mod inject;
pub mod remote;

use anyhow::{anyhow, bail, Context, Result};
use ferry_arch::{Backend, Native, NativeState};
use nix::errno::Errno;
use std::cell::Cell;

const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
const PTRACE_EVENT_STOP: i32 = 128;

pub const O_TRACESYSGOOD: u64 = libc::PTRACE_O_TRACESYSGOOD as u64;
pub const O_EXITKILL: u64 = libc::PTRACE_O_EXITKILL as u64;
pub const O_TRACECLONE: u64 = libc::PTRACE_O_TRACECLONE as u64;

/// Size of the kernel's siginfo_t.
pub const SIGINFO_SIZE: usize = 128;

/// What `waitpid` reported for a tracee.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_EVENT_STOP: after PTRACE_INTERRUPT (SIGTRAP) or a group stop
    /// (the stop signal).
    Event(i32),
    /// Syscall entry or exit (SIGTRAP | 0x80, with PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// A signal is about to be delivered.
    Signal(i32),
    /// Another ptrace event (fork, exec…).
    OtherEvent(i32),
    Exited(i32),
    Killed(i32),
}

/// What to do with a still-attached tracee when its handle is dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OnDrop {
    /// Let it run on (dump: the target must survive any failure).
    Detach,
    /// Kill it (restore: a half-built task must never run).
    Kill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RseqConfig {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// A task this process traces with PTRACE_SEIZE.
#[derive(Debug)]
pub struct Tracee {
    pub pid: i32,
    attached: Cell<bool>,
    on_drop: OnDrop,
}

/// ptrace(2) with the kernel's raw argument types.
fn ptrace(req: libc::c_uint, pid: i32, addr: u64, data: u64) -> Result<libc::c_long, Errno> {
    Errno::clear();
    // SAFETY: every caller passes addr/data that are either plain integers or
    // pointers to live buffers of the size the request writes or reads.
    let r = unsafe { libc::ptrace(req, pid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r == -1 && Errno::last() != Errno::UnknownErrno {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

impl Tracee {
    /// PTRACE_SEIZE: attach without stopping. Errors say who holds the task.
    pub fn seize(pid: i32, options: u64, on_drop: OnDrop) -> Result<Tracee> {
        match ptrace(PTRACE_SEIZE, pid, 0, options) {
            Ok(_) => Ok(Tracee { pid, attached: Cell::new(true), on_drop }),
            Err(Errno::ESRCH) => bail!("task {pid}: no such process"),
            Err(Errno::EPERM) => {
                let tracer = crate::proc::ProcDir::new(pid).status().map(|s| s.tracer_pid).unwrap_or(0);
                if tracer != 0 {
                    let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
                    bail!(
                        "task {pid}: cannot attach: already traced by {tracer} ({}); a task has one tracer at a time",
                        comm.trim()
                    )
                }
                bail!("task {pid}: cannot attach: Operation not permitted (ptrace is refused; check capabilities and LSM policy)")
            }
            Err(e) => bail!("task {pid}: cannot attach: {}", e.desc()),
        }
    }

    /// A task ferry already traces: a thread or child attached by
    /// PTRACE_O_TRACECLONE (its first stop is a PTRACE_EVENT_STOP).
    pub fn attached(pid: i32, on_drop: OnDrop) -> Tracee {
        Tracee { pid, attached: Cell::new(true), on_drop }
    }

    fn check(&self, what: &str, r: Result<libc::c_long, Errno>) -> Result<libc::c_long> {
        r.map_err(|e| match e {
            Errno::ESRCH => anyhow!("task {}: {what}: the task is gone or not stopped", self.pid),
            e => anyhow!("task {}: {what}: {}", self.pid, e.desc()),
        })
    }

    /// Change the ptrace options of the stopped tracee.
    pub fn set_options(&self, options: u64) -> Result<()> {
        self.check("PTRACE_SETOPTIONS", ptrace(libc::PTRACE_SETOPTIONS, self.pid, 0, options)).map(drop)
    }

    pub fn interrupt(&self) -> Result<()> {
        self.check("PTRACE_INTERRUPT", ptrace(PTRACE_INTERRUPT, self.pid, 0, 0)).map(drop)
    }

    /// Wait for the next stop or exit of this tracee.
    pub fn wait(&self) -> Result<Stop> {
        let mut status = 0;
        loop {
            // SAFETY: status is a valid out pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r == self.pid {
                break;
            }
            match Errno::last() {
                Errno::EINTR => continue,
                e => bail!("task {}: waitpid: {}", self.pid, e.desc()),
            }
        }
        let stop = if libc::WIFEXITED(status) {
            Stop::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Stop::Killed(libc::WTERMSIG(status))
        } else {
            let sig = libc::WSTOPSIG(status);
            let event = status >> 16;
            if event == PTRACE_EVENT_STOP {
                Stop::Event(sig)
            } else if event != 0 {
                Stop::OtherEvent(event)
            } else if sig == libc::SIGTRAP | 0x80 {
                Stop::Syscall
            } else {
                Stop::Signal(sig)
            }
        };
        if matches!(stop, Stop::Exited(_) | Stop::Killed(_)) {
            self.attached.set(false);
        }
        Ok(stop)
    }

    /// Wait for the stop PTRACE_INTERRUPT causes. Returns whether the task was
    /// in a group stop (stopped by SIGSTOP & co.) rather than running.
    pub fn wait_interrupted(&self) -> Result<bool> {
        loop {
            match self.wait()? {
                Stop::Event(libc::SIGTRAP) => return Ok(false),
                Stop::Event(_) => return Ok(true),
                Stop::Signal(sig) => {
                    // A signal raced with the interrupt: let it be delivered
                    // as it would have been; the interrupt stop follows.
                    self.cont(sig)?;
                }
                Stop::Syscall | Stop::OtherEvent(_) => self.cont(0)?,
                Stop::Exited(code) => bail!("task {} exited with status {code}", self.pid),
                Stop::Killed(sig) => bail!("task {} was killed by signal {sig}", self.pid),
            }
        }
    }

    pub fn cont(&self, sig: i32) -> Result<()> {
        self.check("PTRACE_CONT", ptrace(libc::PTRACE_CONT, self.pid, 0, sig as u64)).map(drop)
    }

    pub fn resume_to_syscall(&self) -> Result<()> {
        self.check("PTRACE_SYSCALL", ptrace(libc::PTRACE_SYSCALL, self.pid, 0, 0)).map(drop)
    }

    pub fn detach(&self, sig: i32) -> Result<()> {
        let r = self.check("PTRACE_DETACH", ptrace(libc::PTRACE_DETACH, self.pid, 0, sig as u64));
        self.attached.set(false);
        r.map(drop)
    }

    /// SIGKILL the tracee and wait until it is gone.
    pub fn kill(&self) -> Result<()> {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        while self.attached.get() {
            match self.wait() {
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.attached.set(false);
        Ok(())
    }

    /// After a SIGKILL: collect what the tracee reported, without
    /// blocking; true once it is gone.
    pub fn reap_if_gone(&self) -> bool {
        while self.attached.get() {
            let mut status = 0;
            // SAFETY: status is a valid out pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r == 0 {
                return false;
            }
            if r < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            if r < 0 || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.attached.set(false);
            }
        }
        true
    }

    /// The tracee is no longer ours to clean up (it exited, or ownership moved).
    pub fn forget(&self) {
        self.attached.set(false);
    }

    pub fn getregset(&self, nt: u32, max: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        self.check(
            "PTRACE_GETREGSET",
            ptrace(libc::PTRACE_GETREGSET, self.pid, u64::from(nt), &mut iov as *mut _ as u64),
        )
        .with_context(|| format!("register set {nt:#x}"))?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    pub fn setregset(&self, nt: u32, data: &[u8]) -> Result<()> {
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
        self.check(
            "PTRACE_SETREGSET",
            ptrace(libc::PTRACE_SETREGSET, self.pid, u64::from(nt), &mut iov as *mut _ as u64),
        )
        .with_context(|| format!("register set {nt:#x}"))
        .map(drop)
    }

    /// Every register set of the native architecture.
    pub fn cpu_state(&self) -> Result<NativeState> {
        let mut state = NativeState::default();
        for rs in <Native as Backend>::REGSETS {
            match self.getregset(rs.nt, rs.size) {
                Ok(bytes) => <Native as Backend>::load_regset(&mut state, rs.nt, &bytes)
                    .with_context(|| format!("task {}: {}", self.pid, rs.name))?,
                Err(e) if rs.required => return Err(e.context(rs.name)),
                Err(_) => {}
            }
        }
        Ok(state)
    }

    /// Write the given register sets (all of them when `only` is None).
    pub fn set_cpu_state(&self, state: &NativeState, only: Option<&[u32]>) -> Result<()> {
        for rs in <Native as Backend>::REGSETS {
            if only.is_some_and(|o| !o.contains(&rs.nt)) {
                continue;
            }
            if let Some(bytes) = <Native as Backend>::store_regset(state, rs.nt) {
                self.setregset(rs.nt, &bytes).with_context(|| rs.name)?;
            }
        }
        Ok(())
    }

    pub fn sigmask(&self) -> Result<u64> {
        let mut mask = 0u64;
        self.check("PTRACE_GETSIGMASK", ptrace(PTRACE_GETSIGMASK, self.pid, 8, &mut mask as *mut u64 as u64))?;
        Ok(mask)
    }

    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        self.check("PTRACE_SETSIGMASK", ptrace(PTRACE_SETSIGMASK, self.pid, 8, &mask as *const u64 as u64)).map(drop)
    }

    /// Queued signals (siginfo_t each), per-thread or process-wide.
    pub fn pending_signals(&self, shared: bool) -> Result<Vec<Vec<u8>>> {
        #[repr(C)]
        struct PeekArgs {
            off: u64,
            flags: u32,
            nr: i32,
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; SIGINFO_SIZE * 32];
        loop {
            let args =
                PeekArgs { off: out.len() as u64, flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 }, nr: 32 };
            let n = self.check(
                "PTRACE_PEEKSIGINFO",
                ptrace(PTRACE_PEEKSIGINFO, self.pid, &args as *const _ as u64, buf.as_mut_ptr() as u64),
            )? as usize;
            out.extend(buf[..n * SIGINFO_SIZE].chunks(SIGINFO_SIZE).map(<[u8]>::to_vec));
            if n < 32 {
                return Ok(out);
            }
        }
    }

    /// The task's rseq registration (kernel 5.13+), None if unregistered.
    pub fn rseq_config(&self) -> Result<Option<RseqConfig>> {
        #[repr(C)]
        #[derive(Default)]
        struct Conf {
            addr: u64,
            len: u32,
            sig: u32,
            flags: u32,
            pad: u32,
        }
        let mut c = Conf::default();
        self.check(
            "PTRACE_GET_RSEQ_CONFIGURATION",
            ptrace(
                PTRACE_GET_RSEQ_CONFIGURATION,
                self.pid,
                std::mem::size_of::<Conf>() as u64,
                &mut c as *mut _ as u64,
            ),
        )?;
        Ok((c.addr != 0).then_some(RseqConfig { addr: c.addr, len: c.len, sig: c.sig }))
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.attached.get() {
            return;
        }
        match self.on_drop {
            OnDrop::Detach => {
                // PTRACE_DETACH needs a stopped tracee; stop a running one first.
                if ptrace(libc::PTRACE_DETACH, self.pid, 0, 0).is_err()
                    && self.interrupt().is_ok()
                    && self.wait_interrupted().is_ok()
                {
                    let _ = ptrace(libc::PTRACE_DETACH, self.pid, 0, 0);
                }
            }
            OnDrop::Kill => {
                let _ = self.kill();
            }
        }
    }
}
