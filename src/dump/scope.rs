//! What ferry can dump, checked before anything is touched (and again once
//! the tree is frozen): each process on its own ([`inspect`]) and the tree
//! as a whole ([`check_tree`]). Everything else is refused with the
//! process, fd or mapping named.

use super::files;
use super::memory::{self, PlannedVma};
use super::objects::ObjectTable;
use super::tree::LiveProcess;
use crate::image::task::Fd;
use crate::proc::maps::Mapping;
use crate::proc::stat::Stat;
use crate::proc::status::Status;
use crate::proc::ProcDir;
use anyhow::{bail, Result};
use std::os::fd::OwnedFd;

/// One process as /proc shows it, already checked.
pub struct Inspection {
    pub status: Status,
    pub stat: Stat,
    pub maps: Vec<Mapping>,
    pub planned: Vec<PlannedVma>,
    pub fds: Vec<Fd>,
}

/// Where the process is, as far as the checks need to know.
pub struct Place {
    /// Its PID in the tree's namespace.
    pub vpid: i32,
    /// It is the tree's root.
    pub root: bool,
    pub policy: crate::objects::FdPolicy,
    /// ferry traces it already (the second look, under freeze).
    pub frozen: bool,
}

pub fn inspect(proc: &ProcDir, at: &Place, table: &mut ObjectTable, pidfd: Option<&OwnedFd>) -> Result<Inspection> {
    let pid = at.vpid;
    if !proc.exists() {
        bail!("task {pid}: no such process");
    }
    if proc.pid == std::process::id() as i32 {
        bail!("task {pid} is ferry itself");
    }
    if let Err(e) = std::fs::read_link(proc.path("ns/pid")) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            // SAFETY: geteuid has no side effects.
            if unsafe { libc::geteuid() } != 0 {
                bail!("task {pid}: not permitted to inspect it: ferry must run as root (it uses ptrace and CAP_CHECKPOINT_RESTORE)");
            }
            bail!("task {pid}: not permitted to inspect it, even as root (the kernel or a security module protects it from ptrace)");
        }
    }
    let status = proc.status()?;
    if status.tracer_pid != 0 && !at.frozen {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", status.tracer_pid)).unwrap_or_default();
        bail!(
            "task {pid} is already traced by {} ({}); a task has one tracer at a time",
            status.tracer_pid,
            comm.trim()
        );
    }
    if status.seccomp == 1 {
        bail!("task {pid} runs under seccomp mode 1 (strict): it cannot be restored");
    }
    if let Ok(timers) = proc.read("timers") {
        if !timers.trim().is_empty() {
            bail!("task {pid} has POSIX timers (timer_create): they are not supported yet");
        }
    }
    // Another mount namespace makes the tree a container (dump::container).
    let theirs = proc.read_link("ns/user")?;
    if theirs != ProcDir::current().read_link("ns/user")? {
        bail!("task {pid} is in another user namespace ({}): user namespaces are not supported yet", theirs.display());
    }
    let stat = proc.stat()?;
    let exe = proc.read_link("exe")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        bail!("task {pid}: its executable {} was deleted: not supported yet", exe.display());
    }
    let fds = files::collect(proc, pid, &at.policy, table, pidfd)?;
    let maps = proc.smaps()?;
    let planned = memory::plan(proc, pid, &maps, table)?;
    memory::check_layout(&planned)?;
    Ok(Inspection { status, stat, maps, planned, fds })
}

/// The tree's PID namespace: ferry's own, or one whose init is the root.
/// Returns whether the root is such an init.
pub fn check_pid_namespaces(processes: &[LiveProcess]) -> Result<bool> {
    let ns_of = |pid: i32| ProcDir::new(pid).read_link("ns/pid");
    let ours = ProcDir::current().read_link("ns/pid")?;
    let root = &processes[0];
    let root_ns = ns_of(root.pid)?;
    let own_ns = root_ns != ours;
    if own_ns && root.vpid != 1 {
        bail!(
            "task {} is in another PID namespace ({}) without being its init: dump the namespace's init instead",
            root.pid,
            root_ns.display()
        );
    }
    for p in processes.iter().skip(1).filter(|p| !p.zombie) {
        let ns = ns_of(p.pid)?;
        if ns != root_ns {
            bail!(
                "task {} is in a PID namespace of its own ({}) inside the tree: nested PID namespaces are not supported yet",
                p.vpid,
                ns.display()
            );
        }
    }
    Ok(own_ns)
}

/// Sessions and process groups the restore can rebuild: a process leads
/// its session or is in its parent's (with `--shell-job`, the root may be
/// in ferry's session and process group).
pub fn check_tree(processes: &[LiveProcess], ids: &[(i32, i32)], shell_job: bool) -> Result<()> {
    let root = &processes[0];
    let (root_sid, root_pgid) = ids[0];
    if !shell_job {
        if root_sid != root.vpid {
            bail!(
                "task {} belongs to session {root_sid} led by another process; dump it with --shell-job, \
                 or start it with setsid so that it leads its own session",
                root.vpid
            );
        }
        if root_pgid != root.vpid {
            bail!("task {} is in process group {root_pgid} of another process; dump it with --shell-job", root.vpid);
        }
    }
    for (i, p) in processes.iter().enumerate().skip(1) {
        let (sid, _) = ids[i];
        let parent = processes.iter().position(|q| q.pid == p.ppid).expect("parents come first");
        if sid != p.vpid && sid != ids[parent].0 {
            bail!(
                "task {} is in session {sid}, which is neither its own nor its parent's (the session's leader \
                 has exited): not supported yet",
                p.vpid
            );
        }
    }
    Ok(())
}
