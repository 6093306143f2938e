//! The destination "machine" of the loopback migration benchmark: a PID
//! namespace whose init reaps, where the restored task takes its original
//! PID while the source still holds it on the host.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REAPER: &str = "import os, time\nwhile True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(0.1)\n";

pub struct PidNs {
    init: i32,
    unshare: Child,
}

impl PidNs {
    pub fn new() -> Result<PidNs> {
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "/usr/bin/python3", "-c", REAPER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a PID namespace (unshare)")?;
        let mut ns = PidNs { init: 0, unshare };
        let start = Instant::now();
        while ns.init == 0 {
            ns.init = first_child(ns.unshare.id() as i32).unwrap_or(0);
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the PID namespace's init did not start");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(ns)
    }

    /// `bin` run inside the namespace (its PIDs and its /proc).
    pub fn command(&self, bin: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-p", "-m"]).arg(bin);
        c
    }

    /// Host PID of the namespace's first task after init (the restored one).
    pub fn restored(&self) -> Option<i32> {
        first_child(self.init)
    }
}

fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?.split_whitespace().next()?.parse().ok()
}

impl Drop for PidNs {
    fn drop(&mut self) {
        // SAFETY: plain kill(2); killing init ends the whole namespace.
        unsafe { libc::kill(self.init, libc::SIGKILL) };
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
