//! `cargo xtask bench`: dump and restore a process with 1 GiB of touched
//! memory, with ferry and with CRIU 4.1.1 in the same run, images on tmpfs.
//! Reported, never asserted: the machine is shared and noisy.

use crate::{build_release, criu, project_root, require_root};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xshell::Shell;

#[derive(clap::Args)]
pub struct Bench {
    /// Memory of the benchmark process, MiB
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Rounds per tool; the table shows medians
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure ferry only
    #[arg(long)]
    no_criu: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Ferry,
    Criu,
}

struct Sample {
    frozen: Duration,
    dump: Duration,
    restore: Duration,
    image: u64,
}

const WORK: &str = "/dev/shm/ferry-bench";

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn wait_exit(pid: i32, timeout: Duration) -> Result<i32> {
    let start = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: plain waitpid on a child or a task re-parented to us.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            return Ok(st);
        }
        if start.elapsed() > timeout {
            bail!("task {pid} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(Duration, String)> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let took = start.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok((took, text))
}

impl Bench {
    fn sample(&self, tool: Tool, ferry: &Path, criu: Option<&Path>, round: usize) -> Result<Sample> {
        let name = if tool == Tool::Ferry { "ferry" } else { "criu" };
        let dir = PathBuf::from(WORK).join(format!("{name}-{round}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let out = PathBuf::from(WORK).join(format!("{name}-{round}.out"));
        let mut c = Command::new(project_root().join("target/release/tp-bigmem"));
        c.arg(self.mib.to_string()).stdin(Stdio::null()).stdout(std::fs::File::create(&out)?).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = c.spawn()?;
        let pid = child.id() as i32;
        let start = Instant::now();
        while !std::fs::read_to_string(&out)?.contains("ready") {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("benchmark process did not get ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let p = pid.to_string();
        let (dump, frozen) = match tool {
            Tool::Ferry => {
                let (t, _) = run(Command::new(ferry).args(["dump", "-t", &p, "-D"]).arg(&dir), "ferry dump")?;
                let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("stats.json"))?)?;
                (t, Duration::from_micros(stats["frozen_us"].as_u64().unwrap_or(0)))
            }
            Tool::Criu => {
                let (t, text) = run(
                    Command::new(criu.unwrap())
                        .args(["dump", "--display-stats", "-o", "dump.log", "-t", &p, "-D"])
                        .arg(&dir),
                    "criu dump",
                )?;
                let frozen = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Frozen time:"))
                    .and_then(|v| v.trim().trim_end_matches("us").trim().parse().ok())
                    .map(Duration::from_micros)
                    .unwrap_or_default();
                (t, frozen)
            }
        };
        wait_exit(pid, Duration::from_secs(10))?;
        let image = dir_size(&dir);
        let (restore, _) = match tool {
            Tool::Ferry => run(Command::new(ferry).args(["restore", "-d", "-D"]).arg(&dir), "ferry restore")?,
            Tool::Criu => run(
                Command::new(criu.unwrap()).args(["restore", "-d", "-o", "restore.log", "-D"]).arg(&dir),
                "criu restore",
            )?,
        };
        // The restored task checks its memory and exits 0 only if it is intact.
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let st = wait_exit(pid, Duration::from_secs(60))?;
        if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
            bail!("{name}: the restored process failed its memory check (status {st:#x})");
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Sample { frozen, dump, restore, image })
    }

    pub fn run(self, sh: &Shell) -> Result<()> {
        require_root("the benchmark")?;
        build_release(sh)?;
        let criu = if self.no_criu { None } else { Some(criu::ensure(sh)?) };
        let ferry = project_root().join("target/release/ferry");
        // SAFETY: plain prctl: restored tasks are re-parented to us.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        std::fs::create_dir_all(WORK)?;
        warm_up_tmpfs(self.mib * 3)?;
        let mut tools = vec![Tool::Ferry];
        if criu.is_some() {
            tools.push(Tool::Criu);
        }
        let mut samples: Vec<(Tool, Sample)> = Vec::new();
        for round in 0..self.rounds {
            for &tool in &tools {
                let s = self.sample(tool, &ferry, criu.as_deref(), round)?;
                eprintln!(
                    "bench: round {} {}: frozen {:.3} s, dump {:.3} s, restore {:.3} s",
                    round + 1,
                    if tool == Tool::Ferry { "ferry" } else { "criu" },
                    s.frozen.as_secs_f64(),
                    s.dump.as_secs_f64(),
                    s.restore.as_secs_f64()
                );
                samples.push((tool, s));
            }
        }
        let _ = std::fs::remove_dir_all(WORK);
        self.report(&samples, criu.is_some());
        Ok(())
    }

    fn report(&self, samples: &[(Tool, Sample)], with_criu: bool) {
        let med = |tool: Tool, f: fn(&Sample) -> f64| -> f64 {
            let mut v: Vec<f64> = samples.iter().filter(|(t, _)| *t == tool).map(|(_, s)| f(s)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let row = |tool: Tool| {
            let dump = med(tool, |s| s.dump.as_secs_f64());
            let image = med(tool, |s| s.image as f64);
            (
                med(tool, |s| s.frozen.as_secs_f64()),
                dump,
                image / dump / 1e9,
                med(tool, |s| s.restore.as_secs_f64()),
                image,
            )
        };
        println!(
            "\n{} MiB of touched anonymous memory (tp-bigmem), images on /dev/shm (tmpfs), median of {} rounds",
            self.mib, self.rounds
        );
        println!(
            "{:<12} {:>10} {:>10} {:>12} {:>10} {:>10}",
            "", "frozen s", "dump s", "dump GB/s", "restore s", "image MiB"
        );
        let f = row(Tool::Ferry);
        let print = |name: &str, r: (f64, f64, f64, f64, f64)| {
            println!(
                "{name:<12} {:>10.3} {:>10.3} {:>12.2} {:>10.3} {:>10.1}",
                r.0,
                r.1,
                r.2,
                r.3,
                r.4 / (1 << 20) as f64
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
                "goals: dump throughput >= 1.5x CRIU's: {:.2}x ({}); restore time <= 0.5x CRIU's: {:.2}x ({})",
                f.2 / c.2,
                if f.2 / c.2 >= 1.5 { "met" } else { "not met" },
                f.3 / c.3,
                if f.3 / c.3 <= 0.5 { "met" } else { "not met" }
            );
        }
    }
}

/// Touch and free memory through tmpfs first: in a VM, the first write to
/// guest memory the host has not backed yet is several times slower, and
/// whichever tool ran first would pay for it.
fn warm_up_tmpfs(mib: u64) -> Result<()> {
    use std::io::Write;
    let p = PathBuf::from(WORK).join("warm-up");
    let mut f = std::fs::File::create(&p)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    drop(f);
    std::fs::remove_file(&p)?;
    Ok(())
}
