//! What the freshly forked child does by itself before ferry takes over:
//! session, file descriptors at their numbers, cwd/root, umask,
//! personality, rlimits, signal handlers, name. Then it waits to be
//! interrupted.
//!
//! The child is a copy of ferry, made by clone3 from a process that may have
//! had other threads: it must not allocate, lock or print. Everything it
//! needs is prepared in [`ChildSetup`] beforehand and it only makes raw
//! syscalls; failures are reported as (step, errno) on a pipe.

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
}

/// The child's report on the pipe: the step, its detail index and errno.
#[derive(Clone, Copy, Debug, bytemuck::NoUninit, bytemuck::CheckedBitPattern)]
#[repr(C)]
pub struct Report {
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

/// Everything the child needs, computed by the parent.
pub struct ChildSetup {
    pub report_fd: RawFd,
    pub setsid: bool,
    /// Parent fds the child ends up with, in order: dumped fds first
    /// (`targets` gives their numbers), then helpers (mapped files, exe)
    /// that stay at `stage_base + index` until ferry closes them.
    pub sources: Vec<RawFd>,
    pub targets: Vec<(RawFd, bool)>,
    /// First fd number above every source, every target and the report pipe.
    pub stage_base: RawFd,
    /// Index into `targets` of the terminal to make controlling.
    pub ctty: Option<usize>,
    pub cwd: CString,
    pub root: Option<CString>,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<(u32, libc::rlimit64)>,
    /// ferry's hard RLIMIT_NOFILE, which the child raises its soft one to.
    pub nofile_hard: u64,
    pub sigactions: Vec<(i32, KernelSigaction)>,
    pub name: [u8; 16],
}

impl ChildSetup {
    /// Where helper `i` (0-based, after the dumped fds) sits in the child.
    pub fn helper_fd(&self, i: usize) -> RawFd {
        self.stage_base + (self.targets.len() + i) as RawFd
    }

    /// What a failed step was about, for the error message.
    pub fn describe(&self, r: &Report) -> String {
        let i = r.index as usize;
        match r.step {
            Step::Setsid => "setsid".into(),
            Step::StageFd | Step::PlaceFd => match self.targets.get(i) {
                Some((fd, _)) => format!("placing fd {fd}"),
                None => format!(
                    "passing ferry's helper file {} as fd {}",
                    i - self.targets.len(),
                    self.stage_base + i as RawFd
                ),
            },
            Step::ControllingTty => "making the terminal the controlling one (TIOCSCTTY)".into(),
            Step::Chdir => format!("chdir {}", self.cwd.to_string_lossy()),
            Step::Chroot => format!("chroot {}", self.root.as_ref().map(|r| r.to_string_lossy()).unwrap_or_default()),
            Step::Personality => format!("personality({:#x})", self.personality),
            Step::Rlimit => match self.rlimits.get(i) {
                Some((res, l)) => format!("setting rlimit {res} to {}/{}", l.rlim_cur, l.rlim_max),
                None => format!("raising the open-files limit to {}", self.nofile_hard),
            },
            Step::Sigaction => match self.sigactions.get(i) {
                Some((sig, _)) => format!("installing the handler of signal {sig}"),
                None => "installing a signal handler".into(),
            },
            s => format!("{s:?}"),
        }
    }
}

/// Report a failed step on `fd` and exit.
fn fail(fd: RawFd, step: Step, index: usize) -> ! {
    let r = Report { step, index: index as u32, errno: nix::errno::Errno::last_raw() };
    // SAFETY: raw write of a plain struct, then _exit; no allocation.
    unsafe {
        libc::write(fd, bytemuck::bytes_of(&r).as_ptr().cast(), Report::SIZE);
        libc::_exit(127);
    }
}

/// Runs in the child; never returns.
pub fn run(s: &ChildSetup) -> ! {
    let rfd = s.report_fd_staged();
    // SAFETY: every call below is a plain syscall on data prepared by the
    // parent; nothing allocates or takes a lock.
    unsafe {
        // The report pipe goes first, so every later failure can be told.
        if libc::dup2(s.report_fd, rfd) < 0 {
            fail(s.report_fd, Step::StageFd, s.sources.len());
        }
        // Die with ferry until it has seized us (then PTRACE_O_EXITKILL takes over).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(rfd, Step::BlockSignals, 0);
        }
        // Staged fd numbers may exceed ferry's soft open-files limit; the
        // hard one is checked by the parent. The dumped limits come later.
        let nofile = libc::rlimit64 { rlim_cur: s.nofile_hard, rlim_max: s.nofile_hard };
        if libc::prlimit64(0, libc::RLIMIT_NOFILE, &nofile, std::ptr::null_mut()) != 0 {
            fail(rfd, Step::Rlimit, usize::MAX);
        }
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        if libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) != 0 {
            fail(rfd, Step::BlockSignals, 0);
        }
        // Move every fd we keep above anything inherited.
        for (i, &src) in s.sources.iter().enumerate() {
            if libc::dup2(src, s.stage_base + i as RawFd) < 0 {
                fail(rfd, Step::StageFd, i);
            }
        }
        if libc::syscall(libc::SYS_close_range, 0u32, (s.stage_base - 1) as u32, 0u32) != 0 {
            fail(rfd, Step::CloseInherited, 0);
        }
        if s.setsid && libc::setsid() < 0 {
            fail(rfd, Step::Setsid, 0);
        }
        for (i, &(target, cloexec)) in s.targets.iter().enumerate() {
            let staged = s.stage_base + i as RawFd;
            if libc::dup3(staged, target, if cloexec { libc::O_CLOEXEC } else { 0 }) < 0 {
                fail(rfd, Step::PlaceFd, i);
            }
            libc::close(staged);
        }
        if let Some(i) = s.ctty {
            if libc::ioctl(s.targets[i].0, libc::TIOCSCTTY, 0) != 0 {
                fail(rfd, Step::ControllingTty, i);
            }
        }
        if libc::chdir(s.cwd.as_ptr()) != 0 {
            fail(rfd, Step::Chdir, 0);
        }
        if let Some(root) = &s.root {
            if libc::chroot(root.as_ptr()) != 0 {
                fail(rfd, Step::Chroot, 0);
            }
        }
        libc::umask(s.umask as libc::mode_t);
        if libc::personality(s.personality as libc::c_ulong) < 0 {
            fail(rfd, Step::Personality, 0);
        }
        for (i, (res, lim)) in s.rlimits.iter().enumerate() {
            if libc::prlimit64(0, *res as _, lim, std::ptr::null_mut()) != 0 {
                fail(rfd, Step::Rlimit, i);
            }
        }
        for (i, (sig, act)) in s.sigactions.iter().enumerate() {
            if libc::syscall(libc::SYS_rt_sigaction, *sig, act as *const KernelSigaction, 0usize, 8usize) != 0 {
                fail(rfd, Step::Sigaction, i);
            }
        }
        if libc::prctl(libc::PR_SET_NAME, s.name.as_ptr()) != 0 {
            fail(rfd, Step::Name, 0);
        }
        let ok = Report { step: Step::Ok, index: 0, errno: 0 };
        if libc::write(rfd, bytemuck::bytes_of(&ok).as_ptr().cast(), Report::SIZE) < 0 {
            fail(rfd, Step::Report, 0);
        }
        libc::close(rfd);
        loop {
            libc::pause();
        }
    }
}

impl ChildSetup {
    fn report_fd_staged(&self) -> RawFd {
        self.stage_base + self.sources.len() as RawFd
    }
}
