//! After the address space: the rest of the task's kernel state, restored
//! from inside the task by injection (so signals can be queued with any
//! siginfo, and credentials are dropped last).

use super::mm::Scratch;
use super::plan::Plan;
use crate::image::task::Creds;
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

pub fn task_state(inj: &mut Injector, mem: &RemoteMem, plan: &Plan, scratch: &Scratch) -> Result<()> {
    let t = &plan.task;
    let pid = t.pid as u64;
    let buf = scratch.data();
    if let Some(r) = &t.rseq {
        inj.call(Syscall::Rseq, &[r.addr, u64::from(r.len), 0, u64::from(r.sig)], || {
            format!("registering rseq at {:#x}", r.addr)
        })?;
    }
    let alt = &t.signals.altstack;
    if alt.flags & libc::SS_DISABLE == 0 {
        // stack_t: ss_sp, ss_flags (int, padded), ss_size. SS_ONSTACK is state, not a setting.
        let flags = (alt.flags & !libc::SS_ONSTACK) as u32 as u64;
        mem.write(buf, &words(&[alt.sp, flags, alt.size]))?;
        inj.call(Syscall::Sigaltstack, &[buf, 0], || format!("sigaltstack at {:#x}", alt.sp))?;
    }
    for (which, t) in [t.itimers.real, t.itimers.virt, t.itimers.prof].iter().enumerate() {
        if t[1] == 0 {
            continue;
        }
        let val = [t[0] / 1_000_000, t[0] % 1_000_000, t[1] / 1_000_000, t[1] % 1_000_000];
        mem.write(buf, &words(&val))?;
        inj.call(Syscall::Setitimer, &[which as u64, buf, 0], || format!("setitimer({which})"))?;
    }
    // Always: the child armed PDEATHSIG for its own setup.
    inj.call(Syscall::Prctl, &[libc::PR_SET_PDEATHSIG as u64, t.prctl.pdeathsig as u64], || {
        "prctl(PR_SET_PDEATHSIG)".into()
    })?;
    if t.prctl.thp_disable {
        inj.call(Syscall::Prctl, &[libc::PR_SET_THP_DISABLE as u64, 1, 0, 0, 0], || {
            "prctl(PR_SET_THP_DISABLE)".into()
        })?;
    }
    if t.prctl.child_subreaper {
        inj.call(Syscall::Prctl, &[libc::PR_SET_CHILD_SUBREAPER as u64, 1], || "prctl(PR_SET_CHILD_SUBREAPER)".into())?;
    }
    for p in &t.signals.pending {
        mem.write(buf, &p.siginfo)?;
        if p.shared {
            inj.call(Syscall::RtSigqueueinfo, &[pid, p.signo as u64, buf], || format!("queueing signal {}", p.signo))?;
        } else {
            inj.call(Syscall::RtTgsigqueueinfo, &[pid, pid, p.signo as u64, buf], || {
                format!("queueing signal {}", p.signo)
            })?;
        }
    }
    creds(inj, mem, &t.creds, buf)?;
    if matches!(t.prctl.dumpable, 0 | 1) {
        inj.call(Syscall::Prctl, &[libc::PR_SET_DUMPABLE as u64, t.prctl.dumpable as u64], || {
            "prctl(PR_SET_DUMPABLE)".into()
        })?;
    }
    if t.creds.no_new_privs {
        inj.call(Syscall::Prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0], || {
            "prctl(PR_SET_NO_NEW_PRIVS)".into()
        })?;
    }
    inj.call(Syscall::CloseRange, &[plan.helpers_from as u64, u64::from(u32::MAX), 0], || {
        "closing ferry's helper files".into()
    })?;
    Ok(())
}

/// Switch to the dumped credentials, unless they are ferry's own already.
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
