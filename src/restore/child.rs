//! What the freshly forked processes do by themselves before ferry takes
//! over. ferry forks the tree's root; each process (a copy of ferry) first
//! leads its session if it should, then forks its own children at their
//! PIDs (so parents, sessions and every fd ferry opened are inherited),
//! then sets up what is easy from inside: file descriptors at their
//! numbers, cwd/root, umask, personality, rlimits, signal handlers, name.
//! Then it waits to be interrupted.
//!
//! Each process is a copy of ferry, made by clone3 from a process that may
//! have had other threads: it must not allocate, lock or print. Everything
//! it needs is prepared in [`TreeSetup`] beforehand and it only makes raw
//! syscalls; each reports (process, step, errno) on one shared pipe.

use super::fork::CloneArgs;
use std::ffi::CString;
use std::os::fd::RawFd;

/// The kernel's struct sigaction as rt_sigaction takes it (the same layout
/// on all four architectures: they all have SA_RESTORER).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// Steps the child reports failures of (`Ok`: it is set up and waiting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::NoUninit, bytemuck::CheckedBitPattern)]
#[repr(u32)]
pub enum Step {
    Ok = 0,
    BlockSignals,
    Setsid,
    StageFd,
    CloseInherited,
    PlaceFd,
    ControllingTty,
    Chdir,
    Chroot,
    Personality,
    Rlimit,
    Sigaction,
    Name,
    Report,
    Fork,
    Setpgid,
    Mount,
    PivotRoot,
    Hostname,
    ReopenTty,
}

/// What a forked process is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A process of the tree, rebuilt by ferry.
    Process,
    /// A zombie to be: it keeps nothing and waits for ferry to end it.
    Zombie,
    /// Holds a process group whose leader had exited (it takes the
    /// leader's PID) while the members join it; then ferry ends it and
    /// its parent reaps it (it signals nobody: exit_signal 0).
    GroupHelper,
}

/// A process's report on the pipe: which process, the step, its detail
/// index and errno.
#[derive(Clone, Copy, Debug, bytemuck::NoUninit, bytemuck::CheckedBitPattern)]
#[repr(C)]
pub struct Report {
    pub process: u32,
    pub step: Step,
    pub index: u32,
    pub errno: i32,
}

impl Report {
    pub const SIZE: usize = std::mem::size_of::<Report>();

    /// Decode what the child wrote; garbage is an error, not a guess.
    pub fn decode(bytes: &[u8]) -> Option<Report> {
        bytemuck::checked::try_pod_read_unaligned(bytes).ok()
    }
}

/// Everything the tree's processes need, computed by ferry.
pub struct TreeSetup {
    /// The write end of the report pipe (ferry's fd, inherited by all).
    pub report_fd: RawFd,
    /// First fd number above every fd ferry opened and every dumped one.
    pub stage_base: RawFd,
    /// ferry's hard RLIMIT_NOFILE, which the processes raise their soft one to.
    pub nofile_hard: u64,
    /// ferry's PID, as the root sees its parent (0 for a new PID
    /// namespace's init, whose parent is outside).
    pub ferry_pid: i32,
    /// Every process, the root first, parents before children.
    pub processes: Vec<ChildSetup>,
    /// A container's root first enters its namespaces' mounts.
    pub container: Option<super::container::ChildMounts>,
}

/// What one process of the tree needs.
pub struct ChildSetup {
    /// Its PID in the tree's namespace (set_tid of clone3).
    pub pid: i32,
    pub exit_signal: i32,
    /// Indexes of the processes it forks.
    pub children: Vec<usize>,
    pub role: Role,
    pub setsid: bool,
    /// Parent fds the child ends up with, in order: dumped fds first
    /// (`targets` gives their numbers), then helpers (mapped files, exe)
    /// that stay at `stage_base + index` until ferry closes them.
    pub sources: Vec<RawFd>,
    pub targets: Vec<(RawFd, bool)>,
    /// Index into `targets` of the terminal to make controlling.
    pub ctty: Option<usize>,
    /// Once it is: fds the process opens itself (fd, path, open flags),
    /// over ferry's copy (/dev/tty, which names the caller's terminal).
    pub reopen: Vec<(RawFd, CString, i32)>,
    pub cwd: CString,
    pub root: Option<CString>,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<(u32, libc::rlimit64)>,
    pub sigactions: Vec<(i32, KernelSigaction)>,
    pub name: [u8; 16],
}

impl ChildSetup {
    /// A process that only needs its place: a zombie to be, or a group
    /// helper.
    pub fn placeholder(role: Role, pid: i32, exit_signal: i32, children: Vec<usize>, setsid: bool) -> ChildSetup {
        ChildSetup {
            pid,
            exit_signal,
            children,
            role,
            setsid,
            sources: Vec::new(),
            targets: Vec::new(),
            ctty: None,
            reopen: Vec::new(),
            cwd: CString::new("/").expect("no NUL"),
            root: None,
            umask: 0o22,
            personality: 0,
            rlimits: Vec::new(),
            sigactions: Vec::new(),
            name: [0; 16],
        }
    }
}

impl TreeSetup {
    /// What a failed step was about, for the error message.
    pub fn describe(&self, r: &Report) -> String {
        let Some(s) = self.processes.get(r.process as usize) else {
            return format!("process #{} (unknown)", r.process);
        };
        let i = r.index as usize;
        let what = match r.step {
            Step::Setsid => "setsid".into(),
            Step::Fork => match s.children.get(i).and_then(|&c| self.processes.get(c)) {
                Some(c) => format!("forking its child {} (clone3 with set_tid)", c.pid),
                None => "forking a child".into(),
            },
            Step::StageFd | Step::PlaceFd => match s.targets.get(i) {
                Some((fd, _)) => format!("placing fd {fd}"),
                None => format!(
                    "passing ferry's helper file {} as fd {}",
                    i - s.targets.len(),
                    self.stage_base + i as RawFd
                ),
            },
            Step::ControllingTty => "making the terminal the controlling one (TIOCSCTTY)".into(),
            Step::ReopenTty => match s.reopen.get(i) {
                Some((fd, path, _)) => format!("opening {} as fd {fd}", path.to_string_lossy()),
                None => "opening the controlling terminal".into(),
            },
            Step::Chdir => format!("chdir {}", s.cwd.to_string_lossy()),
            Step::Chroot => format!("chroot {}", s.root.as_ref().map(|r| r.to_string_lossy()).unwrap_or_default()),
            Step::Personality => format!("personality({:#x})", s.personality),
            Step::Mount => self.container.as_ref().map(|c| c.describe(i)).unwrap_or_default(),
            Step::PivotRoot => "pivot_root into the container's root".into(),
            Step::Hostname => "setting the container's host and domain names".into(),
            Step::Rlimit => match s.rlimits.get(i) {
                Some((res, l)) => format!("setting rlimit {res} to {}/{}", l.rlim_cur, l.rlim_max),
                None => format!("raising the open-files limit to {}", self.nofile_hard),
            },
            Step::Sigaction => match s.sigactions.get(i) {
                Some((sig, _)) => format!("installing the handler of signal {sig}"),
                None => "installing a signal handler".into(),
            },
            step => format!("{step:?}"),
        };
        format!("task {}: {what}", s.pid)
    }
}

/// Report a failed step on `fd` and exit.
fn fail(fd: RawFd, process: usize, step: Step, index: usize) -> ! {
    let r = Report { process: process as u32, step, index: index as u32, errno: nix::errno::Errno::last_raw() };
    // SAFETY: raw write of a plain struct, then _exit; no allocation.
    unsafe {
        libc::write(fd, bytemuck::bytes_of(&r).as_ptr().cast(), Report::SIZE);
        libc::_exit(127);
    }
}

/// clone3 with one PID asked for (in the caller's PID namespace), raw:
/// 0 in the child, the PID in the parent, -errno on failure.
fn clone_at(pid: i32, exit_signal: i32) -> i64 {
    let set_tid = [pid];
    let args = CloneArgs {
        exit_signal: exit_signal as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: without CLONE_VM the child gets a copy of our memory and
    // continues here like after fork(); args and set_tid outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if r < 0 {
        -(nix::errno::Errno::last_raw() as i64)
    } else {
        r
    }
}

/// Runs in the tree's root, forked by ferry; never returns. Every other
/// process of the tree is forked from here, down the tree, and runs this
/// too from the start of its own setup.
pub fn run(t: &TreeSetup) -> ! {
    let rfd = t.report_fd;
    // SAFETY: every call below is a plain syscall on data prepared by ferry;
    // nothing allocates or takes a lock.
    unsafe {
        // Staged fd numbers may exceed ferry's soft open-files limit; the
        // hard one is checked by ferry. The dumped limits come later. Both
        // this and the signal mask are inherited by the whole tree.
        let nofile = libc::rlimit64 { rlim_cur: t.nofile_hard, rlim_max: t.nofile_hard };
        if libc::prlimit64(0, libc::RLIMIT_NOFILE, &nofile, std::ptr::null_mut()) != 0 {
            fail(rfd, 0, Step::Rlimit, usize::MAX);
        }
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        if libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) != 0 {
            fail(rfd, 0, Step::BlockSignals, 0);
        }
        if let Some(c) = &t.container {
            if let Err((step, i)) = super::container::enter(c) {
                fail(rfd, 0, step, i);
            }
        }
        let mut me = 0usize;
        // Who our parent must be: ferry for the root (0 when the root is a
        // new PID namespace's init: its parent is outside), then each
        // process for the children it forks.
        let mut parent = t.ferry_pid;
        'process: loop {
            let s = &t.processes[me];
            // Die with our parent (ferry, or the parent process of the
            // tree) until ferry has seized us (then PTRACE_O_EXITKILL).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                fail(rfd, me, Step::BlockSignals, 0);
            }
            // The parent may have died before we asked: then nobody would
            // kill us, and a failed restore would leave us behind.
            if libc::getppid() != parent {
                libc::_exit(126);
            }
            let myself = libc::getpid();
            if s.setsid && libc::setsid() < 0 {
                fail(rfd, me, Step::Setsid, 0);
            }
            for (k, &c) in s.children.iter().enumerate() {
                let child = &t.processes[c];
                match clone_at(child.pid, child.exit_signal) {
                    0 => {
                        me = c;
                        parent = myself;
                        continue 'process;
                    }
                    r if r < 0 => {
                        *libc::__errno_location() = (-r) as i32;
                        fail(rfd, me, Step::Fork, k);
                    }
                    _ => {}
                }
            }
            match s.role {
                Role::Process => setup(t, me),
                Role::Zombie => placeholder(t, me),
                Role::GroupHelper => {
                    if libc::setpgid(0, 0) != 0 {
                        fail(rfd, me, Step::Setpgid, 0);
                    }
                    placeholder(t, me)
                }
            }
        }
    }
}

/// A zombie to be or a group helper: default handlers (a zombie may have
/// to die of a signal ferry sends), no fds of ferry's, report, wait for
/// ferry.
unsafe fn placeholder(t: &TreeSetup, me: usize) -> ! {
    let rfd = t.report_fd;
    if t.processes[me].name[0] != 0 && libc::prctl(libc::PR_SET_NAME, t.processes[me].name.as_ptr()) != 0 {
        fail(rfd, me, Step::Name, 0);
    }
    for sig in 1..=64 {
        libc::signal(sig, libc::SIG_DFL);
    }
    let staged = t.stage_base;
    if libc::dup2(rfd, staged) < 0 {
        fail(rfd, me, Step::StageFd, 0);
    }
    if libc::syscall(libc::SYS_close_range, 0u32, (staged - 1) as u32, 0u32) != 0 {
        fail(staged, me, Step::CloseInherited, 0);
    }
    report_ok(staged, me)
}

unsafe fn report_ok(rfd: RawFd, me: usize) -> ! {
    let ok = Report { process: me as u32, step: Step::Ok, index: 0, errno: 0 };
    if libc::write(rfd, bytemuck::bytes_of(&ok).as_ptr().cast(), Report::SIZE) < 0 {
        fail(rfd, me, Step::Report, 0);
    }
    libc::close(rfd);
    loop {
        libc::pause();
    }
}

/// One live process's own setup, after its children are forked.
unsafe fn setup(t: &TreeSetup, me: usize) -> ! {
    let s = &t.processes[me];
    let report = t.report_fd;
    let rfd = t.stage_base + s.sources.len() as RawFd;
    // The report pipe goes first, so every later failure can be told.
    if libc::dup2(report, rfd) < 0 {
        fail(report, me, Step::StageFd, s.sources.len());
    }
    // Move every fd we keep above anything inherited.
    for (i, &src) in s.sources.iter().enumerate() {
        if libc::dup2(src, t.stage_base + i as RawFd) < 0 {
            fail(rfd, me, Step::StageFd, i);
        }
    }
    if libc::syscall(libc::SYS_close_range, 0u32, (t.stage_base - 1) as u32, 0u32) != 0 {
        fail(rfd, me, Step::CloseInherited, 0);
    }
    for (i, &(target, cloexec)) in s.targets.iter().enumerate() {
        let staged = t.stage_base + i as RawFd;
        if libc::dup3(staged, target, if cloexec { libc::O_CLOEXEC } else { 0 }) < 0 {
            fail(rfd, me, Step::PlaceFd, i);
        }
        libc::close(staged);
    }
    if let Some(i) = s.ctty {
        if libc::ioctl(s.targets[i].0, libc::TIOCSCTTY, 0) != 0 {
            fail(rfd, me, Step::ControllingTty, i);
        }
        for (k, (fd, path, flags)) in s.reopen.iter().enumerate() {
            let f = libc::open(path.as_ptr(), *flags);
            if f < 0 {
                fail(rfd, me, Step::ReopenTty, k);
            }
            if f != *fd {
                if libc::dup3(f, *fd, *flags & libc::O_CLOEXEC) < 0 {
                    fail(rfd, me, Step::ReopenTty, k);
                }
                libc::close(f);
            }
        }
    }
    if libc::chdir(s.cwd.as_ptr()) != 0 {
        fail(rfd, me, Step::Chdir, 0);
    }
    if let Some(root) = &s.root {
        if libc::chroot(root.as_ptr()) != 0 {
            fail(rfd, me, Step::Chroot, 0);
        }
    }
    libc::umask(s.umask as libc::mode_t);
    if libc::personality(s.personality as libc::c_ulong) < 0 {
        fail(rfd, me, Step::Personality, 0);
    }
    for (i, (res, lim)) in s.rlimits.iter().enumerate() {
        if libc::prlimit64(0, *res as _, lim, std::ptr::null_mut()) != 0 {
            fail(rfd, me, Step::Rlimit, i);
        }
    }
    for (i, (sig, act)) in s.sigactions.iter().enumerate() {
        if libc::syscall(libc::SYS_rt_sigaction, *sig, act as *const KernelSigaction, 0usize, 8usize) != 0 {
            fail(rfd, me, Step::Sigaction, i);
        }
    }
    if libc::prctl(libc::PR_SET_NAME, s.name.as_ptr()) != 0 {
        fail(rfd, me, Step::Name, 0);
    }
    report_ok(rfd, me)
}
