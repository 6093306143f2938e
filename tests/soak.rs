//! Soak: one process checkpointed and restored again and again, and
//! migrated back and forth between two machines (network and PID
//! namespaces), its memory checked after every round. After each round the
//! counters of what could leak are taken: the process's fds, threads,
//! memory areas and resident memory, and the peak fds, threads and
//! resident memory of the ferry processes that served the round. Nothing
//! may grow from the first rounds to the last.
//!
//! A short run by default; `cargo xtask soak` runs the full one (200
//! dump/restore cycles and 50 migrations: FERRY_SOAK_CYCLES,
//! FERRY_SOAK_MIGRATIONS, and FERRY_SOAK_MINUTES to go on repeating).

mod common;

use common::ns::{Net, PidNs};
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one round left: of the soaked process, and of ferry at its peak.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counters {
    fds: usize,
    threads: usize,
    areas: usize,
    rss_kib: u64,
    ferry_fds: usize,
    ferry_threads: usize,
    ferry_rss_kib: u64,
}

fn count_dir(p: String) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

fn status_kib(pid: i32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn of_process(pid: i32) -> Counters {
    Counters {
        fds: count_dir(format!("/proc/{pid}/fd")),
        threads: count_dir(format!("/proc/{pid}/task")),
        areas: std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().count(),
        rss_kib: status_kib(pid, "VmRSS:"),
        ..Counters::default()
    }
}

/// Samples the ferry processes under `roots` until stopped; keeps peaks.
struct Peaks {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize, u64)>,
}

impl Peaks {
    fn watch(roots: Vec<i32>) -> Peaks {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = (0, 0, 0);
            while !flag.load(Ordering::SeqCst) {
                for &r in &roots {
                    for p in tree_pids(r) {
                        let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
                        if exe.file_name().is_some_and(|n| n == "ferry") {
                            peak.0 = peak.0.max(count_dir(format!("/proc/{p}/fd")));
                            peak.1 = peak.1.max(count_dir(format!("/proc/{p}/task")));
                            peak.2 = peak.2.max(status_kib(p, "VmRSS:"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        Peaks { stop, thread }
    }

    fn stop(self, c: &mut Counters) {
        self.stop.store(true, Ordering::SeqCst);
        let (fds, threads, rss) = self.thread.join().unwrap();
        (c.ferry_fds, c.ferry_threads, c.ferry_rss_kib) = (fds, threads, rss);
    }
}

/// Ask the process to check its memory (generation `n`) and wait for it.
fn checked(host_pid: i32, out: &Path, n: u64) {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(host_pid, libc::SIGUSR1) };
    let want = format!("ok {n}\n");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        assert!(!text.contains("FAIL"), "round {n}: {text}");
        if text.ends_with(&want) {
            return;
        }
        assert!(start.elapsed() < T, "round {n}: no check: {}", text.lines().last().unwrap_or(""));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Nothing grew from the first rounds to the last: the same fds, threads
/// and areas; resident memory within a margin (allocator caches settle).
fn assert_flat(what: &str, rounds: &[Counters]) {
    let (first, last) = (rounds[0], rounds[rounds.len() - 1]);
    eprintln!("soak {what}: {} rounds\n  first {first:?}\n  last  {last:?}", rounds.len());
    let grew = |a: u64, b: u64| b > a + a / 5 + 4096;
    assert!(
        last.fds <= first.fds && last.threads <= first.threads && last.areas <= first.areas,
        "{what}: the process grew: {first:?} -> {last:?}"
    );
    assert!(!grew(first.rss_kib, last.rss_kib), "{what}: resident memory grew: {first:?} -> {last:?}");
    // Each count on its own: the round with the most fds need not be the
    // one with the most threads.
    let first3 = || rounds.iter().take(3);
    let last3 = || rounds.iter().rev().take(3);
    let ferry_first = (first3().map(|c| c.ferry_fds).max().unwrap(), first3().map(|c| c.ferry_threads).max().unwrap());
    let ferry_last = (last3().map(|c| c.ferry_fds).min().unwrap(), last3().map(|c| c.ferry_threads).min().unwrap());
    // Peaks are sampled every 10 ms and may miss a moment: a margin of a
    // few, well below what one leaked fd per round adds up to.
    assert!(
        ferry_last.0 <= ferry_first.0 + 4 && ferry_last.1 <= ferry_first.1 + 2,
        "{what}: ferry used more fds/threads: {ferry_first:?} -> {ferry_last:?}"
    );
    let rss_first = rounds.iter().take(3).map(|c| c.ferry_rss_kib).max().unwrap();
    let rss_last = rounds.iter().rev().take(3).map(|c| c.ferry_rss_kib).min().unwrap();
    assert!(!grew(rss_first, rss_last), "{what}: ferry's resident memory grew: {rss_first} -> {rss_last} KiB");
}

/// Run ferry with `args` to success, keeping its peak fds, threads and
/// resident memory in `peak`.
fn watched(args: &[&str], peak: &mut Counters) {
    let child = Command::new(ferry())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let peaks = Peaks::watch(vec![child.id() as i32]);
    let out = child.wait_with_output().unwrap();
    peaks.stop(peak);
    assert!(out.status.success(), "ferry {}: {}", args[0], String::from_utf8_lossy(&out.stderr));
}

fn deadline() -> Option<Instant> {
    let m = setting("FERRY_SOAK_MINUTES", 0);
    (m > 0).then(|| Instant::now() + Duration::from_secs(m * 60))
}

#[test]
fn dump_restore_cycles_leak_nothing() {
    let w = workdir();
    let cycles = setting("FERRY_SOAK_CYCLES", 20);
    let until = deadline();
    let out = w.path().join("out");
    let mut t = spawn(&[testprog("tp-soak").to_str().unwrap(), "16"], &out);
    t.wait_output("ready", T);
    let pid = t.pid;
    let img = w.path().join("img");
    let mut rounds = Vec::new();
    let mut n = 0u64;
    while n < cycles || until.is_some_and(|u| Instant::now() < u) {
        checked(pid, &out, n);
        let _ = std::fs::remove_dir_all(&img);
        let mut ferry_peak = Counters::default();
        watched(&["dump", "-t", &pid.to_string(), "-D", img.to_str().unwrap()], &mut ferry_peak);
        if n == 0 {
            t.reap_killed();
        } else {
            reap_all(&[pid], T);
        }
        let mut restore_peak = Counters::default();
        watched(&["restore", "-d", "-D", img.to_str().unwrap()], &mut restore_peak);
        let c = Counters {
            ferry_fds: ferry_peak.ferry_fds.max(restore_peak.ferry_fds),
            ferry_threads: ferry_peak.ferry_threads.max(restore_peak.ferry_threads),
            ferry_rss_kib: ferry_peak.ferry_rss_kib.max(restore_peak.ferry_rss_kib),
            ..of_process(pid)
        };
        rounds.push(c);
        n += 1;
    }
    checked(pid, &out, n);
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap_all(&[pid], T);
    std::mem::forget(t);
    assert_flat("dump/restore", &rounds);
}

enum Machine {
    /// A network namespace, the host's PIDs.
    Host(String, String),
    /// A network namespace and a PID namespace.
    Ns(PidNs, String),
}

impl Machine {
    fn ip(&self) -> &str {
        match self {
            Machine::Host(_, ip) | Machine::Ns(_, ip) => ip,
        }
    }

    fn ferry(&self, args: &[&str]) -> Command {
        match self {
            Machine::Host(netns, _) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}")).arg(ferry()).args(args);
                c
            }
            Machine::Ns(ns, _) => ns.ferry(args),
        }
    }

    fn host_pid(&self, vpid: i32) -> Option<i32> {
        match self {
            Machine::Host(..) => pid_exists(vpid).then_some(vpid),
            Machine::Ns(ns, _) => ns.host_pid(vpid),
        }
    }
}

#[test]
fn migrations_back_and_forth_leak_nothing() {
    let w = workdir();
    let migrations = setting("FERRY_SOAK_MIGRATIONS", 6);
    let until = deadline();
    let net = Net::new();
    let key = w.path().join("key");
    std::fs::write(&key, "a shared key for the soak run").unwrap();
    let key = key.display().to_string();
    // Two machines: the source's network namespace with the host's PIDs,
    // and the destination's with a PID namespace of its own.
    let machines = [
        Machine::Host(net.src.clone(), net.src_ip.clone()),
        Machine::Ns(PidNs::new(Some(&net.dst)), net.dst_ip.clone()),
    ];
    let out = w.path().join("out");
    let t = spawn_command(net.in_src(&testprog("tp-soak").display().to_string(), &["16"]), &out);
    t.wait_output("ready", T);
    let vpid = t.pid;
    let mut rounds = Vec::new();
    let mut n = 0u64;
    let mut here = 0;
    checked(t.pid, &out, n);
    n += 1;
    while n <= migrations || until.is_some_and(|u| Instant::now() < u) {
        let there = 1 - here;
        let (src, dst) = (&machines[here], &machines[there]);
        let src_host = src.host_pid(vpid).expect("the process on the source");
        let listen = format!("{}:{}", dst.ip(), 7200 + n % 50);
        let dir = w.path().join(format!("round-{n}"));
        let mut recv = dst.ferry(&["receive", "--listen", &listen, "-D", dir.to_str().unwrap(), "--auth-key", &key]);
        let recv = recv.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut mig = src.ferry(&["migrate", "-t", &vpid.to_string(), "--to", &listen, "--auth-key", &key]);
        let mig = mig.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let peaks = Peaks::watch(vec![recv.id() as i32, mig.id() as i32]);
        let m = mig.wait_with_output().unwrap();
        assert!(m.status.success(), "round {n}: migrate: {}", String::from_utf8_lossy(&m.stderr));
        // The source copy was killed: reap it (it is ours as subreaper).
        reap_all(&[src_host], T);
        let r = recv.wait_with_output().unwrap();
        assert!(r.status.success(), "round {n}: receive: {}", String::from_utf8_lossy(&r.stderr));
        let host = dst.host_pid(vpid).expect("the migrated process");
        let mut c = of_process(host);
        peaks.stop(&mut c);
        rounds.push(c);
        checked(host, &out, n);
        let _ = std::fs::remove_dir_all(&dir);
        here = there;
        n += 1;
    }
    let host = machines[here].host_pid(vpid).unwrap();
    // SAFETY: plain kill(2).
    unsafe { libc::kill(host, libc::SIGKILL) };
    std::mem::forget(t);
    assert_flat("migrations", &rounds);
}
