//! The process tree under `-t PID`: find every process and thread, and
//! freeze them all before any is read.
//!
//! Freezing seizes and interrupts every thread, then looks again: a
//! process may have forked or a thread started while others were being
//! seized. Once a pass finds nothing new, nothing can change any more
//! (every task that could fork or clone is stopped).

use crate::proc::ProcDir;
use crate::ptrace::{OnDrop, Tracee};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use tracing::debug;

/// One process as /proc shows it, with ferry's PIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveProcess {
    pub pid: i32,
    /// Its PID in the tree's namespace.
    pub vpid: i32,
    /// ferry's PID of its parent; 0 for the root.
    pub ppid: i32,
    /// TIDs, the main thread first.
    pub threads: Vec<i32>,
    pub zombie: bool,
}

/// Every process under `root` (included), parents before children.
pub fn discover(root: i32) -> Result<Vec<LiveProcess>> {
    let mut out: Vec<LiveProcess> = Vec::new();
    let mut queue = std::collections::VecDeque::from([(root, 0)]);
    if !ProcDir::new(root).exists() {
        bail!("task {root}: no such process");
    }
    while let Some((pid, ppid)) = queue.pop_front() {
        let proc = ProcDir::new(pid);
        let status = match proc.status() {
            Ok(s) => s,
            // Gone since its parent listed it (reaped); not part of the tree.
            Err(_) if pid != root && !proc.exists() => continue,
            Err(e) => return Err(e).with_context(|| format!("task {pid}")),
        };
        if status.tgid != pid {
            bail!("{pid} is a thread of task {}; dump the task (-t {})", status.tgid, status.tgid);
        }
        let zombie = matches!(status.state, 'Z' | 'X');
        let mut threads = proc.threads()?;
        if zombie && status.threads > 1 {
            bail!(
                "task {pid}: its main thread has exited while {} other threads run on: not supported yet",
                status.threads - 1
            );
        }
        threads.retain(|&t| t != pid);
        threads.insert(0, pid);
        if zombie {
            threads.truncate(1);
        }
        for c in proc.all_children()? {
            if !out.iter().any(|p| p.pid == c) && !queue.iter().any(|&(q, _)| q == c) {
                queue.push_back((c, pid));
            }
        }
        out.push(LiveProcess { pid, vpid: status.vpid(), ppid, threads, zombie });
    }
    Ok(out)
}

/// Every thread of the tree, seized and stopped.
pub struct FrozenTree {
    pub processes: Vec<LiveProcess>,
    /// By TID.
    tracees: BTreeMap<i32, Tracee>,
    /// By PID: the process was in a group stop (SIGSTOP) when frozen.
    stopped: HashMap<i32, bool>,
}

impl FrozenTree {
    pub fn tracee(&self, tid: i32) -> &Tracee {
        &self.tracees[&tid]
    }

    pub fn was_stopped(&self, pid: i32) -> bool {
        self.stopped.get(&pid).copied().unwrap_or(false)
    }

    pub fn alive(&self) -> impl Iterator<Item = &LiveProcess> {
        self.processes.iter().filter(|p| !p.zombie)
    }

    /// Every thread's tracee.
    pub fn all(&self) -> impl Iterator<Item = &Tracee> {
        self.tracees.values()
    }

    /// Change the ptrace options of every thread.
    pub fn set_options(&self, options: u64) -> Result<()> {
        self.tracees.values().try_for_each(|t| t.set_options(options))
    }

    /// Let every thread go (detach); errors are logged, not returned, so
    /// that one vanished thread does not keep the others stopped.
    pub fn release(&self, resend: impl Fn(&LiveProcess)) {
        for t in self.tracees.values() {
            if let Err(e) = t.detach(0) {
                tracing::warn!("{e:#}");
            }
        }
        for p in self.alive() {
            resend(p);
        }
    }

    /// SIGKILL every process and wait until each is gone.
    pub fn kill(&self) -> Result<()> {
        for p in self.alive() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        // Other threads first, then processes children first: a traced
        // task that died stays until its tracer waits for it, and holds
        // back its leader's exit (and a PID namespace's init's).
        let leaders: Vec<i32> = self.processes.iter().map(|p| p.pid).collect();
        // Threads in any order: the thread that ends a PID namespace's
        // init waits there until every other one is reaped, its own
        // sibling threads included.
        let mut threads: Vec<&Tracee> =
            self.tracees.iter().filter(|(tid, _)| !leaders.contains(tid)).map(|(_, t)| t).collect();
        while !threads.is_empty() {
            threads.retain(|t| !t.reap_if_gone());
            if !threads.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        for pid in leaders.iter().rev() {
            if let Some(t) = self.tracees.get(pid) {
                t.kill()?;
            }
        }
        Ok(())
    }
}

/// Seize and interrupt every thread of the tree, repeating until no new
/// process or thread appears.
pub fn freeze(root: i32, options: u64) -> Result<FrozenTree> {
    let mut tracees: BTreeMap<i32, Tracee> = BTreeMap::new();
    let mut stopped: HashMap<i32, bool> = HashMap::new();
    for round in 0.. {
        if round > 1000 {
            bail!("task {root}: the tree keeps changing while it is being frozen (more than 1000 passes)");
        }
        let processes = discover(root)?;
        if processes[0].zombie {
            bail!("task {root} is a zombie (it has exited; its parent has not collected it)");
        }
        let mut new = Vec::new();
        for p in processes.iter().filter(|p| !p.zombie) {
            for &tid in &p.threads {
                if tracees.contains_key(&tid) {
                    continue;
                }
                match Tracee::seize(tid, options, OnDrop::Detach) {
                    Ok(t) => {
                        t.interrupt()?;
                        tracees.insert(tid, t);
                        new.push((p.pid, tid));
                    }
                    // Exited since the listing: the next pass sees it gone.
                    Err(_) if !ProcDir::new(p.pid).thread(tid).exists() => {}
                    Err(e) if tid == root => return Err(e),
                    Err(e) => return Err(e.context(format!("freezing the tree of task {root}"))),
                }
            }
        }
        let mut gone = false;
        for (pid, tid) in &new {
            match tracees[tid].wait_interrupted() {
                Ok(group_stop) => {
                    if tid == pid {
                        stopped.insert(*pid, group_stop);
                    }
                }
                Err(e) => {
                    // It exited between the seize and its stop.
                    debug!(tid, "left while being frozen: {e:#}");
                    tracees.remove(tid);
                    gone = true;
                }
            }
        }
        if new.is_empty() && !gone {
            // A task traced by ferry is stopped, so the listing is final.
            let live: Vec<i32> = processes.iter().filter(|p| !p.zombie).flat_map(|p| p.threads.clone()).collect();
            tracees.retain(|tid, _| live.contains(tid));
            debug!(processes = processes.len(), threads = tracees.len(), passes = round + 1, "tree frozen");
            return Ok(FrozenTree { processes, tracees, stopped });
        }
    }
    unreachable!()
}

/// kcmp(2) resource types.
const KCMP_VM: i32 = 1;
const KCMP_FILES: i32 = 2;
const KCMP_FS: i32 = 3;

/// A process that shares its memory, fd table or fs state with another
/// one (clone without CLONE_THREAD, vfork) cannot be rebuilt separately.
pub fn check_sharing(processes: &[LiveProcess]) -> Result<()> {
    let alive: Vec<&LiveProcess> = processes.iter().filter(|p| !p.zombie).collect();
    for p in &alive {
        let Some(parent) = alive.iter().find(|q| q.pid == p.ppid) else { continue };
        for (kind, what) in
            [(KCMP_VM, "memory (vfork or clone with CLONE_VM)"), (KCMP_FILES, "fd table"), (KCMP_FS, "cwd and root")]
        {
            // SAFETY: kcmp only compares kernel objects.
            let r = unsafe { libc::syscall(libc::SYS_kcmp, parent.pid, p.pid, kind, 0, 0) };
            if r == 0 {
                bail!("task {} shares its {what} with its parent {}: not supported yet", p.vpid, parent.vpid);
            }
        }
    }
    Ok(())
}
