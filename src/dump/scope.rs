//! What this version of ferry can dump: one single-threaded process without
//! children, sockets, pipes or shared memory with others. Everything else
//! is refused with the resource named, before the task is touched.

use super::files;
use super::memory::{self, PlannedVma};
use crate::image::task::Fd;
use crate::proc::maps::Mapping;
use crate::proc::stat::Stat;
use crate::proc::status::Status;
use crate::proc::ProcDir;
use anyhow::{bail, Result};

/// The task as /proc shows it, already checked against the scope.
pub struct Inspection {
    pub status: Status,
    pub stat: Stat,
    pub maps: Vec<Mapping>,
    pub planned: Vec<PlannedVma>,
    pub fds: Vec<Fd>,
}

/// `frozen`: ferry already traces the task (the second look, under freeze).
pub fn inspect(proc: &ProcDir, shell_job: bool, frozen: bool) -> Result<Inspection> {
    let pid = proc.pid;
    if !proc.exists() {
        bail!("task {pid}: no such process");
    }
    if pid == std::process::id() as i32 {
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
    if status.tgid != pid {
        bail!("{pid} is a thread of task {}; dump the task (-t {})", status.tgid, status.tgid);
    }
    match status.state {
        'Z' | 'X' => bail!("task {pid} is a zombie (it has exited; its parent has not collected it)"),
        _ => {}
    }
    if status.tracer_pid != 0 && !frozen {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", status.tracer_pid)).unwrap_or_default();
        bail!(
            "task {pid} is already traced by {} ({}); a task has one tracer at a time",
            status.tracer_pid,
            comm.trim()
        );
    }
    if status.threads > 1 {
        bail!("task {pid} has {} threads: multi-threaded tasks are not supported yet", status.threads);
    }
    let children = proc.children()?;
    if !children.is_empty() {
        let list: Vec<String> = children.iter().map(i32::to_string).collect();
        bail!("task {pid} has child processes ({}): process trees are not supported yet", list.join(", "));
    }
    if status.seccomp != 0 {
        bail!("task {pid} runs under seccomp (mode {}): seccomp is not supported yet", status.seccomp);
    }
    if let Ok(timers) = proc.read("timers") {
        if !timers.trim().is_empty() {
            bail!("task {pid} has POSIX timers (timer_create): they are not supported yet");
        }
    }
    for ns in ["pid", "mnt", "user"] {
        let theirs = proc.read_link(&format!("ns/{ns}"))?;
        let ours = ProcDir::current().read_link(&format!("ns/{ns}"))?;
        if theirs != ours {
            bail!("task {pid} is in another {ns} namespace ({}): namespaces are not supported yet", theirs.display());
        }
    }
    let stat = proc.stat()?;
    if !shell_job {
        if stat.session != pid {
            bail!(
                "task {pid} belongs to session {} led by another process; dump it with --shell-job, \
                 or start it with setsid so that it leads its own session",
                stat.session
            );
        }
        if stat.pgrp != pid {
            bail!("task {pid} is in process group {} of another process; dump it with --shell-job", stat.pgrp);
        }
    }
    let exe = proc.read_link("exe")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        bail!("task {pid}: its executable {} was deleted: not supported yet", exe.display());
    }
    let fds = files::collect(proc, shell_job)?;
    let maps = proc.smaps()?;
    let planned = memory::plan(proc, &maps)?;
    memory::check_layout(&planned)?;
    Ok(Inspection { status, stat, maps, planned, fds })
}
