//! What every fuzz case is held to: ferry ends within a time bound, within
//! a memory bound, with exit 0 or a one-line error, never a panic or a
//! signal, and leaves no process behind. The test process is a child
//! subreaper (see [`super::init`]), so anything ferry leaves running ends
//! up as one of its children, where [`leftovers`] finds it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many cases and which seed: `FERRY_FUZZ_CASES` and `FERRY_FUZZ_SEED`
/// (set by `cargo xtask fuzz`), else a few hundred from seed 1.
pub fn settings(default_cases: u32) -> (u32, u64) {
    let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    (num("FERRY_FUZZ_CASES").map_or(default_cases, |n| n as u32), num("FERRY_FUZZ_SEED").unwrap_or(1))
}

/// Whether target `name` is to be fuzzed: all of them unless
/// `FERRY_FUZZ_ONLY` lists some (comma-separated).
pub fn wanted(name: &str) -> bool {
    std::env::var("FERRY_FUZZ_ONLY").ok().is_none_or(|only| only.split(',').any(|t| t.trim() == name))
}

/// A proptest runner with a fixed seed and no failure files.
pub fn runner(cases: u32, seed: u64) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 200, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// The largest resident set a ferry process may reach on a fuzz case.
pub const MAX_RSS_KIB: i64 = 512 << 10;

#[derive(Debug)]
pub struct Bounded {
    pub status: Option<ExitStatus>,
    pub stderr: String,
    pub max_rss_kib: i64,
    pub elapsed: Duration,
}

impl Bounded {
    /// Why this run breaks the rules, if it does. `Ok(true)`: it succeeded.
    pub fn verdict(&self, command: &str) -> Result<bool, String> {
        let Some(status) = self.status else {
            return Err(format!("{command}: still running after {:?} (killed)", self.elapsed));
        };
        if self.stderr.contains("panicked") || status.code() == Some(101) {
            return Err(format!("{command}: panicked:\n{}", self.stderr));
        }
        if let Some(sig) = status.signal() {
            return Err(format!("{command}: killed by signal {sig}:\n{}", self.stderr));
        }
        if self.max_rss_kib > MAX_RSS_KIB {
            return Err(format!("{command}: used {} MiB", self.max_rss_kib >> 10));
        }
        if status.success() {
            return Ok(true);
        }
        let prefix = format!("ferry: {command}: ");
        let errors: Vec<&str> = self.stderr.lines().filter(|l| !l.starts_with("ferry: warning:")).collect();
        match errors[..] {
            [line] if line.starts_with(&prefix) && status.code() == Some(1) => Ok(false),
            _ => Err(format!("{command}: exit {status}, not a one-line error:\n{}", self.stderr)),
        }
    }
}

/// Run `cmd`, killing it after `limit`; its stderr goes through a file so
/// a chatty child cannot block.
pub fn run_bounded(mut cmd: Command, limit: Duration, scratch: &Path) -> Bounded {
    let err_path = scratch.join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    let start = Instant::now();
    let child = cmd.spawn().expect("spawning ferry");
    let pid = child.id() as i32;
    let mut status = None;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let mut raw = 0;
        // SAFETY: wait4 on our own child, with valid out pointers.
        let r = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut usage) };
        if r == pid {
            status = Some(ExitStatus::from_raw(raw));
            break;
        }
        if start.elapsed() > limit {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut raw, 0, &mut usage);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::mem::forget(child);
    Bounded {
        status,
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        max_rss_kib: usage.ru_maxrss,
        elapsed: start.elapsed(),
    }
}

/// Our living children (zombies reaped first): what a run left behind, or
/// a tree a successful restore made.
pub fn leftovers() -> Vec<i32> {
    // SAFETY: reap any child that already ended; none of ours is waited for elsewhere.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) } > 0 {}
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a.to_string()) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(me) && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Kill `pids` and every process below them, and wait for them to go.
pub fn kill_trees(pids: &[i32]) {
    // Every process first: children of a killed parent come to us (the
    // subreaper) and must be reaped too, or their PIDs stay taken by
    // zombies that the next restore would wait for.
    let all: Vec<i32> = pids.iter().flat_map(|&p| super::tree_pids(p)).collect();
    for &q in &all {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(q, libc::SIGKILL) };
    }
    super::reap_all(&all, Duration::from_secs(10));
    leftovers();
}

/// Make each directory's inventory vouch for its files again (`files`:
/// the other files changed too, else only the inventory itself did).
pub fn reseal(dir: &Path, files: bool) {
    use ferry::image::inventory::Inventory;
    let path = dir.join("inventory.json");
    let Ok(bytes) = std::fs::read(&path) else { return };
    let Ok(mut inv) = serde_json::from_slice::<Inventory>(&bytes) else { return };
    for f in inv.files.iter_mut().filter(|_| files) {
        // A name that now points elsewhere is left as it is.
        if f.name.contains('/') || f.name.is_empty() {
            continue;
        }
        if let Ok(data) = std::fs::read(dir.join(&f.name)) {
            f.size = data.len() as u64;
            f.xxh3 = ferry::image::hash_hex(ferry::image::digest::of(&data));
        }
    }
    std::fs::write(&path, inv.to_bytes_with_checksum()).unwrap();
}
