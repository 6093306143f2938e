//! A redis-server holding 100 client connections and 1 GiB of data is
//! checkpointed with its connections (`--tcp-established`) and restored on
//! this host while one of the clients keeps sending requests: the
//! downtime that client sees (its worst request latency) next to the
//! tool's own frozen time, and whether all 100 connections still answer
//! afterwards. On one host the connections cannot be in two places at
//! once, so this is dump + restore rather than `ferry migrate` (the tests
//! migrate redis with a connected client between namespaces). CRIU 4.1.1
//! is asked the same in the same run.

use super::migration::free_port;
use super::{run_checked, Bench, Tool, Tools, WORK};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 100;

struct Sample {
    /// The client's worst request latency over the checkpoint and restore.
    worst: Duration,
    /// Its median before the checkpoint.
    median: Duration,
    frozen: Duration,
    dump: Duration,
    restore: Duration,
    /// Connections that answered PING after the restore.
    alive: usize,
}

pub(super) fn run(b: &Bench, tools: &Tools) -> Result<()> {
    let mut samples: Vec<(Tool, Result<Sample>)> = Vec::new();
    for round in 0..b.rounds {
        for tool in tools.list() {
            let s = sample(b.mib, tool, tools, round);
            match &s {
                Ok(s) => eprintln!(
                    "bench: tcp round {} {}: worst request {:.1} ms, frozen {:.1} ms, {} of {CONNECTIONS} connections answer",
                    round + 1,
                    tool.name(),
                    s.worst.as_secs_f64() * 1e3,
                    s.frozen.as_secs_f64() * 1e3,
                    s.alive
                ),
                Err(e) => eprintln!("bench: tcp round {} {}: {}", round + 1, tool.name(), cause(e)),
            }
            samples.push((tool, s));
        }
    }
    report(b, &samples);
    Ok(())
}

/// Why a round failed, in one line: the tool's own last line when it
/// printed one.
fn cause(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let first = super::migration::one_line(e);
    if last.trim() == first.trim() {
        first
    } else {
        format!("{first}: {}", last.trim())
    }
}

/// One RESP command on `c`; the first line of the answer.
fn command(c: &mut BufReader<TcpStream>, args: &[&str]) -> Result<String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    c.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        bail!("redis closed the connection");
    }
    if line.starts_with('$') && !line.starts_with("$-1") {
        let mut body = String::new();
        c.read_line(&mut body)?;
    }
    Ok(line.trim().to_string())
}

fn sample(mib: u64, tool: Tool, tools: &Tools, round: usize) -> Result<Sample> {
    let dir = PathBuf::from(WORK).join(format!("tcp-{}-{round}", tool.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?.to_string();
    let d = dir.to_str().context("a UTF-8 path")?;
    let mut c = Command::new("redis-server");
    c.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--enable-debug-command", "yes", "--dir", d])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A session of its own and none of our fds (a pipe shared with us
    // would be an object outside the tree).
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut server = c.spawn().context("starting redis-server (redis-server package)")?;
    let pid = server.id() as i32;
    let r = (|| {
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        let mut conns = loop {
            match TcpStream::connect(&addr) {
                Ok(_) => break Vec::new(),
                Err(_) if start.elapsed() < Duration::from_secs(30) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => bail!("redis-server did not start: {e}"),
            }
        };
        for _ in 0..CONNECTIONS {
            let s = TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            conns.push(BufReader::new(s));
        }
        // 1 MiB values: `mib` of data.
        let reply = command(&mut conns[0], &["DEBUG", "POPULATE", &mib.to_string(), "key", "1048576"])?;
        if reply != "+OK" {
            bail!("DEBUG POPULATE: {reply}");
        }
        // The measuring client: GETs one after the other on connection 0.
        let mut probe = conns.remove(0);
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = std::thread::spawn({
            let stop = stop.clone();
            move || -> Result<Vec<(Instant, Duration)>> {
                let mut v = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = command(&mut probe, &["EXISTS", "key:7"])?;
                    if r != ":1" {
                        bail!("EXISTS key:7 answered {r}");
                    }
                    v.push((t, t.elapsed()));
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(v)
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let checkpoint = Instant::now();
        let img = dir.join("img");
        std::fs::create_dir_all(&img)?;
        let p = pid.to_string();
        let bin = tools.path(tool);
        let mut dump = Command::new(bin);
        dump.args(["dump", "-t", &p, "--tcp-established", "-D"]).arg(&img);
        if tool == Tool::Criu {
            dump.args(["-o", "dump.log", "--display-stats"]);
        }
        let (dump_took, text) = super::migration::explain(run_checked(&mut dump, "dump"), tool, &[&img])?;
        let frozen = match tool {
            Tool::Ferry => super::dump_restore::ferry_frozen(&img)?,
            Tool::Criu => super::dump_restore::criu_frozen(&text),
        };
        let _ = server.wait();
        let mut restore = Command::new(bin);
        restore.args(["restore", "-d", "-D"]).arg(&img);
        if tool == Tool::Criu {
            restore.args(["-o", "restore.log"]);
        }
        let (restore_took, _) = super::migration::explain(run_checked(&mut restore, "restore"), tool, &[&img])?;
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let lat = measuring.join().map_err(|_| anyhow::anyhow!("the measuring client panicked"))??;
        let worst = lat.iter().filter(|(t, _)| *t >= checkpoint - Duration::from_millis(5)).map(|(_, d)| *d).max();
        let mut before: Vec<Duration> = lat.iter().filter(|(t, _)| *t < checkpoint).map(|(_, d)| *d).collect();
        before.sort();
        let alive =
            conns.iter_mut().map(|c| command(c, &["PING"])).filter(|r| r.as_ref().is_ok_and(|r| r == "+PONG")).count()
                + 1;
        Ok(Sample {
            worst: worst.unwrap_or_default(),
            median: before.get(before.len() / 2).copied().unwrap_or_default(),
            frozen,
            dump: dump_took,
            restore: restore_took,
            alive,
        })
    })();
    // SAFETY: plain kill(2) of the server (the original or the restored).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = server.wait();
    let _ = super::wait_exit(pid, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn report(b: &Bench, samples: &[(Tool, Result<Sample>)]) {
    println!(
        "\nredis-server, {} MiB of data, {CONNECTIONS} client connections, checkpointed with --tcp-established and \
         restored on this host while one client sends a request every millisecond; median of {} rounds",
        b.mib, b.rounds
    );
    println!(
        "{:<12} {:>14} {:>14} {:>10} {:>9} {:>11} {:>12}",
        "", "worst req ms", "median req ms", "frozen ms", "dump s", "restore s", "connections"
    );
    for tool in [Tool::Ferry, Tool::Criu] {
        let ok: Vec<&Sample> =
            samples.iter().filter(|(t, _)| *t == tool).filter_map(|(_, s)| s.as_ref().ok()).collect();
        let failed = samples.iter().filter(|(t, _)| *t == tool).find_map(|(_, s)| s.as_ref().err());
        let name = if tool == Tool::Ferry { "ferry" } else { "criu 4.1.1" };
        if ok.is_empty() {
            if let Some(e) = failed {
                println!("{name:<12} fails here: {}", cause(e));
            }
            continue;
        }
        let med = |f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = ok.iter().map(|s| f(s)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{name:<12} {:>14.1} {:>14.3} {:>10.1} {:>9.3} {:>11.3} {:>8}/{CONNECTIONS}",
            med(|s| s.worst.as_secs_f64() * 1e3),
            med(|s| s.median.as_secs_f64() * 1e3),
            med(|s| s.frozen.as_secs_f64() * 1e3),
            med(|s| s.dump.as_secs_f64()),
            med(|s| s.restore.as_secs_f64()),
            med(|s| s.alive as f64) as usize
        );
    }
}
