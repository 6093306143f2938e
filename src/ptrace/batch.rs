//! Syscalls queued for one stopped task and run together: by the
//! architecture's batch loop inside the task (one ptrace stop for up to a
//! few thousand calls), or one injection each where there is no loop.
//! Restoring 30,000 mappings was 60,000 round trips the other way.

use super::inject::{Injector, BATCH_WORDS};
use anyhow::{bail, Result};
use ferry_arch::{Backend, Native, Syscall};

/// Where the batch loop runs in the task: its code (executable) and room
/// for its table.
#[derive(Clone, Copy, Debug)]
pub struct BatchArea {
    pub code: u64,
    pub table: u64,
    pub len: u64,
}

/// What to check of one queued call's result.
struct Check<'a> {
    /// The value it must return (an mmap's address), if any.
    expect: Option<u64>,
    what: Box<dyn FnOnce() -> String + 'a>,
}

#[derive(Default)]
pub struct SyscallQueue<'a> {
    calls: Vec<(Syscall, [u64; 6])>,
    checks: Vec<Check<'a>>,
}

impl<'a> SyscallQueue<'a> {
    /// Queue `call`; `what` names it in an error; `expect` is the result it
    /// must have.
    pub fn push(&mut self, call: Syscall, args: &[u64], expect: Option<u64>, what: impl FnOnce() -> String + 'a) {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        self.calls.push((call, a));
        self.checks.push(Check { expect, what: Box::new(what) });
    }

    /// Run everything queued, in order; the first failure is the error.
    pub fn flush(&mut self, inj: &mut Injector, area: Option<BatchArea>) -> Result<()> {
        let calls = std::mem::take(&mut self.calls);
        let checks = std::mem::take(&mut self.checks);
        let pid = inj.tracee().pid;
        let mut results = Vec::with_capacity(calls.len());
        match area.filter(|_| <Native as Backend>::BATCH_LOOP.is_some()) {
            Some(a) => {
                let per = (a.len as usize / (BATCH_WORDS * 8)).max(1);
                for chunk in calls.chunks(per) {
                    let got = inj.batch(a.code, a.table, chunk)?;
                    let complete = got.len() == chunk.len() && got.iter().all(Result::is_ok);
                    results.extend(got);
                    if !complete {
                        break;
                    }
                }
            }
            None => {
                for (call, args) in &calls {
                    let r = inj.raw(*call, args)?;
                    let failed = r.is_err();
                    results.push(r);
                    if failed {
                        break;
                    }
                }
            }
        }
        let ran = results.len();
        for (r, check) in results.into_iter().zip(checks) {
            match r {
                Err(e) => bail!("task {pid}: {}: {}", (check.what)(), e.desc()),
                Ok(v) if check.expect.is_some_and(|x| x != v) => {
                    bail!("task {pid}: {} landed at {v:#x}", (check.what)())
                }
                Ok(_) => {}
            }
        }
        if ran < calls.len() {
            bail!("task {pid}: a batch of {} syscalls stopped after {ran} without an error", calls.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptrace::inject::find_syscall_insn;
    use crate::ptrace::remote::RemoteMem;
    use crate::ptrace::{OnDrop, Stop, Tracee};

    /// A real task (sleep) runs queues through the batch loop: thousands of
    /// calls over several tables, and a failing call that ends the run with
    /// its own description while the calls after it never run.
    #[test]
    fn a_batch_runs_in_order_and_stops_at_the_first_failure() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if <Native as Backend>::MMAP_ARGS_IN_MEMORY || !root {
            return; // s390x's mmap takes its arguments in memory; ptrace needs root here
        }
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let t = Tracee::seize(pid, crate::ptrace::O_TRACESYSGOOD, OnDrop::Kill).unwrap();
        t.interrupt().unwrap();
        while !matches!(t.wait().unwrap(), Stop::Event(_)) {}
        let maps = crate::proc::ProcDir::new(pid).maps().unwrap();
        let mem = RemoteMem::open(pid).unwrap();
        let insn = find_syscall_insn(&mem, &maps).unwrap();
        let mut inj = Injector::new(&t, t.cpu_state().unwrap(), insn);
        let page = crate::page_size();
        let (rw, rwx) = ((libc::PROT_READ | libc::PROT_WRITE) as u64, 7u64);
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let code = inj.call(Syscall::Mmap, &[0, 4 * page, rwx, anon, u64::MAX, 0], || "scratch".into()).unwrap();
        mem.write(code, <Native as Backend>::BATCH_LOOP.unwrap()).unwrap();
        let area = Some(BatchArea { code, table: code + page, len: 3 * page });

        let mut q = SyscallQueue::default();
        for _ in 0..5000 {
            q.push(Syscall::Mprotect, &[code + page, page, rw], Some(0), || "mprotect".into());
        }
        let before = inj.calls;
        q.flush(&mut inj, area).unwrap();
        assert_eq!(inj.calls - before, 5000);

        q.push(Syscall::Mmap, &[0, page, rw, anon, u64::MAX, 0], None, || "mapping".into());
        q.push(Syscall::Madvise, &[code + 1, page, libc::MADV_DONTNEED as u64], None, || "the bad one".into());
        q.push(Syscall::Munmap, &[code, 4 * page], None, || "never run".into());
        let before = inj.calls;
        let err = q.flush(&mut inj, area).unwrap_err().to_string();
        assert!(err.contains("the bad one") && err.contains("Invalid argument"), "{err}");
        assert_eq!(inj.calls - before, 2);
        // The scratch is still mapped: the call after the failure never ran.
        let mut back = vec![0u8; 4];
        mem.read(code, &mut back).unwrap();
        assert_eq!(back, <Native as Backend>::BATCH_LOOP.unwrap()[..4]);
        drop(inj);
        drop(t);
        let _ = child.wait();
    }
}
