//! Create a child at a chosen PID: clone3 with set_tid (Linux 5.5+), or
//! writing /proc/sys/kernel/ns_last_pid before fork on older kernels.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The kernel's struct clone_args (clone3).
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// In the parent: the child's PID and a pidfd for it.
pub struct Forked {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
}

/// fork(2) semantics: returns Ok(None) in the child. With `new_pid_ns`
/// the child is the init (PID 1) of a new PID namespace and `pid` is not
/// asked for (its PID out here is whatever is free).
fn clone3_at(pid: i32, flags: u64) -> Result<Option<Forked>, Errno> {
    let new_pid_ns = flags & libc::CLONE_NEWPID as u64 != 0;
    let set_tid = [pid];
    let mut pidfd: i32 = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | flags,
        pidfd: &mut pidfd as *mut i32 as u64,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    if flags & libc::CLONE_PARENT as u64 != 0 {
        // clone3 takes no exit signal then: the child gets ours, for our parent.
        args.exit_signal = 0;
    }
    if new_pid_ns {
        args.set_tid = 0;
        args.set_tid_size = 0;
    }
    // SAFETY: without CLONE_VM the child gets a copy of our memory and
    // continues here like after fork(); args and set_tid outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match r {
        0 => Ok(None),
        -1 => Err(Errno::last()),
        child => Ok(Some(Forked {
            pid: child as i32,
            // SAFETY: the kernel just gave us this fd.
            pidfd: (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        })),
    }
}

/// Older kernels: ask for PID-1 as the last one handed out, then fork.
fn fork_via_ns_last_pid(pid: i32) -> Result<Option<Forked>> {
    let path = "/proc/sys/kernel/ns_last_pid";
    let mut f =
        std::fs::OpenOptions::new().read(true).write(true).open(path).with_context(|| format!("opening {path}"))?;
    // Serialise with other restorers doing the same.
    nix::fcntl::Flock::lock(f.try_clone()?, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {path}"))?;
    write!(f, "{}", pid - 1).with_context(|| format!("writing {path}"))?;
    // SAFETY: fork(); the child only makes raw syscalls until it is rebuilt.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", Errno::last().desc()),
        0 => Ok(None),
        child if child == pid => Ok(Some(Forked { pid: child, pidfd: None })),
        child => {
            // SAFETY: plain kill/waitpid of our own child.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
            bail!("PID {pid} was taken by another process while forking (got {child})")
        }
    }
}

/// Describe who holds `pid`, for the error message.
fn holder(pid: i32) -> String {
    match crate::proc::ProcDir::new(pid).status() {
        Ok(s) if s.state == 'Z' => {
            format!("a zombie of '{}' (it was killed, but its parent {} has not reaped it yet)", s.name, s.ppid)
        }
        Ok(s) => format!("'{}' (state {}, parent {})", s.name, s.state, s.ppid),
        Err(_) => "a process that has just gone".to_string(),
    }
}

/// Wait up to `wait` for every PID of `pids` to be free: right after a
/// dump, the killed tasks' PIDs are held until their parents reap them.
pub fn wait_free(pids: &[i32], wait: Duration) -> Result<()> {
    let start = Instant::now();
    let mut announced = false;
    loop {
        let Some(&busy) = pids.iter().find(|&&p| std::path::Path::new(&format!("/proc/{p}")).exists()) else {
            return Ok(());
        };
        if start.elapsed() >= wait {
            bail!("PID {busy} is in use by {} (waited {} s)", holder(busy), wait.as_secs());
        }
        if !announced {
            tracing::info!(pid = busy, "PID in use by {}; waiting for it to be released", holder(busy));
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fork at `pid` (or as the init of a new PID namespace), waiting up to
/// `wait` for the PID to become free. Returns Ok(None) in the child.
pub fn fork_at(pid: i32, new_pid_ns: bool, wait: Duration) -> Result<Option<Forked>> {
    fork_with(pid, if new_pid_ns { libc::CLONE_NEWPID as u64 } else { 0 }, wait)
}

/// [`fork_at`] with more clone flags: new namespaces (CLONE_NEWPID makes
/// the child the init of its own), CLONE_PARENT.
pub fn fork_with(pid: i32, flags: u64, wait: Duration) -> Result<Option<Forked>> {
    let start = Instant::now();
    let mut announced = false;
    loop {
        match clone3_at(pid, flags) {
            Ok(r) => return Ok(r),
            Err(Errno::EEXIST) => {
                if start.elapsed() >= wait {
                    bail!("PID {pid} is in use by {} (waited {} s)", holder(pid), wait.as_secs());
                }
                if !announced {
                    tracing::info!(pid, "PID in use by {}; waiting for it to be released", holder(pid));
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Errno::ENOSYS | Errno::E2BIG) if flags == 0 => return fork_via_ns_last_pid(pid),
            Err(Errno::EPERM) => {
                bail!("clone3 with set_tid: Operation not permitted (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)")
            }
            Err(e) => bail!("clone3 with set_tid {pid}: {}", e.desc()),
        }
    }
}

/// The clone flags of the tree's root: a PID namespace if the tree has
/// one, the container's UTS, IPC and cgroup namespaces, and CLONE_PARENT
/// for `--restore-sibling` (the root becomes ferry's parent's child).
pub fn root_flags(pid_ns: bool, sibling: bool, container: Option<&crate::image::container::ContainerImage>) -> u64 {
    let mut flags = 0u64;
    let mut add = |on: bool, flag: i32| {
        if on {
            flags |= flag as u64;
        }
    };
    add(pid_ns, libc::CLONE_NEWPID);
    add(sibling, libc::CLONE_PARENT);
    if let Some(c) = container {
        add(c.uts.is_some(), libc::CLONE_NEWUTS);
        add(c.ipc, libc::CLONE_NEWIPC);
        // Rooted at ferry's cgroups, where the caller put it (runc: the
        // container's).
        add(c.cgroup, libc::CLONE_NEWCGROUP);
    }
    flags
}
