//! A tree of PROCS processes (the root and its children), each with
//! THREADS threads (2 unless given) that keep rewriting MIB/THREADS
//! mebibytes of memory of their own, so that PERCENT of it changes per
//! second. Every page derives from (owner,
//! page number, version). The root also holds 4 MiB it never changes.
//!
//! Each process's main thread waits for signals (blocked in every thread,
//! so it touches nothing but its stack meanwhile): on SIGUSR2 the root
//! forks a child that checks the 4 MiB and exits (during a lazy restore,
//! that child and its exit are the lazy-pages daemon's to follow); on
//! SIGUSR1 the root stops its threads, checks every page, sends SIGUSR1 to
//! its children, which do the same, and waits for them all: "ok" and exit
//! 0 only if every process found all its memory intact (3 otherwise).
//!
//! Usage: tp-fleet PROCS MIB PERCENT [THREADS]
use ferry_testprogs::{check, say};
use std::sync::atomic::{AtomicBool, Ordering};

const PAGE: usize = 4096;
static STOP: AtomicBool = AtomicBool::new(false);

/// Wait for SIGUSR1 or SIGUSR2 (blocked everywhere); returns which.
fn wait_signal() -> i32 {
    // SAFETY: sigwait on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        let mut sig = 0;
        while libc::sigwait(&set, &mut sig) != 0 {}
        sig
    }
}

fn fill(page: &mut [u8], owner: u64, n: usize, version: u32) {
    ferry_testprogs::fill_pattern(page, owner << 40 ^ (n as u64) << 8 ^ u64::from(version).wrapping_mul(0x9e37_79b9));
}

/// One thread's memory: churn it until STOP, then check it all.
fn churn(owner: u64, bytes: usize, percent: usize) -> bool {
    let pages = bytes / PAGE;
    let mut mem = vec![0u8; pages * PAGE];
    let mut versions = vec![0u32; pages];
    for (n, p) in mem.chunks_mut(PAGE).enumerate() {
        fill(p, owner, n, 0);
    }
    let per_tick = (pages * percent / 100 / 100).max(1);
    let mut rng = owner | 1;
    while !STOP.load(Ordering::SeqCst) {
        for _ in 0..per_tick {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = rng as usize % pages;
            versions[n] += 1;
            fill(&mut mem[n * PAGE..(n + 1) * PAGE], owner, n, versions[n]);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut expect = vec![0u8; PAGE];
    mem.chunks(PAGE).enumerate().all(|(n, p)| {
        fill(&mut expect, owner, n, versions[n]);
        p == &expect[..]
    })
}

/// This process's threads, until SIGUSR1; true if all found their memory
/// intact. `on_usr2` runs on each SIGUSR2.
fn run(index: u64, mib: usize, percent: usize, threads: u64, mut on_usr2: impl FnMut()) -> bool {
    let share = mib * (1 << 20) / threads as usize;
    let threads: Vec<_> =
        (0..threads).map(|t| std::thread::spawn(move || churn(index * threads + t + 1, share, percent))).collect();
    while wait_signal() != libc::SIGUSR1 {
        on_usr2();
    }
    STOP.store(true, Ordering::SeqCst);
    threads.into_iter().all(|t| t.join().unwrap_or(false))
}

fn main() {
    let procs: u64 = ferry_testprogs::arg(1).parse().unwrap();
    let mib: usize = ferry_testprogs::arg(2).parse().unwrap();
    let percent: usize = ferry_testprogs::arg(3).parse().unwrap();
    let threads: u64 = std::env::args().nth(4).map(|t| t.parse().unwrap()).unwrap_or(2);
    // SAFETY: block both signals before any fork or thread: every thread
    // of every process inherits the mask, and the main threads sigwait.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut fixed = vec![0u8; 4 << 20];
    ferry_testprogs::fill_pattern(&mut fixed, 77);
    let fixed_sum = ferry_testprogs::checksum(&fixed);
    let mut children = Vec::new();
    for i in 1..procs {
        // SAFETY: fork before any thread exists.
        match unsafe { libc::fork() } {
            0 => {
                let ok = run(i, mib, percent, threads, || {});
                std::process::exit(if ok { 0 } else { 3 });
            }
            pid => children.push(pid),
        }
    }
    say(&format!("ready {procs} processes"));
    let mut forked = Vec::new();
    let mine = run(0, mib, percent, threads, || {
        // SAFETY: fork; the child only reads memory and exits.
        match unsafe { libc::fork() } {
            0 => {
                let ok = ferry_testprogs::checksum(&fixed) == fixed_sum;
                // SAFETY: leave at once.
                unsafe { libc::_exit(if ok { 0 } else { 3 }) }
            }
            pid => forked.push(pid),
        }
    });
    check(mine, 3, "root: memory differs");
    for c in forked {
        let mut st = 0;
        // SAFETY: plain waitpid of our child.
        unsafe { libc::waitpid(c, &mut st, 0) };
        check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, 3, &format!("forked child {c}: status {st:#x}"));
    }
    for &c in &children {
        // SAFETY: plain kill of our child.
        unsafe { libc::kill(c, libc::SIGUSR1) };
    }
    for c in children {
        let mut st = 0;
        // SAFETY: plain waitpid of our child.
        unsafe { libc::waitpid(c, &mut st, 0) };
        check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, 3, &format!("child {c}: status {st:#x}"));
    }
    say("ok");
}
