//! After the address space: the rest of the kernel state, restored from
//! inside by injection (so signals can be queued with any siginfo, and
//! credentials are dropped last). [`process_state`] runs in the main
//! thread for what the threads share; [`thread_state`] in each thread for
//! what is its own.

use super::mm::Scratch;
use super::plan::ProcessPlan;
use crate::dump::thread::SchedAttr;
use crate::image::task::{Creds, PendingSignal, SeccompFilter, ThreadImage};
use crate::proc::ProcDir;
use crate::ptrace::inject::Injector;
use crate::ptrace::remote::RemoteMem;
use anyhow::Result;
use ferry_arch::Syscall;
use tracing::{debug, warn};

const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn words(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// What the process's threads share: interval timers, prctl values.
pub fn process_state(inj: &mut Injector, mem: &RemoteMem, plan: &ProcessPlan, scratch: &Scratch) -> Result<()> {
    let t = &plan.task;
    let buf = scratch.data();
    for (which, t) in [t.itimers.real, t.itimers.virt, t.itimers.prof].iter().enumerate() {
        if t[1] == 0 {
            continue;
        }
        let val = [t[0] / 1_000_000, t[0] % 1_000_000, t[1] / 1_000_000, t[1] % 1_000_000];
        mem.write(buf, &words(&val))?;
        inj.call(Syscall::Setitimer, &[which as u64, buf, 0], || format!("setitimer({which})"))?;
    }
    if t.prctl.thp_disable {
        inj.call(Syscall::Prctl, &[libc::PR_SET_THP_DISABLE as u64, 1, 0, 0, 0], || {
            "prctl(PR_SET_THP_DISABLE)".into()
        })?;
    }
    if t.prctl.child_subreaper {
        inj.call(Syscall::Prctl, &[libc::PR_SET_CHILD_SUBREAPER as u64, 1], || "prctl(PR_SET_CHILD_SUBREAPER)".into())?;
    }
    Ok(())
}

/// One thread's own state, credentials last. `main`: the main thread,
/// whose name the process already has.
pub fn thread_state(inj: &mut Injector, mem: &RemoteMem, t: &ThreadImage, scratch: &Scratch, main: bool) -> Result<()> {
    let buf = scratch.data();
    if let Some(r) = &t.rseq {
        inj.call(Syscall::Rseq, &[r.addr, u64::from(r.len), 0, u64::from(r.sig)], || {
            format!("registering rseq at {:#x}", r.addr)
        })?;
    }
    let alt = &t.altstack;
    if alt.flags & libc::SS_DISABLE == 0 {
        // stack_t: ss_sp, ss_flags (int, padded), ss_size. SS_ONSTACK is state, not a setting.
        let flags = alt.flags & !libc::SS_ONSTACK;
        let mut st = words(&[alt.sp, 0, alt.size]);
        st[8..12].copy_from_slice(&flags.to_ne_bytes());
        mem.write(buf, &st)?;
        inj.call(Syscall::Sigaltstack, &[buf, 0], || format!("sigaltstack at {:#x}", alt.sp))?;
    }
    if t.robust_list != 0 {
        inj.call(Syscall::SetRobustList, &[t.robust_list, t.robust_list_len], || {
            format!("set_robust_list({:#x})", t.robust_list)
        })?;
    }
    // Always: a thread made by ferry's clone3 has none, the main thread
    // one of ferry's own.
    inj.call(Syscall::SetTidAddress, &[t.clear_child_tid], || format!("set_tid_address({:#x})", t.clear_child_tid))?;
    if !main {
        let mut name = t.comm.as_bytes()[..t.comm.len().min(15)].to_vec();
        name.push(0);
        mem.write(buf, &name)?;
        inj.call(Syscall::Prctl, &[libc::PR_SET_NAME as u64, buf], || format!("naming the thread {:?}", t.comm))?;
    }
    sched(inj, mem, t, buf)?;
    // Always: the main thread armed PDEATHSIG for its own setup.
    inj.call(Syscall::Prctl, &[libc::PR_SET_PDEATHSIG as u64, t.pdeathsig as u64], || {
        "prctl(PR_SET_PDEATHSIG)".into()
    })?;
    // Before the credentials, as CRIU does: installing a filter needs
    // CAP_SYS_ADMIN (the task may have neither it nor no_new_privs). What
    // ferry injects afterwards passes through the filters.
    seccomp(inj, mem, &t.seccomp, buf)?;
    creds(inj, mem, &t.creds, buf)?;
    if t.creds.no_new_privs {
        inj.call(Syscall::Prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0], || {
            "prctl(PR_SET_NO_NEW_PRIVS)".into()
        })?;
    }
    Ok(())
}

/// The thread's seccomp filters, oldest first (each a struct sock_fprog
/// at `buf` pointing at its program just after).
fn seccomp(inj: &mut Injector, mem: &RemoteMem, filters: &[SeccompFilter], buf: u64) -> Result<()> {
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    for (i, f) in filters.iter().enumerate() {
        let program: Vec<u8> = f.program.iter().flat_map(|insn| insn.to_ne_bytes()).collect();
        let mut fprog = [0u8; 16];
        fprog[..2].copy_from_slice(&(f.program.len() as u16).to_ne_bytes());
        fprog[8..].copy_from_slice(&(buf + 16).to_ne_bytes());
        mem.write(buf, &fprog)?;
        mem.write(buf + 16, &program)?;
        inj.call(Syscall::Seccomp, &[SECCOMP_SET_MODE_FILTER, f.flags, buf], || {
            format!("installing seccomp filter {} of {} ({} instructions)", i + 1, filters.len(), f.program.len())
        })?;
    }
    Ok(())
}

/// The thread's scheduling policy and parameters, if not the default.
fn sched(inj: &mut Injector, mem: &RemoteMem, t: &ThreadImage, buf: u64) -> Result<()> {
    let s = &t.sched;
    if s.policy == libc::SCHED_OTHER as u32 && s.nice == 0 && s.flags == 0 {
        return Ok(());
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: s.policy,
        // Only the flags sched_setattr takes back as they were read.
        flags: s.flags & SCHED_FLAG_RESET_ON_FORK,
        nice: s.nice,
        priority: s.priority,
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: SchedAttr is plain data of the kernel's layout.
    let bytes =
        unsafe { std::slice::from_raw_parts(&attr as *const SchedAttr as *const u8, std::mem::size_of::<SchedAttr>()) };
    mem.write(buf, bytes)?;
    if let Err(e) = inj.raw(Syscall::SchedSetattr, &[0, buf, 0])? {
        warn!(
            "thread {}: cannot restore scheduling policy {} (nice {}, priority {}): {}",
            t.tid,
            s.policy,
            s.nice,
            s.priority,
            e.desc()
        );
    }
    Ok(())
}

const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

/// Queue the signals that were pending at dump time, from the main thread:
/// the process's (rt_sigqueueinfo) and each thread's (rt_tgsigqueueinfo).
pub fn queue_signals(
    inj: &mut Injector,
    mem: &RemoteMem,
    pid: i32,
    signals: &[(i32, &PendingSignal)],
    scratch: &Scratch,
) -> Result<()> {
    let buf = scratch.data();
    for (tid, p) in signals {
        mem.write(buf, &p.siginfo)?;
        if p.shared {
            inj.call(Syscall::RtSigqueueinfo, &[pid as u64, p.signo as u64, buf], || {
                format!("queueing signal {}", p.signo)
            })?;
        } else {
            inj.call(Syscall::RtTgsigqueueinfo, &[pid as u64, *tid as u64, p.signo as u64, buf], || {
                format!("queueing signal {} for thread {tid}", p.signo)
            })?;
        }
    }
    Ok(())
}

/// Switch the thread to the dumped credentials, unless they are ferry's own already.
fn creds(inj: &mut Injector, mem: &RemoteMem, c: &Creds, buf: u64) -> Result<()> {
    let me = ProcDir::current().status()?;
    if me.uid == c.uid
        && me.gid == c.gid
        && me.groups == c.groups
        && (me.cap_eff, me.cap_prm, me.cap_inh, me.cap_bnd, me.cap_amb)
            == (c.cap_eff, c.cap_prm, c.cap_inh, c.cap_bnd, c.cap_amb)
    {
        return Ok(());
    }
    debug!(uid = ?c.uid, gid = ?c.gid, "switching credentials");
    let last_cap: u64 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    // Bounding set first: dropping needs CAP_SETPCAP, gone after setuid.
    for cap in 0..=last_cap {
        if me.cap_bnd & (1 << cap) != 0 && c.cap_bnd & (1 << cap) == 0 {
            inj.call(Syscall::Prctl, &[libc::PR_CAPBSET_DROP as u64, cap], || {
                format!("dropping capability {cap} from the bounding set")
            })?;
        }
    }
    // Keep capabilities across the uid change; capset sets the final ones.
    if let Err(e) =
        inj.raw(Syscall::Prctl, &[libc::PR_SET_SECUREBITS as u64, u64::from(c.securebits) | SECBIT_KEEP_CAPS])?
    {
        warn!("cannot restore securebits {:#x}: {}", c.securebits, e.desc());
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    mem.write(buf, &groups)?;
    inj.call(Syscall::Setgroups, &[c.groups.len() as u64, buf], || "setgroups".into())?;
    let [r, e, s, fs] = c.gid.map(u64::from);
    inj.call(Syscall::Setresgid, &[r, e, s], || format!("setresgid({r}, {e}, {s})"))?;
    inj.call(Syscall::Setfsgid, &[fs], || format!("setfsgid({fs})"))?;
    let [r, e, s, fs] = c.uid.map(u64::from);
    inj.call(Syscall::Setresuid, &[r, e, s], || format!("setresuid({r}, {e}, {s})"))?;
    inj.call(Syscall::Setfsuid, &[fs], || format!("setfsuid({fs})"))?;
    // capset: header {version, pid}, then two {effective, permitted, inheritable}.
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let data: Vec<u32> = vec![
        LINUX_CAPABILITY_VERSION_3,
        0,
        lo(c.cap_eff),
        lo(c.cap_prm),
        lo(c.cap_inh),
        hi(c.cap_eff),
        hi(c.cap_prm),
        hi(c.cap_inh),
    ];
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
    mem.write(buf, &bytes)?;
    inj.call(Syscall::Capset, &[buf, buf + 8], || "capset".into())?;
    for cap in 0..=last_cap {
        if c.cap_amb & (1 << cap) != 0 {
            inj.call(
                Syscall::Prctl,
                &[libc::PR_CAP_AMBIENT as u64, libc::PR_CAP_AMBIENT_RAISE as u64, cap, 0, 0],
                || format!("raising ambient capability {cap}"),
            )?;
        }
    }
    if u64::from(c.securebits) & SECBIT_KEEP_CAPS == 0 {
        inj.call(Syscall::Prctl, &[libc::PR_SET_KEEPCAPS as u64, 0], || "prctl(PR_SET_KEEPCAPS, 0)".into())?;
    }
    Ok(())
}

/// POSIX record locks, taken again from inside the process: they belong
/// to it (and go when it closes any fd of the file), not to a description.
pub fn take_posix_locks(
    inj: &mut Injector,
    mem: &RemoteMem,
    fds: &[crate::image::task::Fd],
    scratch: &Scratch,
) -> Result<()> {
    const F_SETLK: u64 = 6;
    let buf = scratch.data();
    for fd in fds {
        for l in &fd.posix_locks {
            // struct flock, the same on every 64-bit architecture: short
            // l_type, short l_whence, (pad), off_t l_start, off_t l_len,
            // pid_t l_pid, (pad).
            let mut fl = [0u8; 32];
            let ty: i16 = if l.write { libc::F_WRLCK as i16 } else { libc::F_RDLCK as i16 };
            fl[0..2].copy_from_slice(&ty.to_ne_bytes());
            fl[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
            fl[8..16].copy_from_slice(&(l.start as i64).to_ne_bytes());
            fl[16..24].copy_from_slice(&(l.len as i64).to_ne_bytes());
            mem.write(buf, &fl)?;
            inj.call(Syscall::Fcntl, &[fd.fd as u64, F_SETLK, buf], || {
                format!("taking its {} on fd {} again (another process holds it now?)", l.describe(), fd.fd)
            })?;
        }
    }
    Ok(())
}
