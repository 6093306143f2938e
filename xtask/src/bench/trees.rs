//! Threads and trees, ferry and CRIU 4.1.1 in the same run: dump and
//! restore of one process with 64 threads and of a tree of 16 processes,
//! 1 GiB in all, images on tmpfs; then a pre-copy + lazy migration of the
//! tree into a fresh PID namespace. Each restored tree checks every page
//! it owns (tp-fleet) before its figures count.

use super::dump_restore::{criu_frozen, ferry_frozen, Sample};
use super::migration::{explain, free_port, hand_over, tool_cmd};
use super::pidns::PidNs;
use super::{dir_size, median, reap, run_checked, tree, Bench, Target, Tool, Tools, WORK};
use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One shape of workload: how tp-fleet is started.
struct Shape {
    name: &'static str,
    procs: u64,
    threads: u64,
}

const SHAPES: [Shape; 2] =
    [Shape { name: "64 threads", procs: 1, threads: 64 }, Shape { name: "16 processes", procs: 16, threads: 2 }];

pub(super) fn run(b: &Bench, tools: &Tools) -> Result<()> {
    let mut rows: Vec<(String, Tool, Result<Vec<Sample>>)> = Vec::new();
    for shape in &SHAPES {
        for tool in tools.list() {
            let mut samples = Vec::new();
            let mut failed = None;
            for n in 0..b.rounds {
                match sample(b.mib, shape, tool, tools, n) {
                    Ok(s) => {
                        eprintln!(
                            "bench: {} round {} {}: dump {:.3} s, restore {:.3} s",
                            shape.name,
                            n + 1,
                            tool.name(),
                            s.dump.as_secs_f64(),
                            s.restore.as_secs_f64()
                        );
                        samples.push(s);
                    }
                    Err(e) => {
                        eprintln!("bench: {} {} failed: {e:#}", shape.name, tool.name());
                        failed = Some(e);
                        break;
                    }
                }
            }
            let r = match failed {
                Some(e) => Err(e),
                None => Ok(samples),
            };
            rows.push((shape.name.to_string(), tool, r));
        }
    }
    let migrations: Vec<(Tool, Result<Vec<Migration>>)> = tools
        .list()
        .into_iter()
        .map(|tool| {
            let mut v = Vec::new();
            for n in 0..b.rounds {
                match migrate_tree(b.mib, tool, tools, n) {
                    Ok(m) => v.push(m),
                    Err(e) => {
                        eprintln!("bench: tree migration {} failed: {e:#}", tool.name());
                        return (tool, Err(e));
                    }
                }
            }
            (tool, Ok(v))
        })
        .collect();
    report(b, &rows, &migrations);
    Ok(())
}

fn fleet_args(mib: u64, shape: &Shape, percent: u64) -> Vec<String> {
    let per_proc = mib / shape.procs;
    vec![shape.procs.to_string(), per_proc.to_string(), percent.to_string(), shape.threads.to_string()]
}

fn sample(mib: u64, shape: &Shape, tool: Tool, tools: &Tools, n: usize) -> Result<Sample> {
    let name = tool.name();
    let dir = PathBuf::from(WORK).join(format!("{name}-tree-{}-{n}", shape.procs));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let args = fleet_args(mib, shape, 0);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut t = Target::spawn("tp-fleet", &args, dir.with_extension("out"))?;
    // Let every thread fill its share.
    std::thread::sleep(Duration::from_millis(500 + mib));
    let pids = tree(t.pid);
    let p = t.pid.to_string();
    let bin = tools.path(tool);
    let r = (|| {
        let (dump, frozen) = match tool {
            Tool::Ferry => {
                let (took, _) = run_checked(
                    std::process::Command::new(bin).args(["dump", "-t", &p, "-D"]).arg(&dir),
                    "ferry dump",
                )?;
                (took, ferry_frozen(&dir)?)
            }
            Tool::Criu => {
                let (took, text) = run_checked(
                    std::process::Command::new(bin)
                        .args(["dump", "--display-stats", "-o", "dump.log", "-t", &p, "-D"])
                        .arg(&dir),
                    "criu dump",
                )?;
                (took, criu_frozen(&text))
            }
        };
        let _ = t.child.wait();
        reap(&pids)?;
        let image = dir_size(&dir);
        let mut restore = std::process::Command::new(bin);
        restore.args(["restore", "-d", "-D"]).arg(&dir);
        if tool == Tool::Criu {
            restore.args(["-o", "restore.log"]);
        }
        let (restore, _) = run_checked(&mut restore, &format!("{name} restore"))?;
        // The restored tree checks every page and prints "ok".
        t.signal(libc::SIGUSR1);
        t.wait_for("ok", Duration::from_secs(120))?;
        Ok(Sample { frozen, dump, restore, image })
    })();
    let r = explain(r, tool, &[&dir]);
    for p in tree(t.pid) {
        // SAFETY: plain kill of what is left of the benchmark's tree.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let _ = reap(&tree(t.pid));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

struct Migration {
    /// From the tree's stop in the final (lazy) dump to the restored tree
    /// running (the dump's work before its freeze is not downtime).
    downtime: Duration,
    /// From the first pre-dump to the last page in place.
    total: Duration,
    precopied: u64,
    lazy_bytes: u64,
}

/// The 16-process tree, dirtying 5% per second: a pre-dump, a second of
/// work, the lazy dump; lazy-pages and restore --lazy-pages in a fresh PID
/// namespace; the restored tree checks its memory.
fn migrate_tree(mib: u64, tool: Tool, tools: &Tools, n: usize) -> Result<Migration> {
    let name = tool.name();
    let d = PathBuf::from(WORK).join(format!("{name}-tree-migration-{n}"));
    let _ = std::fs::remove_dir_all(&d);
    let (d1, d2) = (d.join("1"), d.join("2"));
    std::fs::create_dir_all(&d1)?;
    std::fs::create_dir_all(&d2)?;
    let args = fleet_args(mib, &SHAPES[1], 5);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Target::spawn("tp-fleet", &args, d.join("out"))?;
    std::thread::sleep(Duration::from_millis(500 + mib));
    let r = migrate(tool, tools, &t, &d1, &d2);
    let r = explain(r, tool, &[&d1, &d2]);
    for p in tree(t.pid) {
        // SAFETY: plain kill of what is left of the benchmark's tree.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    drop(t);
    let _ = std::fs::remove_dir_all(&d);
    r
}

fn migrate(tool: Tool, tools: &Tools, t: &Target, d1: &Path, d2: &Path) -> Result<Migration> {
    let name = tool.name();
    let pid = t.pid.to_string();
    let start = Instant::now();
    let args = ["pre-dump", "-t", &pid, "-D", d1.to_str().unwrap()];
    run_checked(&mut tool_cmd(tools, tool, None, &args, "pre-dump.log"), &format!("{name} pre-dump"))?;
    let precopied = dir_size(d1);
    std::thread::sleep(Duration::from_secs(1));
    let ns = PidNs::new()?;
    let port = free_port()?.to_string();
    let img = d2.to_str().unwrap();
    let dump_args = [
        "dump",
        "-t",
        &pid,
        "-D",
        img,
        "--lazy-pages",
        "--port",
        &port,
        "--address",
        "127.0.0.1",
        "--prev-images-dir",
        "../1",
        "--track-mem",
    ];
    let h = hand_over((tool, tools), &ns, (t.pid, &dump_args), &port, d2)?;
    let downtime = h.downtime;
    let root = ns.restored();
    let total = h.settle(name, || {
        let root = root.ok_or_else(|| anyhow!("{name} restore returned, but no tree runs in the namespace"))?;
        let total = start.elapsed();
        // SAFETY: plain kill(2): "check your memory".
        unsafe { libc::kill(root, libc::SIGUSR1) };
        t.wait_for("ok", Duration::from_secs(120))?;
        Ok(total)
    })?;
    let lazy_bytes = match tool {
        Tool::Ferry => {
            let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(d2.join("stats.json"))?)?;
            stats["pages_lazy"].as_u64().unwrap_or(0) * 4096
        }
        Tool::Criu => 0,
    };
    Ok(Migration { downtime, total, precopied, lazy_bytes })
}

fn report(b: &Bench, rows: &[(String, Tool, Result<Vec<Sample>>)], migrations: &[(Tool, Result<Vec<Migration>>)]) {
    println!(
        "\nThreads and trees: {} MiB of touched memory in all (tp-fleet), images on /dev/shm, median of {} rounds",
        b.mib, b.rounds
    );
    println!("{:<14} {:<12} {:>10} {:>10} {:>10} {:>10}", "", "", "frozen s", "dump s", "restore s", "image MiB");
    for (shape, tool, r) in rows {
        match r {
            Ok(s) => println!(
                "{shape:<14} {:<12} {:>10.3} {:>10.3} {:>10.3} {:>10.1}",
                tool.name(),
                median(s.iter().map(|x| x.frozen.as_secs_f64()).collect()),
                median(s.iter().map(|x| x.dump.as_secs_f64()).collect()),
                median(s.iter().map(|x| x.restore.as_secs_f64()).collect()),
                median(s.iter().map(|x| x.image as f64 / (1 << 20) as f64).collect())
            ),
            Err(e) => println!("{shape:<14} {:<12} failed: {}", tool.name(), super::migration::one_line(e)),
        }
    }
    for shape in SHAPES.iter().map(|s| s.name) {
        let get = |tool: Tool| {
            rows.iter().find(|(s, t, r)| s == shape && *t == tool && r.is_ok()).map(|(_, _, r)| r.as_ref().unwrap())
        };
        if let (Some(f), Some(c)) = (get(Tool::Ferry), get(Tool::Criu)) {
            let ratio = |g: fn(&Sample) -> f64| median(f.iter().map(g).collect()) / median(c.iter().map(g).collect());
            let (dump, restore) = (ratio(|s| s.dump.as_secs_f64()), ratio(|s| s.restore.as_secs_f64()));
            println!(
                "{shape:<14} ferry/criu   dump {dump:.2}x, restore {restore:.2}x (goal: at most 1x each: {})",
                if dump <= 1.0 && restore <= 1.0 { "met" } else { "not met" }
            );
        }
    }
    println!("\nPre-copy + lazy migration of the 16-process tree (5%/s dirty), loopback, into a new PID namespace");
    for (tool, r) in migrations {
        match r {
            Ok(m) => println!(
                "{:<12} downtime {:.0} ms, all pages in place after {:.2} s; pre-copied {:.1} MiB, left lazy {:.1} MiB",
                tool.name(),
                median(m.iter().map(|x| x.downtime.as_secs_f64() * 1e3).collect()),
                median(m.iter().map(|x| x.total.as_secs_f64()).collect()),
                median(m.iter().map(|x| x.precopied as f64 / (1 << 20) as f64).collect()),
                median(m.iter().map(|x| x.lazy_bytes as f64 / (1 << 20) as f64).collect())
            ),
            Err(e) => println!("{:<12} failed: {}", tool.name(), super::migration::one_line(e)),
        }
    }
}
