//! The process that keeps a tracked task's userfaultfd open between ferry
//! invocations. It holds the fd at number 3 and a pidfd of the task at 4,
//! and exits when the task exits, after an idle timeout, or on SIGTERM.

use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// Where to find a holder again, from another ferry invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRef {
    pub pid: i32,
    /// From /proc/PID/stat: tells a reused PID from our holder.
    pub start_time: u64,
    /// The userfaultfd's number in the holder.
    pub uffd: i32,
    pub task: i32,
}

pub const NAME: &str = "ferry-track";
const UFFD_FD: i32 = 3;
const TASK_FD: i32 = 4;
const OWNER_FD: i32 = 5;

impl HolderRef {
    pub fn alive(&self) -> bool {
        let p = ProcDir::new(self.pid);
        matches!(p.stat(), Ok(s) if s.start_time == self.start_time && s.comm == NAME && s.state != 'Z')
    }

    /// A copy of the userfaultfd, if the holder still runs.
    pub fn take_uffd(&self) -> Result<OwnedFd> {
        if !self.alive() {
            bail!("the tracking holder {} is gone", self.pid);
        }
        crate::pidfd::getfd(&crate::pidfd::open(self.pid)?, self.uffd)
    }

    /// End tracking: the holder closes the userfaultfd as it exits.
    pub fn stop(&self) {
        if self.alive() {
            // SAFETY: plain kill(2) of a process we verified is our holder.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
    }
}

/// Start a holder for `uffd` that lives as long as task `task` (at most
/// `idle` without being stopped), and, if given, as long as `owner`.
pub fn spawn(uffd: &OwnedFd, task: i32, idle: Duration, owner: Option<i32>) -> Result<HolderRef> {
    let task_fd = crate::pidfd::open(task)?;
    let owner_fd = owner.map(crate::pidfd::open).transpose()?;
    let (r, w) = nix::unistd::pipe().context("pipe")?;
    let timeout_ms = idle.as_millis().min(i32::MAX as u128) as i32;
    let name = b"ferry-track\0";
    // SAFETY: fork; the children only make raw syscalls on prepared data.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => unsafe {
            // First child: new session, then a grandchild that init adopts.
            libc::setsid();
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            let me = libc::getpid();
            libc::write(w.as_raw_fd(), &me as *const i32 as *const libc::c_void, 4);
            // Either may sit at 3 or 4 already: move both out of the way first.
            let u = libc::fcntl(uffd.as_raw_fd(), libc::F_DUPFD, 10);
            let t = libc::fcntl(task_fd.as_raw_fd(), libc::F_DUPFD, 10);
            let o = owner_fd.as_ref().map_or(-1, |f| libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, 10));
            libc::dup2(u, UFFD_FD);
            libc::dup2(t, TASK_FD);
            if o >= 0 {
                libc::dup2(o, OWNER_FD);
            }
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::syscall(libc::SYS_close_range, (OWNER_FD + 1) as u32, u32::MAX, 0u32);
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            let mut p = [
                libc::pollfd { fd: TASK_FD, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: if o >= 0 { OWNER_FD } else { -1 }, events: libc::POLLIN, revents: 0 },
            ];
            // Returns when the task or the owner exits (pidfd readable) or on timeout.
            while libc::poll(p.as_mut_ptr(), 2, timeout_ms) < 0 {}
            libc::_exit(0);
        },
        child => {
            drop(w);
            // SAFETY: reap the first child, which exits at once.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            let mut buf = [0u8; 4];
            nix::unistd::read(&r, &mut buf).context("reading the holder's PID")?;
            let pid = i32::from_ne_bytes(buf);
            let start_time = ProcDir::new(pid).stat().context("the tracking holder did not start")?.start_time;
            let h = HolderRef { pid, start_time, uffd: UFFD_FD, task };
            wait_named(&h);
            Ok(h)
        }
    }
}

/// The holder renames itself right after it starts: wait for that, so
/// `alive()` recognises it from the first moment.
fn wait_named(h: &HolderRef) {
    for _ in 0..100 {
        if ProcDir::new(h.pid).stat().map(|s| s.comm == NAME).unwrap_or(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
