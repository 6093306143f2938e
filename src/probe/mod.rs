//! `ferry check`: probe the running kernel for each thing ferry relies on,
//! by trying it, and say why when it is missing.

pub mod uffd;

use crate::proc::pagemap::{self, PageEntry};
use crate::proc::ProcDir;
use anyhow::{bail, Result};
use std::fs::File;
use std::process::ExitCode;

/// The answer of one probe.
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
}

fn yes(detail: impl Into<String>) -> Outcome {
    Outcome { ok: true, detail: detail.into() }
}
fn no(detail: impl Into<String>) -> Outcome {
    Outcome { ok: false, detail: detail.into() }
}

pub struct Probe {
    pub name: &'static str,
    /// CRIU's names for the same check (`criu check --feature NAME`).
    pub aliases: &'static [&'static str],
    /// Needed for dump and restore at all (others enable optional features).
    pub essential: bool,
    pub run: fn() -> Outcome,
}

pub const PROBES: &[Probe] = &[
    Probe { name: "ptrace-seize", aliases: &[], essential: true, run: ptrace_seize },
    Probe { name: "rseq-config", aliases: &[], essential: false, run: rseq_config },
    Probe { name: "clone3-set-tid", aliases: &["clone3_set_tid"], essential: false, run: clone3_set_tid },
    Probe { name: "ns-last-pid", aliases: &[], essential: false, run: ns_last_pid },
    Probe { name: "prctl-mm-map", aliases: &["prctl"], essential: true, run: prctl_mm_map },
    Probe { name: "uffd", aliases: &[], essential: false, run: uffd::basic },
    Probe { name: "uffd-wp", aliases: &[], essential: false, run: uffd::wp },
    Probe { name: "uffd-wp-async", aliases: &[], essential: false, run: uffd::wp_async },
    Probe { name: "uffd-events", aliases: &["uffd-noncoop"], essential: false, run: uffd::events },
    Probe { name: "pagemap-scan", aliases: &[], essential: false, run: uffd::pagemap_scan },
    Probe { name: "soft-dirty", aliases: &[], essential: false, run: soft_dirty },
    Probe { name: "dirty-tracking", aliases: &["mem_dirty_track"], essential: false, run: dirty_tracking },
    Probe { name: "vdso", aliases: &[], essential: false, run: vdso },
    Probe { name: "external-net-ns", aliases: &["external_net_ns"], essential: false, run: external_net_ns },
    Probe { name: "page-size", aliases: &[], essential: false, run: page_size },
];

pub fn run(feature: Option<&str>) -> Result<ExitCode> {
    if let Some(f) = feature {
        let Some(p) = find(f) else {
            let names: Vec<&str> = PROBES.iter().map(|p| p.name).collect();
            bail!("unknown feature {f:?}; known: {}", names.join(", "));
        };
        let o = (p.run)();
        print(p, &o);
        return Ok(if o.ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let missing = missing(print);
    if missing.is_empty() {
        println!("Looks good: dump and restore can work here.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("Dump and restore cannot work here: missing {}.", missing.join(", "));
        Ok(ExitCode::from(1))
    }
}

/// One probe's line of `ferry check`.
fn print(p: &Probe, o: &Outcome) {
    println!("{:<16} {:<4} {}", p.name, if o.ok { "yes" } else { "no" }, o.detail);
}

/// The probe called `name`, by ferry's name or CRIU's.
pub fn find(name: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|p| p.name == name || p.aliases.contains(&name))
}

/// Whether the probe called `name` passes here.
pub fn passes(name: &str) -> bool {
    find(name).is_some_and(|p| (p.run)().ok)
}

/// Run every probe (telling `each` how it went); what dump and restore
/// need and this machine lacks.
pub fn missing(mut each: impl FnMut(&Probe, &Outcome)) -> Vec<&'static str> {
    let mut results = Vec::new();
    for p in PROBES {
        let o = (p.run)();
        each(p, &o);
        results.push((p.name, p.essential, o.ok));
    }
    let ok = |n: &str| results.iter().any(|(name, _, ok)| *name == n && *ok);
    let mut missing: Vec<&str> = results.iter().filter(|(_, ess, ok)| *ess && !ok).map(|(n, _, _)| *n).collect();
    if !ok("clone3-set-tid") && !ok("ns-last-pid") {
        missing.push("clone3-set-tid or ns-last-pid");
    }
    missing
}

/// Fork a child that waits in pause() until killed.
fn paused_child() -> Option<i32> {
    // SAFETY: fork in a single-threaded command; the child only pauses.
    match unsafe { libc::fork() } {
        0 => loop {
            // SAFETY: plain pause(2).
            unsafe { libc::pause() };
        },
        -1 => None,
        pid => Some(pid),
    }
}

fn reap(pid: i32) {
    // SAFETY: kill and reap our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
    }
}

fn with_seized_child(f: impl FnOnce(&crate::ptrace::Tracee) -> Outcome) -> Outcome {
    let Some(pid) = paused_child() else { return no("fork failed") };
    let out = match crate::ptrace::Tracee::seize(pid, crate::ptrace::O_TRACESYSGOOD, crate::ptrace::OnDrop::Detach) {
        Err(e) => no(format!("{e:#}")),
        Ok(t) => match t.interrupt().and_then(|_| t.wait_interrupted()) {
            Err(e) => no(format!("PTRACE_INTERRUPT: {e:#}")),
            Ok(_) => f(&t),
        },
    };
    reap(pid);
    out
}

fn ptrace_seize() -> Outcome {
    with_seized_child(|t| match t.cpu_state() {
        Ok(_) => yes("PTRACE_SEIZE, PTRACE_INTERRUPT and PTRACE_GETREGSET work on a test child"),
        Err(e) => no(format!("reading registers: {e:#}")),
    })
}

fn rseq_config() -> Outcome {
    with_seized_child(|t| match t.rseq_config() {
        Ok(Some(c)) => yes(format!("PTRACE_GET_RSEQ_CONFIGURATION works (test child: rseq at {:#x})", c.addr)),
        Ok(None) => yes("PTRACE_GET_RSEQ_CONFIGURATION works (test child has no rseq area)"),
        Err(e) => no(format!("{e:#} (kernel older than 5.13?); tasks using rseq cannot be restored")),
    })
}

fn clone3_set_tid() -> Outcome {
    // Pick a PID that looks free; a race with another fork only fails the probe.
    let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1000);
    let max: i32 =
        std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
    let Some(want) = (last + 50..max).find(|p| !ProcDir::new(*p).exists()) else {
        return no("no free PID to try");
    };
    match crate::restore::fork::fork_at(want, false, std::time::Duration::ZERO) {
        // SAFETY: the child exits at once.
        Ok(None) => unsafe { libc::_exit(0) },
        Ok(Some(f)) => {
            reap(f.pid);
            if f.pid == want {
                yes(format!("clone3 created a child at the requested PID {want}"))
            } else {
                no(format!("asked for PID {want}, got {}", f.pid))
            }
        }
        Err(e) => no(format!("{e:#}")),
    }
}

fn ns_last_pid() -> Outcome {
    let p = "/proc/sys/kernel/ns_last_pid";
    // The file is mode 0666; writing needs CAP_CHECKPOINT_RESTORE. Write
    // back the value it has: a real test, and harmless.
    let current = match std::fs::read_to_string(p) {
        Ok(v) => v,
        Err(e) => return no(format!("{p}: {e}")),
    };
    match std::fs::write(p, current.trim()) {
        Ok(()) => yes(format!("{p} is writable (fallback for kernels without clone3 set_tid)")),
        Err(e) => no(format!("writing {p}: {e} (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)")),
    }
}

fn prctl_mm_map() -> Outcome {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE only writes the struct size to `size`.
    let r = unsafe { libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP_SIZE, &mut size as *mut u32, 0, 0) };
    if r != 0 {
        return no(format!(
            "PR_SET_MM_MAP_SIZE: {} (kernel without CONFIG_CHECKPOINT_RESTORE?)",
            std::io::Error::last_os_error()
        ));
    }
    let caps = ProcDir::current().status().map(|s| s.cap_eff).unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_CHECKPOINT_RESTORE: u64 = 40;
    if caps & (1 << CAP_SYS_ADMIN) == 0 && caps & (1 << CAP_CHECKPOINT_RESTORE) == 0 {
        return no("PR_SET_MM_MAP needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, which ferry does not have");
    }
    yes(format!("PR_SET_MM_MAP available ({size}-byte map), with CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE"))
}

/// Whether the kernel tracks soft-dirty bits: write a page, look at pagemap.
pub fn soft_dirty_works() -> Result<bool, String> {
    let page = crate::page_size() as usize;
    let mut v = vec![0u8; page * 2];
    let addr = (v.as_ptr() as usize).div_ceil(page) * page;
    let off = addr - v.as_ptr() as usize;
    if std::fs::write("/proc/self/clear_refs", "4").is_err() {
        return Err("/proc/self/clear_refs does not accept 4 (soft-dirty reset)".into());
    }
    v[off] = 1;
    std::hint::black_box(&mut v);
    let f = File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
    let e: Vec<PageEntry> =
        pagemap::read_range(&f, addr as u64, (addr + page) as u64, page as u64).map_err(|e| format!("{e:#}"))?;
    Ok(e[0].soft_dirty())
}

fn soft_dirty() -> Outcome {
    match soft_dirty_works() {
        Ok(true) => yes("a written page shows the soft-dirty bit after clear_refs"),
        Ok(false) => no("pagemap never shows soft-dirty (kernel built without CONFIG_MEM_SOFT_DIRTY)"),
        Err(e) => no(e),
    }
}

fn dirty_tracking() -> Outcome {
    if uffd::wp_async().ok && uffd::pagemap_scan().ok {
        yes("pre-dump will track with uffd-wp (async) + PAGEMAP_SCAN")
    } else if soft_dirty().ok {
        yes("pre-dump will track with soft-dirty bits")
    } else {
        yes("pre-dump will fall back to page hashing (neither uffd-wp async nor soft-dirty here)")
    }
}

/// Joining a network namespace handed in (a container's, from runc):
/// setns into one's own, on a thread of its own.
fn external_net_ns() -> Outcome {
    let joined = std::thread::spawn(|| -> std::io::Result<()> {
        let ns = File::open("/proc/thread-self/ns/net")?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(())
    })
    .join();
    match joined {
        Ok(Ok(())) => yes("setns(CLONE_NEWNET) works: a container's network namespace can be joined"),
        Ok(Err(e)) => no(format!("setns(CLONE_NEWNET): {e}")),
        Err(_) => no("the probe's thread panicked"),
    }
}

fn vdso() -> Outcome {
    match ProcDir::current().smaps() {
        Ok(maps) => match maps.iter().find(|m| m.path == "[vdso]") {
            Some(m) if m.has_flag("sl") => {
                no("the vDSO is sealed (CONFIG_MSEAL_SYSTEM_MAPPINGS): it cannot be moved to a dumped address")
            }
            Some(m) => yes(format!("present, {} bytes, movable (not sealed)", m.len())),
            None => yes("no vDSO in this process"),
        },
        Err(e) => no(format!("{e:#}")),
    }
}

fn page_size() -> Outcome {
    yes(format!("{} bytes", crate::page_size()))
}
