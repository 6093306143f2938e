//! `cargo xtask demo`: ferry's main job on this machine, in one minute.
//! A Python process counts; ferry dumps it (the process is gone), shows the
//! image, restores it at the same PID, and it counts on from where it was.

use crate::{apt, build_release, project_root, require_root};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Demo {
    /// Where to put the images and the counter's log
    #[arg(long, default_value = "/tmp/ferry-demo")]
    dir: std::path::PathBuf,
}

const COUNTER: &str = "import sys, time\n\
log = open(sys.argv[1], 'a')\n\
n = 0\n\
while True:\n\
\x20   n += 1\n\
\x20   log.write(f'tick {n}  {time.strftime(\"%H:%M:%S\")}\\n'); log.flush()\n\
\x20   time.sleep(0.25)\n";

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}\n")).collect()
}

fn step(what: &str) {
    println!("\n==> {what}");
}

impl Demo {
    pub fn run(self, sh: &Shell) -> Result<()> {
        require_root("the demo")?;
        apt::ensure(sh, &["python3"])?;
        build_release(sh)?;
        let ferry = project_root().join("target/release/ferry");
        let dir = &self.dir;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let log = dir.join("ticks.log");
        let img = dir.join("img");
        // Tasks restored with -d are re-parented to us, so we can clean up.
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

        step("ferry check");
        cmd!(sh, "{ferry} check").run()?;

        step("starting a Python counter (its own session, output to a log file)");
        let mut child = Command::new("/usr/bin/python3");
        child.args(["-c", COUNTER]).arg(&log).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            child.pre_exec(|| {
                libc::setsid();
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let mut child = child.spawn().context("starting python3")?;
        let pid = child.id().to_string();
        std::thread::sleep(Duration::from_millis(1600));
        print!("  PID {pid}, last lines of {}:\n{}", log.display(), tail(&log, 3));

        step(&format!("ferry dump -t {pid} -D {}", img.display()));
        cmd!(sh, "{ferry} dump -t {pid} -D {img}").run()?;
        child.wait()?;
        println!("  process {pid} is gone: {}", !Path::new(&format!("/proc/{pid}")).exists());

        step(&format!("ferry show {}", img.display()));
        let shown = cmd!(sh, "{ferry} show {img}").read()?;
        for l in shown.lines().take(22) {
            println!("  {l}");
        }
        println!("  … ({} more lines)", shown.lines().count().saturating_sub(22));

        std::thread::sleep(Duration::from_secs(1));
        step(&format!("ferry restore -d -D {}", img.display()));
        cmd!(sh, "{ferry} restore -d -D {img}").run()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).context("the restored process is not there")?;
        println!("  PID {pid} is back: {}", exe.display());
        std::thread::sleep(Duration::from_millis(1600));
        print!("  it counts on where it stopped (no tick lost or repeated):\n{}", tail(&log, 6));

        let text = std::fs::read_to_string(&log)?;
        let ticks: Vec<u64> = text.lines().filter_map(|l| l.split_whitespace().nth(1)?.parse().ok()).collect();
        let gapless = ticks.windows(2).all(|w| w[1] == w[0] + 1);
        // SAFETY: the restored process was re-parented to us.
        unsafe {
            libc::kill(pid.parse().unwrap(), libc::SIGTERM);
            libc::waitpid(pid.parse().unwrap(), std::ptr::null_mut(), 0);
        }
        if !gapless || ticks.len() < 10 {
            bail!("the counter did not continue cleanly: {ticks:?}");
        }
        step(&format!("done: {} ticks, none lost; images and log in {}", ticks.len(), dir.display()));
        Ok(())
    }
}
