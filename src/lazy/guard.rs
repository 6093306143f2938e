//! If the lazy-pages daemon dies before every page arrived, the kernel
//! would drop the task's userfaultfd and serve its missing pages as zeros:
//! silent corruption. A small guard process holds a copy of the fd (so that
//! never happens) and, should the daemon die, kills the task and says why.

use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, OwnedFd};

/// A running guard; tell it `release()` once the daemon's work is done.
pub struct Guard {
    done_w: OwnedFd,
    pid: i32,
}

impl Guard {
    pub fn start(uffd: &OwnedFd, task: i32) -> Result<Guard> {
        let me = crate::pidfd::open(std::process::id() as i32)?;
        let task_fd = crate::pidfd::open(task)?;
        let (done_r, done_w) = nix::unistd::pipe().context("pipe")?;
        // SAFETY: fork; the child makes only raw syscalls on prepared data.
        match unsafe { libc::fork() } {
            -1 => bail!("fork: {}", std::io::Error::last_os_error()),
            0 => unsafe {
                libc::prctl(libc::PR_SET_NAME, c"ferry-guard".as_ptr());
                // Keep only what the guard needs, at fixed numbers: nothing
                // of the daemon's (sockets, images) may stay open through us.
                let keep = [uffd.as_raw_fd(), done_r.as_raw_fd(), me.as_raw_fd(), task_fd.as_raw_fd()];
                let high: Vec<i32> = keep.iter().map(|&f| libc::fcntl(f, libc::F_DUPFD, 100)).collect();
                for (i, &f) in high.iter().enumerate() {
                    libc::dup2(f, 3 + i as i32);
                }
                libc::syscall(libc::SYS_close_range, 7u32, u32::MAX, 0u32);
                let (done_fd, me_fd, task_pfd) = (4, 5, 6);
                let mut fds = [
                    libc::pollfd { fd: done_fd, events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: me_fd, events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: task_pfd, events: libc::POLLIN, revents: 0 },
                ];
                while libc::poll(fds.as_mut_ptr(), 3, -1) < 0 {}
                if fds[0].revents != 0 {
                    let mut b = 0u8;
                    if libc::read(done_fd, &mut b as *mut u8 as *mut libc::c_void, 1) == 1 {
                        libc::_exit(0);
                    }
                }
                if fds[2].revents == 0 {
                    // The daemon is gone, its work unfinished.
                    libc::kill(task, libc::SIGKILL);
                    let msg = b"ferry lazy-pages: the daemon died before all pages arrived; killed the restored task so it cannot read missing memory as zeros\n";
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                }
                libc::_exit(0);
            },
            pid => Ok(Guard { done_w, pid }),
        }
    }

    /// The daemon finished: let the guard go quietly.
    pub fn release(self) {
        let _ = nix::unistd::write(&self.done_w, b"d");
        // SAFETY: reap our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
    }
}
