//! `ferry dump`: freeze a task, write its image, then kill it or let it run.
//!
//! Order matters for the promise that a failed dump leaves the task as it
//! was: everything is checked before the task is touched; the only moment
//! its registers are not its own is the short injection phase, after which
//! it is returned to a plain PTRACE_INTERRUPT stop; memory is then copied
//! and files written while it sits there, and only a complete image
//! (inventory written) lets ferry kill it.

pub mod files;
pub mod injected;
pub mod memory;
pub mod scope;

use crate::image::inventory::{ImageKind, Inventory};
use crate::image::stats::DumpStats;
use crate::image::task::{Creds, FsState, Ids, MmState, PendingSignal, Rseq, Signals, TaskImage};
use crate::image::{pagemap_file, pages_file, task_file, ImageWriter, STATS};
use crate::proc::ProcDir;
use crate::ptrace::remote::RemoteMem;
use crate::ptrace::{OnDrop, RseqConfig, Tracee, O_TRACESYSGOOD};
use crate::testhook;
use anyhow::{Context, Result};
use ferry_arch::{Backend, Native, NativeState};
use std::path::PathBuf;
use std::time::Instant;
use tracing::{debug, info};

#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub shell_job: bool,
}

pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    let t0 = Instant::now();
    let pid = opts.pid;
    let proc = ProcDir::new(pid);
    // Refuse what cannot be dumped before anything is changed.
    scope::inspect(&proc, opts.shell_job, false)?;
    let mut writer = ImageWriter::create(&opts.dir)?;

    let tracee = Tracee::seize(pid, O_TRACESYSGOOD, OnDrop::Detach)?;
    let frozen_at = Instant::now();
    tracee.interrupt()?;
    let stopped = tracee.wait_interrupted().with_context(|| format!("task {pid}: freezing"))?;
    info!(pid, "task frozen");
    testhook::stage("freeze");

    // The task may have changed between the first look and the freeze.
    let insp = scope::inspect(&proc, opts.shell_job, true)?;
    let regs = tracee.cpu_state()?;
    let mask = tracee.sigmask()?;
    let rseq = tracee.rseq_config()?;
    let injected = injected::collect(&tracee, &insp.maps, &regs, mask)?;
    debug!(pid, brk = injected.brk, "injected queries done");

    let mem = RemoteMem::open(pid)?;
    let pages_name = pages_file(pid);
    let mut raw = writer.raw(&pages_name)?;
    let mem_start = Instant::now();
    let md = memory::dump_pages(&proc, &mem, &insp.planned, &mut raw, &pages_name)?;
    raw.finish(&mut writer)?;
    let memdump_us = mem_start.elapsed().as_micros() as u64;
    info!(pid, pages = md.pages_written, "memory copied");

    let write_start = Instant::now();
    let pending = pending_signals(&tracee)?;
    let task = assemble(&proc, &insp, &regs, mask, rseq, &injected, pending, stopped)?;
    writer.write_json(&task_file(pid), &task)?;
    writer.write_json(&pagemap_file(pid), &md.pagemap)?;
    testhook::stage("write");

    let page = crate::page_size();
    let stats = DumpStats {
        frozen_us: frozen_at.elapsed().as_micros() as u64,
        memdump_us,
        write_us: write_start.elapsed().as_micros() as u64,
        total_us: t0.elapsed().as_micros() as u64,
        vmas: task.vmas.len() as u64,
        pages_scanned: md.pages_scanned,
        pages_written: md.pages_written,
        bytes_written: md.pages_written * page,
    };
    writer.write_json(STATS, &stats)?;
    writer.commit(Inventory::new(ImageKind::Dump, pid, page))?;

    if opts.leave_running {
        tracee.detach(0)?;
        resend(pid, &injected.deferred_signals, stopped);
        info!(pid, "task released");
    } else {
        tracee.kill()?;
        info!(pid, "task killed after dump");
    }
    Ok(stats)
}

/// Signals held back during injection, and the stop the task was in.
fn resend(pid: i32, deferred: &[i32], stopped: bool) {
    for &sig in deferred {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, sig) };
    }
    if stopped {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
}

fn pending_signals(tracee: &Tracee) -> Result<Vec<PendingSignal>> {
    let mut out = Vec::new();
    for shared in [false, true] {
        for info in tracee.pending_signals(shared)? {
            let signo = i32::from_ne_bytes(info[..4].try_into().unwrap());
            out.push(PendingSignal { shared, signo, siginfo: info });
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    proc: &ProcDir,
    insp: &scope::Inspection,
    regs: &NativeState,
    mask: u64,
    rseq: Option<RseqConfig>,
    inj: &injected::InjectedState,
    pending: Vec<PendingSignal>,
    stopped: bool,
) -> Result<TaskImage> {
    let pid = proc.pid;
    let (status, stat) = (&insp.status, &insp.stat);
    let exe_path = proc.read_link("exe")?;
    let exe_meta = std::fs::metadata(proc.path("exe")).with_context(|| format!("task {pid}: stat exe"))?;
    let auxv = proc.read_bytes("auxv")?;
    let personality = proc.read("personality")?;
    let mut cpu = regs.clone();
    let restart = Native::restart_fixup(&mut cpu);
    Ok(TaskImage {
        pid,
        comm: proc.read("comm")?.trim_end_matches('\n').to_string(),
        stopped,
        ids: Ids { ppid: stat.ppid, pgid: stat.pgrp, sid: stat.session, tty_nr: stat.tty_nr, tpgid: stat.tpgid },
        creds: Creds {
            uid: status.uid,
            gid: status.gid,
            groups: status.groups.clone(),
            cap_inh: status.cap_inh,
            cap_prm: status.cap_prm,
            cap_eff: status.cap_eff,
            cap_bnd: status.cap_bnd,
            cap_amb: status.cap_amb,
            securebits: inj.securebits,
            no_new_privs: status.no_new_privs,
        },
        fs: FsState {
            cwd: proc.read_link("cwd")?,
            root: proc.read_link("root")?,
            umask: status.umask.with_context(|| format!("task {pid}: no Umask in status"))?,
        },
        personality: u32::from_str_radix(personality.trim(), 16)
            .with_context(|| format!("task {pid}: bad personality {personality:?}"))?,
        rlimits: proc.limits()?,
        signals: Signals { blocked: mask, actions: inj.actions.clone(), pending, altstack: inj.altstack.clone() },
        itimers: inj.itimers.clone(),
        prctl: inj.prctl.clone(),
        rseq: rseq.map(|r| Rseq { addr: r.addr, len: r.len, sig: r.sig }),
        mm: MmState {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk: inj.brk,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
            auxv: auxv.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect(),
            exe: files::file_id(&exe_path, &exe_meta),
        },
        vmas: insp.planned.iter().map(|p| p.vma.clone()).collect(),
        fds: insp.fds.clone(),
        cpu: Native::wrap(cpu),
        restart,
    })
}
