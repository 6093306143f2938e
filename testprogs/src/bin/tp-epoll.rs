//! An event loop's epoll: a pipe with data (level-triggered), an eventfd
//! at 1 (edge-triggered), a timerfd due in an hour, and an inner epoll
//! that watches a second eventfd at 5, each with its own data. On SIGUSR1
//! it checks that exactly the pipe, the eventfd and the inner epoll are
//! ready with their data, that the watches answer to their fd numbers
//! (EPOLL_CTL_MOD and DEL succeed, ADD of a watched fd says EEXIST), and
//! the inner epoll's own readiness. "ok" and exit 0 if all hold.
//!
//! Usage: tp-epoll
use ferry_testprogs::{check, say};

fn ctl(ep: i32, op: i32, fd: i32, events: u32, data: u64) -> i32 {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a local epoll_event.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn ready(ep: i32) -> Vec<u64> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: epoll_wait into a local array, no waiting.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 0) };
    let mut v: Vec<u64> = evs[..n.max(0) as usize].iter().map(|e| e.u64).collect();
    v.sort();
    v
}

fn main() {
    let in_ = libc::EPOLLIN as u32;
    // SAFETY: fd-creating calls and signal masks of our own.
    unsafe {
        let mut fds = [0; 2];
        check(libc::pipe(fds.as_mut_ptr()) == 0, 2, "pipe");
        let (r, w) = (fds[0], fds[1]);
        libc::write(w, b"data".as_ptr().cast(), 4);
        let efd = libc::eventfd(1, libc::EFD_NONBLOCK);
        let tfd = libc::timerfd_create(libc::CLOCK_MONOTONIC, 0);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: 3600, tv_nsec: 0 },
        };
        libc::timerfd_settime(tfd, 0, &spec, std::ptr::null_mut());
        let inner = libc::epoll_create1(0);
        let efd2 = libc::eventfd(5, 0);
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        check(efd >= 0 && tfd >= 0 && inner >= 0 && efd2 >= 0 && ep >= 0, 3, "creating fds");
        check(ctl(inner, libc::EPOLL_CTL_ADD, efd2, in_, 0x5555) == 0, 4, "inner add");
        check(ctl(ep, libc::EPOLL_CTL_ADD, r, in_, 0x1111) == 0, 4, "add pipe");
        check(ctl(ep, libc::EPOLL_CTL_ADD, efd, in_ | libc::EPOLLET as u32, 0x2222) == 0, 4, "add eventfd");
        check(ctl(ep, libc::EPOLL_CTL_ADD, tfd, in_, 0x3333) == 0, 4, "add timerfd");
        check(ctl(ep, libc::EPOLL_CTL_ADD, inner, in_, 0x4444) == 0, 4, "add inner epoll");
        say("ready");
        ferry_testprogs::wait_for_usr1();

        let got = ready(ep);
        check(got == [0x1111, 0x2222, 0x4444], 10, &format!("ready: {got:x?}"));
        check(ready(inner) == [0x5555], 11, "the inner epoll lost its watch");
        check(ctl(ep, libc::EPOLL_CTL_ADD, r, in_, 0) == libc::EEXIST, 12, "the pipe is not watched under its number");
        check(ctl(ep, libc::EPOLL_CTL_MOD, r, in_, 0x6666) == 0, 13, "EPOLL_CTL_MOD by number");
        check(ctl(ep, libc::EPOLL_CTL_DEL, efd, 0, 0) == 0, 14, "EPOLL_CTL_DEL by number");
        check(ctl(ep, libc::EPOLL_CTL_DEL, tfd, 0, 0) == 0, 15, "EPOLL_CTL_DEL of the timer");
        let got = ready(ep);
        check(got == [0x4444, 0x6666], 16, &format!("after MOD and DEL: {got:x?}"));
    }
    say("ok");
}
