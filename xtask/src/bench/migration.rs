//! Live-migration figures over loopback, ferry and CRIU side by side:
//! one pre-dump round at 5% dirty per second, the downtime of a lazy
//! migration of a 1 GiB process with 64 MiB dirtied after the last
//! pre-dump, the latency of faults served from the source, and the
//! background push rate against this machine's memcpy. The destination is
//! a fresh PID namespace, so the task gets its PID back on this one host.
//! Where CRIU fails, its one-line cause is the figure.

use super::dump_restore::{criu_frozen, ferry_frozen};
use super::listening::listening;
use super::pidns::PidNs;
use super::{dir_size, run_checked, Bench, Target, Tool, Tools, WORK};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const DIRTY_MIB: u64 = 64;
const PAGE: u64 = 4096;

/// One pre-dump round after the first, on a task dirtying 5% per second.
struct Round {
    took: Duration,
    frozen: Duration,
    bytes: u64,
}

/// One lazy migration.
struct Migration {
    /// From the task's stop (the dump's freeze, seen from outside) to the
    /// restore returning with the task running: the time it does not run.
    downtime: Duration,
    /// Of that, the restore command (eager pages placed, task started).
    restore: Duration,
    frozen: Duration,
    lazy_bytes: u64,
    /// ferry's lazy-stats.json (CRIU has no such report).
    lazy: Option<serde_json::Value>,
}

#[derive(Default)]
struct Figures {
    round: Vec<Result<Round>>,
    precopied: Vec<Result<Migration>>,
    all_lazy: Vec<Result<Migration>>,
    /// `ferry migrate`'s own downtime report, in ms.
    one_command: Vec<Result<f64>>,
}

pub(super) fn run(b: &Bench, tools: &Tools) -> Result<()> {
    let memcpy = memcpy_rate();
    let tcp = tcp_rate()?;
    let mut all = Vec::new();
    for tool in tools.list() {
        let mut f = Figures::default();
        for n in 0..b.rounds {
            // A tool that failed once fails the same way again: measure once.
            if f.round.iter().all(Result::is_ok) {
                f.round.push(predump_round(b.mib, tool, tools, n));
            }
            if f.precopied.iter().all(Result::is_ok) {
                f.precopied.push(lazy_migration(b.mib, tool, tools, n, true));
            }
            if f.all_lazy.iter().all(Result::is_ok) {
                f.all_lazy.push(lazy_migration(b.mib, tool, tools, n, false));
            }
            if tool == Tool::Ferry {
                f.one_command.push(one_command(b.mib, tools, n));
            }
            eprintln!("bench: migration round {} {} done", n + 1, tool.name());
            let errors = [
                f.round.last().and_then(|r| r.as_ref().err()),
                f.precopied.last().and_then(|r| r.as_ref().err()),
                f.all_lazy.last().and_then(|r| r.as_ref().err()),
                f.one_command.last().and_then(|r| r.as_ref().err()),
            ];
            for e in errors.into_iter().flatten() {
                eprintln!("bench: {} failed: {e:#}", tool.name());
            }
        }
        all.push((tool, f));
    }
    // How the push grows with the memory: one all-lazy round per size,
    // ferry only (CRIU's lazy migration fails here at every size).
    let mut growth = Vec::new();
    for (i, mib) in [b.mib / 4, b.mib, b.mib * 4].into_iter().enumerate() {
        let m = lazy_migration(mib, Tool::Ferry, tools, 100 + i, false);
        if let Err(e) = &m {
            eprintln!("bench: ferry all-lazy push at {mib} MiB failed: {e:#}");
        }
        growth.push((mib, m));
    }
    report(b, (memcpy, tcp), &all);
    report_growth(&growth, (memcpy, tcp));
    Ok(())
}

fn push_rate(m: &Migration) -> f64 {
    let lazy = |key: &str| m.lazy.as_ref().and_then(|l| l[key].as_u64()).unwrap_or(0) as f64;
    let us = lazy("elapsed_us");
    if us == 0.0 {
        0.0
    } else {
        lazy("pushed_bytes") / us * 1e6
    }
}

fn report_growth(growth: &[(u64, Result<Migration>)], (memcpy, tcp): (f64, f64)) {
    println!("background push by size, all lazy (ferry, one round each):");
    for (mib, m) in growth {
        match m {
            Ok(m) => {
                let r = push_rate(m);
                println!(
                    "  {mib:>5} MiB  {:.2} GB/s = {:.0}% of memcpy, {:.0}% of TCP; downtime {:.1} ms",
                    r / 1e9,
                    r / memcpy * 100.0,
                    r / tcp * 100.0,
                    m.downtime.as_secs_f64() * 1e3
                );
            }
            Err(e) => println!("  {mib:>5} MiB  failed: {}", one_line(e)),
        }
    }
}

fn dir(tool: Tool, what: &str, n: usize) -> Result<PathBuf> {
    let d = PathBuf::from(WORK).join(format!("{}-{what}-{n}", tool.name()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A tool's command; CRIU logs to a file in the images dir and prints its
/// statistics, so a failure can be explained from the log.
pub(super) fn tool_cmd(tools: &Tools, tool: Tool, ns: Option<&PidNs>, args: &[&str], log: &str) -> Command {
    let bin = tools.path(tool);
    let mut c = match ns {
        Some(ns) => ns.command(bin),
        None => Command::new(bin),
    };
    c.args(args);
    if tool == Tool::Criu {
        c.args(["-o", log, "--display-stats"]);
    }
    c
}

/// The error CRIU logged in any of `dirs` that says why, for a one-line
/// cause: the first one that is neither its summary ("Dumping FAILED",
/// "failed with -1") nor the rlimit it cannot raise here (which it
/// survives), else the last.
fn criu_error(dirs: &[&Path]) -> Option<String> {
    let errors: Vec<String> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| t.lines().filter(|l| l.contains("Error")).map(str::to_string).collect::<Vec<_>>())
        .collect();
    let telling = |l: &&String| !l.contains("FAILED") && !l.contains("failed with -1") && !l.contains("rlimit");
    errors.iter().find(telling).or(errors.last()).cloned()
}

pub(super) fn explain<T>(r: Result<T>, tool: Tool, dirs: &[&Path]) -> Result<T> {
    r.map_err(|e| match (tool, criu_error(dirs)) {
        (Tool::Criu, Some(line)) => {
            let line = line.split("): ").nth(1).unwrap_or(&line).trim().to_string();
            anyhow!("{}; its log: {line}", one_line(&e))
        }
        _ => e,
    })
}

fn predump_round(mib: u64, tool: Tool, tools: &Tools, n: usize) -> Result<Round> {
    let d = dir(tool, "predump", n)?;
    let t = Target::spawn("tp-churn", &[&mib.to_string(), "5"], d.join("out"))?;
    let pid = t.pid.to_string();
    let (d1, d2) = (d.join("1"), d.join("2"));
    std::fs::create_dir_all(&d1)?;
    std::fs::create_dir_all(&d2)?;
    let r = (|| {
        let first = ["pre-dump", "-t", &pid, "-D", d1.to_str().unwrap()];
        run_checked(&mut tool_cmd(tools, tool, None, &first, "pre-dump.log"), &format!("{} pre-dump", tool.name()))?;
        std::thread::sleep(Duration::from_secs(1));
        let second = ["pre-dump", "-t", &pid, "-D", d2.to_str().unwrap(), "--prev-images-dir", "../1", "--track-mem"];
        let (took, text) = run_checked(
            &mut tool_cmd(tools, tool, None, &second, "pre-dump.log"),
            &format!("{} pre-dump 2", tool.name()),
        )?;
        let frozen = if tool == Tool::Ferry { ferry_frozen(&d2)? } else { criu_frozen(&text) };
        Ok(Round { took, frozen, bytes: dir_size(&d2) })
    })();
    let r = explain(r, tool, &[&d1, &d2]);
    drop(t);
    let _ = std::fs::remove_dir_all(&d);
    r
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn spawn_logged(mut c: Command, log: &Path) -> Result<Child> {
    let f = std::fs::File::create(log)?;
    c.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    c.spawn().with_context(|| format!("starting {c:?}"))
}

/// Wait for `c` to exit, killing it after `timeout`; its log explains a failure.
pub(super) fn finish(c: &mut Child, what: &str, log: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let st: ExitStatus = loop {
        if let Some(st) = c.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = c.kill();
            let _ = c.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if !st.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        bail!("{what} failed ({st}): {last}");
    }
    Ok(())
}

/// The hand-over of a lazy migration, timed from `start`: the lazy dump
/// (`dump_args`, serving on `port`) until it listens, then the lazy-pages
/// daemon and `restore --lazy-pages` of `img` in `ns`. The dump and the
/// daemon are left running (`settle` waits for them).
pub(super) struct Handover {
    pub dump: Child,
    pub daemon: Child,
    dump_log: PathBuf,
    daemon_log: PathBuf,
    /// The restore's outcome and how long it took.
    pub restored: Result<()>,
    pub restore: Duration,
    /// From the task's stop to the restored task running.
    pub downtime: Duration,
}

/// The final lazy dump of task `pid` (its tree), and the lazy-pages
/// daemon and restore in `ns` once the dump serves pages.
pub(super) fn hand_over(
    (tool, tools): (Tool, &Tools),
    ns: &PidNs,
    (pid, dump_args): (i32, &[&str]),
    port: &str,
    img: &Path,
) -> Result<Handover> {
    let name = tool.name();
    let start = Instant::now();
    let watch = FreezeWatch::start(pid);
    let dump_log = img.join("dump.out");
    let mut dump = spawn_logged(tool_cmd(tools, tool, None, dump_args, "dump.log"), &dump_log)?;
    while !listening(port.parse()?) {
        if let Some(st) = dump.try_wait()? {
            let text = std::fs::read_to_string(&dump_log).unwrap_or_default();
            bail!("{name} dump --lazy-pages exited ({st}) before serving pages: {}", text.lines().last().unwrap_or(""));
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = dump.kill();
            bail!("{name} dump --lazy-pages did not start serving pages");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let img_arg = img.to_str().context("image path")?;
    let lazy_args = ["lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", port, "-D", img_arg];
    let daemon_log = img.join("lazy-pages.out");
    let mut daemon = spawn_logged(tool_cmd(tools, tool, Some(ns), &lazy_args, "lazy-pages.log"), &daemon_log)?;
    if tool == Tool::Criu {
        // CRIU's restore does not wait for its daemon's socket (ferry's
        // does): without this it fails with "connect to lazy-pages.socket
        // failed".
        let socket = img.join("lazy-pages.socket");
        while !socket.exists() && daemon.try_wait()?.is_none() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let restore_args = ["restore", "--lazy-pages", "-d", "-D", img_arg];
    let restore_start = Instant::now();
    let restored =
        run_checked(&mut tool_cmd(tools, tool, Some(ns), &restore_args, "restore.log"), &format!("{name} restore"))
            .map(|_| ());
    let end = Instant::now();
    // What a dump does before it freezes (its checks, a parent image read)
    // is not downtime: the task still runs.
    let downtime = end - watch.frozen_at().unwrap_or(start);
    Ok(Handover { dump, daemon, dump_log, daemon_log, restored, restore: end - restore_start, downtime })
}

impl Handover {
    /// Wait for the daemon to place every page and the dump to end, then
    /// run `check`; on any failure both are killed.
    pub fn settle<T>(mut self, name: &str, check: impl FnOnce() -> Result<T>) -> Result<T> {
        let r = (|| {
            std::mem::replace(&mut self.restored, Ok(()))?;
            finish(&mut self.daemon, &format!("{name} lazy-pages"), &self.daemon_log, Duration::from_secs(120))?;
            finish(&mut self.dump, &format!("{name} dump --lazy-pages"), &self.dump_log, Duration::from_secs(30))?;
            check()
        })();
        if r.is_err() {
            let _ = self.daemon.kill();
            let _ = self.dump.kill();
            let _ = self.daemon.wait();
            let _ = self.dump.wait();
        }
        r
    }
}

/// Migrate a tp-dirty process lazily from the host to a fresh PID namespace.
/// With `precopy`, a pre-dump runs first and 64 MiB are dirtied after it,
/// so only those are lazy; without, every page is lazy and the task writes
/// 64 MiB of scattered pages the moment it runs, to measure faults.
fn lazy_migration(mib: u64, tool: Tool, tools: &Tools, n: usize, precopy: bool) -> Result<Migration> {
    let d = dir(tool, if precopy { "precopied" } else { "lazy" }, n)?;
    let pages = (DIRTY_MIB * (1 << 20) / PAGE).to_string();
    let t = Target::spawn("tp-dirty", &[&mib.to_string(), &pages], d.join("out"))?;
    let (d1, d2) = (d.join("1"), d.join("2"));
    std::fs::create_dir_all(&d1)?;
    std::fs::create_dir_all(&d2)?;
    let r = migrate_lazily(tool, tools, &t, &d1, &d2, precopy);
    let r = explain(r, tool, &[&d1, &d2]);
    drop(t);
    let _ = std::fs::remove_dir_all(&d);
    r
}

fn migrate_lazily(tool: Tool, tools: &Tools, t: &Target, d1: &Path, d2: &Path, precopy: bool) -> Result<Migration> {
    let name = tool.name();
    let pid = t.pid.to_string();
    if precopy {
        let args = ["pre-dump", "-t", &pid, "-D", d1.to_str().unwrap()];
        run_checked(&mut tool_cmd(tools, tool, None, &args, "pre-dump.log"), &format!("{name} pre-dump"))?;
        t.signal(libc::SIGUSR2);
        t.wait_for("dirtied", Duration::from_secs(60))?;
    }
    let ns = PidNs::new()?;
    let port = free_port()?.to_string();
    let img = d2.to_str().unwrap();
    let mut dump_args = vec!["dump", "-t", &pid, "-D", img, "--lazy-pages", "--port", &port, "--address", "127.0.0.1"];
    if precopy {
        dump_args.extend(["--prev-images-dir", "../1", "--track-mem"]);
    }
    let h = hand_over((tool, tools), &ns, (t.pid, &dump_args), &port, d2)?;
    let (downtime, restore) = (h.downtime, h.restore);
    let task = ns.restored();
    if !precopy {
        if let Some(task) = task {
            // SAFETY: plain kill(2): "write your 64 MiB now".
            unsafe { libc::kill(task, libc::SIGUSR2) };
        }
    }
    h.settle(name, || {
        let task = task.ok_or_else(|| anyhow!("{name} restore returned, but no task runs in the namespace"))?;
        if !precopy {
            t.wait_for("dirtied", Duration::from_secs(60))?;
        }
        // The migrated task checks every page and prints "ok".
        // SAFETY: plain kill(2).
        unsafe { libc::kill(task, libc::SIGUSR1) };
        t.wait_for("ok", Duration::from_secs(120)).context("the migrated task's memory check")
    })?;
    let frozen = match tool {
        Tool::Ferry => ferry_frozen(d2)?,
        Tool::Criu => criu_frozen(&std::fs::read_to_string(d2.join("dump.out")).unwrap_or_default()),
    };
    let (lazy_bytes, lazy) = match tool {
        Tool::Ferry => {
            let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(d2.join("stats.json"))?)?;
            let lazy: serde_json::Value = serde_json::from_slice(&std::fs::read(d2.join("lazy-stats.json"))?)?;
            (stats["pages_lazy"].as_u64().unwrap_or(0) * PAGE, Some(lazy))
        }
        Tool::Criu => (0, None),
    };
    Ok(Migration { downtime, restore, frozen, lazy_bytes, lazy })
}

/// When a task first stops (a dump's freeze), seen from outside: its state
/// in /proc/PID/stat, polled every 250 µs, the same for every tool.
struct FreezeWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<Instant>>,
}

impl FreezeWatch {
    fn start(pid: i32) -> FreezeWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/stat");
            while !stopping.load(Ordering::Relaxed) {
                let Ok(stat) = std::fs::read_to_string(&path) else { return None };
                // "PID (comm) S ...": the state follows the last ')'.
                let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
                if matches!(state, Some('t' | 'T')) {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(250));
            }
            None
        });
        FreezeWatch { stop, thread }
    }

    /// When the task was first seen stopped, if it was.
    fn frozen_at(self) -> Option<Instant> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

/// `ferry receive` in a PID namespace, `ferry migrate` of a tp-churn
/// dirtying 5% per second: the downtime migrate reports.
fn one_command(mib: u64, tools: &Tools, n: usize) -> Result<f64> {
    let d = dir(Tool::Ferry, "migrate", n)?;
    let key = d.join("auth.key");
    std::fs::write(&key, "benchmark key of some length")?;
    let t = Target::spawn("tp-churn", &[&mib.to_string(), "5"], d.join("out"))?;
    let ns = PidNs::new()?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let (dst, key) = (d.join("dst"), key.to_str().unwrap().to_string());
    let recv_log = d.join("receive.out");
    let mut recv = spawn_logged(
        {
            let mut c = ns.command(&tools.ferry);
            c.args(["receive", "--listen", &listen, "--auth-key", &key, "-D"]).arg(&dst);
            c
        },
        &recv_log,
    )?;
    let r = (|| {
        let start = Instant::now();
        while !listening(listen.rsplit(':').next().unwrap().parse()?) {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("ferry receive did not start listening");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (_, report) = run_checked(
            Command::new(&tools.ferry).args(["migrate", "-t", &t.pid.to_string(), "--to", &listen, "--auth-key", &key]),
            "ferry migrate",
        )?;
        finish(&mut recv, "ferry receive", &recv_log, Duration::from_secs(60))?;
        // "done in 1.23 s: downtime 45.6 ms; ..."
        report
            .lines()
            .find_map(|l| l.split("downtime ").nth(1)?.split(" ms").next()?.trim().parse::<f64>().ok())
            .with_context(|| format!("no downtime in ferry migrate's report:\n{report}"))
    })();
    let _ = recv.kill();
    let _ = recv.wait();
    drop(t);
    let _ = std::fs::remove_dir_all(&d);
    r
}

/// Single-threaded memcpy bandwidth, best of a few 256 MiB copies.
fn memcpy_rate() -> f64 {
    let len = 256 << 20;
    let src = vec![0x5au8; len];
    let mut dst = vec![0u8; len];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    len as f64 / best
}

/// The network's ceiling for the migration: one plain TCP stream over the
/// loopback both ends use (1 MiB writes, 2 GiB), bytes per second.
fn tcp_rate() -> Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total: usize = 2 << 30;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = std::net::TcpStream::connect(addr)?;
        let buf = vec![0x5au8; 1 << 20];
        for _ in 0..total / buf.len() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let (mut r, _) = listener.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    let (t, mut got) = (Instant::now(), 0usize);
    while got < total {
        match r.read(&mut buf)? {
            0 => break,
            n => got += n,
        }
    }
    let rate = got as f64 / t.elapsed().as_secs_f64();
    sender.join().map_err(|_| anyhow!("the TCP sender panicked"))??;
    Ok(rate)
}

fn median<T>(v: &[Result<T>], f: impl Fn(&T) -> f64) -> Result<f64, String> {
    let mut ok: Vec<f64> = Vec::new();
    for r in v {
        match r {
            Ok(x) => ok.push(f(x)),
            Err(e) => return Err(one_line(e)),
        }
    }
    if ok.is_empty() {
        return Err("not measured".into());
    }
    ok.sort_by(f64::total_cmp);
    Ok(ok[ok.len() / 2])
}

/// A failure as one line: the outermost message's first line.
pub(super) fn one_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or("").trim().trim_end_matches(':').to_string()
}

fn report(b: &Bench, (memcpy, tcp): (f64, f64), all: &[(Tool, Figures)]) {
    let mib = |x: f64| x / (1 << 20) as f64;
    let lazy = |m: &Migration, key: &str| m.lazy.as_ref().and_then(|l| l[key].as_u64()).unwrap_or(0) as f64;
    type Row<'a> = (&'a str, Box<dyn Fn(&Figures) -> Result<String, String> + 'a>);
    let rows: Vec<Row> = vec![
        (
            "pre-dump round at 5%/s dirty",
            Box::new(|f| {
                Ok(format!(
                    "{:.3} s, frozen {:.1} ms, {:.1} MiB",
                    median(&f.round, |r| r.took.as_secs_f64())?,
                    median(&f.round, |r| r.frozen.as_secs_f64() * 1e3)?,
                    mib(median(&f.round, |r| r.bytes as f64)?)
                ))
            }),
        ),
        (
            "downtime, 64 MiB dirtied since pre-dump",
            Box::new(|f| {
                Ok(format!(
                    "{:.1} ms (restore {:.1}, frozen {:.1}; {:.0} MiB lazy)",
                    median(&f.precopied, |m| m.downtime.as_secs_f64() * 1e3)?,
                    median(&f.precopied, |m| m.restore.as_secs_f64() * 1e3)?,
                    median(&f.precopied, |m| m.frozen.as_secs_f64() * 1e3)?,
                    mib(median(&f.precopied, |m| m.lazy_bytes as f64)?)
                ))
            }),
        ),
        (
            "downtime, no pre-dump (all lazy)",
            Box::new(|f| {
                Ok(format!(
                    "{:.1} ms (restore {:.1}, frozen {:.1})",
                    median(&f.all_lazy, |m| m.downtime.as_secs_f64() * 1e3)?,
                    median(&f.all_lazy, |m| m.restore.as_secs_f64() * 1e3)?,
                    median(&f.all_lazy, |m| m.frozen.as_secs_f64() * 1e3)?
                ))
            }),
        ),
        (
            "ferry migrate, 5%/s dirty: its downtime",
            Box::new(|f| {
                if f.one_command.is_empty() {
                    return Err("no such command".into());
                }
                Ok(format!("{:.1} ms", median(&f.one_command, |ms| *ms)?))
            }),
        ),
        (
            "fault served from source p50 / p99",
            Box::new(|f| {
                if median(&f.all_lazy, |m| f64::from(m.lazy.is_some()))? == 0.0 {
                    return Err("not reported by this tool".into());
                }
                Ok(format!(
                    "{:.0} / {:.0} µs ({:.0} faults)",
                    median(&f.all_lazy, |m| lazy(m, "fault_p50_us"))?,
                    median(&f.all_lazy, |m| lazy(m, "fault_p99_us"))?,
                    median(&f.all_lazy, |m| lazy(m, "faults"))?
                ))
            }),
        ),
        (
            "background push, all lazy",
            Box::new(|f| {
                if median(&f.all_lazy, |m| f64::from(m.lazy.is_some()))? == 0.0 {
                    return Err("not reported by this tool".into());
                }
                let r = median(&f.all_lazy, push_rate)?;
                Ok(format!(
                    "{:.2} GB/s = {:.0}% of memcpy, {:.0}% of TCP",
                    r / 1e9,
                    r / memcpy * 100.0,
                    r / tcp * 100.0
                ))
            }),
        ),
    ];
    println!(
        "\nLive migration over loopback: {} MiB process (tp-dirty / tp-churn), destination in a new PID namespace, \
         median of {} rounds; memcpy here {:.1} GB/s, one plain TCP stream over the same loopback {:.1} GB/s",
        b.mib,
        b.rounds,
        memcpy / 1e9,
        tcp / 1e9
    );
    print!("{:<41}", "");
    for (tool, _) in all {
        print!(" {:<54}", if *tool == Tool::Criu { "criu 4.1.1" } else { "ferry" });
    }
    println!();
    for (label, f) in &rows {
        print!("{label:<41}");
        for (_, figs) in all {
            let cell = f(figs).unwrap_or_else(|e| format!("failed: {e}"));
            print!(" {cell:<54}");
        }
        println!();
    }
    if let Some((_, f)) = all.iter().find(|(t, _)| *t == Tool::Ferry) {
        let goal = |ok: bool| if ok { "met" } else { "not met" };
        let down = median(&f.precopied, |m| m.downtime.as_secs_f64() * 1e3);
        let all_lazy = median(&f.all_lazy, |m| m.downtime.as_secs_f64() * 1e3);
        let p50 = median(&f.all_lazy, |m| lazy(m, "fault_p50_us"));
        let p99 = median(&f.all_lazy, |m| lazy(m, "fault_p99_us"));
        let push = median(&f.all_lazy, push_rate);
        if let (Ok(down), Ok(all_lazy), Ok(p50), Ok(p99), Ok(push)) = (down, all_lazy, p50, p99, push) {
            println!(
                "goals: pre-copy downtime below all-lazy: {down:.1} < {all_lazy:.1} ms ({}); <= 50 ms ({}); \
                 all lazy <= 30 ms ({}); fault p50/p99 <= 25/100 µs: {p50:.0}/{p99:.0} ({}); \
                 push >= 70% of TCP: {:.0}% ({})",
                goal(down < all_lazy),
                goal(down <= 50.0),
                goal(all_lazy <= 30.0),
                goal(p50 <= 25.0 && p99 <= 100.0),
                push / tcp * 100.0,
                goal(push >= 0.7 * tcp)
            );
        }
    }
}
