//! `cargo xtask bench`: ferry against CRIU 4.1.1 in the same run.
//! Dump/restore of a 1 GiB process (images on tmpfs), live-migration
//! figures over loopback, then threads and trees (a 64-thread process, a
//! 16-process tree, a tree's pre-copy + lazy migration), and a redis-server
//! with 100 TCP clients checkpointed with its connections. Reported, never asserted: the machine is shared
//! and noisy, so only ratios within one run mean much.

mod dump_restore;
mod listening;
mod mappings;
mod migration;
mod pidns;
mod small;
mod tcp;
mod trees;

use crate::{build_release, criu, project_root, require_root};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xshell::Shell;

#[derive(clap::Args)]
pub struct Bench {
    /// Memory of the benchmark process, MiB
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Rounds per tool; the tables show medians
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure ferry only
    #[arg(long)]
    no_criu: bool,
    /// Run one part only
    #[arg(long, value_enum)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Part {
    DumpRestore,
    Small,
    Mappings,
    Migration,
    Trees,
    Tcp,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tool {
    Ferry,
    Criu,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ferry => "ferry",
            Tool::Criu => "criu",
        }
    }
}

/// The binaries under test.
struct Tools {
    ferry: PathBuf,
    criu: Option<PathBuf>,
}

impl Tools {
    fn list(&self) -> Vec<Tool> {
        let mut v = vec![Tool::Ferry];
        if self.criu.is_some() {
            v.push(Tool::Criu);
        }
        v
    }

    fn path(&self, tool: Tool) -> &Path {
        match tool {
            Tool::Ferry => &self.ferry,
            Tool::Criu => self.criu.as_deref().expect("CRIU is built when it is measured"),
        }
    }
}

const WORK: &str = "/dev/shm/ferry-bench";

impl Bench {
    pub fn run(self, sh: &Shell) -> Result<()> {
        require_root("the benchmark")?;
        build_release(sh)?;
        let criu = if self.no_criu { None } else { Some(criu::ensure(sh)?) };
        let tools = Tools { ferry: project_root().join("target/release/ferry"), criu };
        // SAFETY: plain prctl: restored tasks are re-parented to us.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let _ = std::fs::remove_dir_all(WORK);
        std::fs::create_dir_all(WORK)?;
        warm_up_tmpfs(self.mib * 6)?;
        let part = |p: Part| self.only.is_none_or(|o| o == p);
        if part(Part::DumpRestore) {
            dump_restore::run(&self, &tools)?;
        }
        if part(Part::Small) {
            small::run(&self, &tools)?;
        }
        if part(Part::Mappings) {
            mappings::run(&self, &tools)?;
        }
        if part(Part::Migration) {
            migration::run(&self, &tools)?;
        }
        if part(Part::Trees) {
            trees::run(&self, &tools)?;
        }
        if part(Part::Tcp) {
            crate::apt::ensure(sh, &["redis-server", "nftables"])?;
            tcp::run(&self, &tools)?;
        }
        let _ = std::fs::remove_dir_all(WORK);
        Ok(())
    }
}

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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

/// Run to completion; the error carries the command's output.
fn run_checked(cmd: &mut Command, what: &str) -> Result<(Duration, String)> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let took = start.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok((took, text))
}

/// Every process of the tree under `root` (from /proc).
pub(super) fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Ok(kids) = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", out[i])) {
            out.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

/// Reap the processes of a dumped tree (re-parented to us, the
/// subreaper, once their parent died) so their PIDs are free again.
pub(super) fn reap(pids: &[i32]) -> Result<()> {
    let start = Instant::now();
    for &p in pids {
        // SAFETY: plain waitpid of a child or a task re-parented to us.
        while unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) } == 0 {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("process {p} of the dumped tree is still there");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// A test program running in a session of its own, its stdout in a file.
struct Target {
    child: Child,
    pid: i32,
    out: PathBuf,
}

impl Target {
    fn spawn(prog: &str, args: &[&str], out: PathBuf) -> Result<Target> {
        let mut c = Command::new(project_root().join("target/release").join(prog));
        c.args(args).stdin(Stdio::null()).stdout(std::fs::File::create(&out)?).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = c.spawn().with_context(|| format!("starting {prog}"))?;
        let t = Target { pid: child.id() as i32, child, out };
        t.wait_for("ready", Duration::from_secs(60))?;
        Ok(t)
    }

    /// Wait until the program's output has a line starting with `what`.
    fn wait_for(&self, what: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.out)?;
            if text.lines().any(|l| l.starts_with(what)) {
                return Ok(());
            }
            if let Some(fail) = text.lines().find(|l| l.starts_with("FAIL")) {
                bail!("the benchmark process failed: {fail}");
            }
            if start.elapsed() > timeout {
                bail!("the benchmark process did not print {what:?} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid, sig) };
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Its session's group too: a tree a tool failed to dump is left whole.
        // SAFETY: plain kill(2) of the process group the target leads.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
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
