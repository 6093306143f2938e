//! Dump and restore a process with touched memory (a quarter of, once and
//! four times `--mib`: how the cost grows), with ferry and with CRIU
//! 4.1.1, images on tmpfs.

use super::{dir_size, run_checked, wait_exit, Bench, Target, Tool, Tools, WORK};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One dump and restore of one workload.
pub(super) struct Sample {
    pub frozen: Duration,
    pub dump: Duration,
    pub restore: Duration,
    pub image: u64,
}

/// Dump and restore `rounds` times per tool and size, then print the medians.
pub(super) fn run(b: &Bench, tools: &Tools) -> Result<()> {
    for mib in [b.mib / 4, b.mib, b.mib * 4] {
        let mut samples: Vec<(Tool, Sample)> = Vec::new();
        for round in 0..b.rounds {
            for tool in tools.list() {
                let s = sample(Workload::bigmem(mib), tool, tools, round)?;
                eprintln!(
                    "bench: {mib} MiB round {} {}: frozen {:.3} s, dump {:.3} s, restore {:.3} s",
                    round + 1,
                    tool.name(),
                    s.frozen.as_secs_f64(),
                    s.dump.as_secs_f64(),
                    s.restore.as_secs_f64()
                );
                samples.push((tool, s));
            }
        }
        report(b, mib, &samples, tools.criu.is_some());
    }
    Ok(())
}

/// A test program to dump and restore; it checks itself on SIGUSR1 and
/// exits 0 only if its memory is intact.
pub(super) struct Workload {
    pub prog: &'static str,
    pub args: Vec<String>,
}

impl Workload {
    fn bigmem(mib: u64) -> Workload {
        Workload { prog: "tp-bigmem", args: vec![mib.to_string()] }
    }
}

/// One dump and restore of `w` by `tool`.
pub(super) fn sample(w: Workload, tool: Tool, tools: &Tools, round: usize) -> Result<Sample> {
    let name = tool.name();
    let dir = PathBuf::from(WORK).join(format!("{name}-{round}"));
    std::fs::create_dir_all(&dir)?;
    let args: Vec<&str> = w.args.iter().map(String::as_str).collect();
    let mut t = Target::spawn(w.prog, &args, PathBuf::from(WORK).join(format!("{name}-{round}.out")))?;
    let pid = t.pid;
    let p = pid.to_string();
    let bin = tools.path(tool);
    let pids = super::tree(pid);
    let (dump, frozen) = match tool {
        Tool::Ferry => {
            let (took, _) = run_checked(Command::new(bin).args(["dump", "-t", &p, "-D"]).arg(&dir), "ferry dump")?;
            (took, ferry_frozen(&dir)?)
        }
        Tool::Criu => {
            let (took, text) = run_checked(
                Command::new(bin).args(["dump", "--display-stats", "-o", "dump.log", "-t", &p, "-D"]).arg(&dir),
                "criu dump",
            )?;
            (took, criu_frozen(&text))
        }
    };
    // The dumped task is our child, its children re-parented to us: reap
    // them so their PIDs are free again.
    let _ = t.child.wait();
    super::reap(&pids)?;
    let image = dir_size(&dir);
    let (restore, _) = match tool {
        Tool::Ferry => run_checked(Command::new(bin).args(["restore", "-d", "-D"]).arg(&dir), "ferry restore")?,
        Tool::Criu => {
            run_checked(Command::new(bin).args(["restore", "-d", "-o", "restore.log", "-D"]).arg(&dir), "criu restore")?
        }
    };
    // The restored task checks its memory and exits 0 only if it is intact.
    let restored = super::tree(pid);
    t.signal(libc::SIGUSR1);
    let st = wait_exit(pid, Duration::from_secs(60))?;
    for &p in &restored[1..] {
        // SAFETY: plain kill of what is left of the restored tree.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    super::reap(&restored[1..])?;
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        bail!("{name}: the restored process failed its memory check (status {st:#x})");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Sample { frozen, dump, restore, image })
}

/// How long ferry's dump in `dir` kept the task frozen (its stats.json).
pub(super) fn ferry_frozen(dir: &Path) -> Result<Duration> {
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("stats.json"))?)?;
    Ok(Duration::from_micros(stats["frozen_us"].as_u64().unwrap_or(0)))
}

/// CRIU's "Frozen time" from its --display-stats output.
pub(super) fn criu_frozen(text: &str) -> Duration {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Frozen time:"))
        .and_then(|v| v.trim().trim_end_matches("us").trim().parse().ok())
        .map(Duration::from_micros)
        .unwrap_or_default()
}

fn report(b: &Bench, mib: u64, samples: &[(Tool, Sample)], with_criu: bool) {
    let med = |tool: Tool, f: fn(&Sample) -> f64| -> f64 {
        let mut v: Vec<f64> = samples.iter().filter(|(t, _)| *t == tool).map(|(_, s)| f(s)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row = |tool: Tool| {
        let dump = med(tool, |s| s.dump.as_secs_f64());
        let image = med(tool, |s| s.image as f64);
        (med(tool, |s| s.frozen.as_secs_f64()), dump, image / dump / 1e9, med(tool, |s| s.restore.as_secs_f64()), image)
    };
    println!(
        "\n{mib} MiB of touched anonymous memory (tp-bigmem), images on /dev/shm (tmpfs), median of {} rounds",
        b.rounds
    );
    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>10} {:>10} {:>14}",
        "", "frozen s", "dump s", "dump GB/s", "restore s", "image MiB", "restore s/GiB"
    );
    let f = row(Tool::Ferry);
    let print = |name: &str, r: (f64, f64, f64, f64, f64)| {
        let per_gib = r.3 / (mib as f64 / 1024.0);
        println!(
            "{name:<12} {:>10.3} {:>10.3} {:>12.2} {:>10.3} {:>10.1} {:>14.3}",
            r.0,
            r.1,
            r.2,
            r.3,
            r.4 / (1 << 20) as f64,
            per_gib
        );
    };
    print("ferry", f);
    if with_criu {
        let c = row(Tool::Criu);
        print("criu 4.1.1", c);
        println!(
            "{:<12} {:>10.2} {:>10.2} {:>12.2} {:>10.2} {:>10.2}",
            "ferry/criu",
            f.0 / c.0,
            f.1 / c.1,
            f.2 / c.2,
            f.3 / c.3,
            f.4 / c.4
        );
        println!(
            "goals: dump time <= 0.5x CRIU's: {:.2}x ({}); restore time <= 0.3x CRIU's: {:.2}x ({})",
            f.1 / c.1,
            if f.1 / c.1 <= 0.5 { "met" } else { "not met" },
            f.3 / c.3,
            if f.3 / c.3 <= 0.3 { "met" } else { "not met" }
        );
    }
}
