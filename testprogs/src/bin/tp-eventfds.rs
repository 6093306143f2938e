//! Event fds with state: an eventfd at 7, a semaphore eventfd at 3 (both
//! O_NONBLOCK), a timerfd due in 30 s repeating every 10 s, a one-shot
//! timerfd that already fired once and was not read, a disarmed timerfd,
//! and a signalfd for SIGUSR2 with a SIGUSR2 pending. On SIGUSR1 it reads
//! each back and checks it; "ok" and exit 0 if all kept their state.
//!
//! Usage: tp-eventfds
use ferry_testprogs::{check, say};
use std::os::fd::RawFd;

fn read_u64(fd: RawFd) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: read of 8 bytes into a local.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    (n == 8).then_some(v)
}

fn gettime(fd: RawFd) -> libc::itimerspec {
    // SAFETY: timerfd_gettime fills a local.
    unsafe {
        let mut t: libc::itimerspec = std::mem::zeroed();
        libc::timerfd_gettime(fd, &mut t);
        t
    }
}

fn settime(fd: RawFd, value_ms: i64, interval_ms: i64) {
    let ts = |ms: i64| libc::timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 };
    let spec = libc::itimerspec { it_interval: ts(interval_ms), it_value: ts(value_ms) };
    // SAFETY: a local itimerspec.
    assert_eq!(unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) }, 0);
}

fn main() {
    // SAFETY: plain fd-creating calls and signal masks of our own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());

        let counter = libc::eventfd(7, libc::EFD_NONBLOCK);
        let sem = libc::eventfd(3, libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE);
        let long = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK);
        settime(long, 30_000, 10_000);
        let fired = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK);
        settime(fired, 1, 0);
        let idle = libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK);
        let mut usr2: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut usr2);
        libc::sigaddset(&mut usr2, libc::SIGUSR2);
        let sigfd = libc::signalfd(-1, &usr2, libc::SFD_NONBLOCK);
        check(counter >= 0 && sem >= 0 && long >= 0 && fired >= 0 && idle >= 0 && sigfd >= 0, 2, "creating fds");
        libc::kill(libc::getpid(), libc::SIGUSR2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        say("ready");
        let mut usr1: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut usr1);
        libc::sigaddset(&mut usr1, libc::SIGUSR1);
        let mut sig = 0;
        while libc::sigwait(&usr1, &mut sig) != 0 {}

        check(read_u64(counter) == Some(7), 10, "eventfd counter lost");
        check(read_u64(counter).is_none(), 11, "eventfd not reset by the read, or blocking");
        for n in 0..3 {
            check(read_u64(sem) == Some(1), 12, &format!("semaphore eventfd: read {n} did not give 1"));
        }
        check(read_u64(sem).is_none(), 13, "semaphore eventfd: more than 3");
        let t = gettime(long);
        check(t.it_interval.tv_sec == 10 && t.it_interval.tv_nsec == 0, 14, "timerfd interval changed");
        check(t.it_value.tv_sec > 0 && t.it_value.tv_sec < 30, 15, &format!("timerfd left {} s", t.it_value.tv_sec));
        check(read_u64(long).is_none(), 16, "the 30 s timer fired");
        check(read_u64(fired) == Some(1), 17, "the unread expiration was lost");
        let t = gettime(fired);
        check(t.it_value.tv_sec == 0 && t.it_value.tv_nsec == 0, 18, "the one-shot timer is armed again");
        let t = gettime(idle);
        check(t.it_value.tv_sec == 0 && t.it_value.tv_nsec == 0, 19, "the idle timer is armed");
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let n = libc::read(sigfd, (&mut info as *mut libc::signalfd_siginfo).cast(), std::mem::size_of_val(&info));
        check(n > 0 && info.ssi_signo == libc::SIGUSR2 as u32, 20, "signalfd did not read the pending SIGUSR2");
        check(info.ssi_pid == libc::getpid() as u32, 21, "SIGUSR2 lost its sender");
        let flags = libc::fcntl(sigfd, libc::F_GETFL);
        check(flags & libc::O_NONBLOCK != 0, 22, "signalfd lost O_NONBLOCK");
    }
    say("ok");
}
