//! Blocks in one kind of wait until SIGUSR1 arrives: `pause`, `futex`
//! (FUTEX_WAIT without timeout: the kernel restarts it), `futex-timeout`
//! (with a timeout: a restart-block syscall). The SIGUSR1 handler sets the
//! futex word; the program exits 0 once it sees it, 4 if the wait failed.
use ferry_testprogs::{check, say};
use std::sync::atomic::{AtomicU32, Ordering};

static WORD: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_: i32) {
    WORD.store(1, Ordering::SeqCst);
}

fn futex_wait(timeout: Option<libc::timespec>) -> i32 {
    let ts = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a static word with a valid (or null) timeout.
    let r = unsafe { libc::syscall(libc::SYS_futex, WORD.as_ptr(), libc::FUTEX_WAIT, 0u32, ts) };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}

fn main() {
    let mode = ferry_testprogs::arg(1);
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
    say("ready");
    let mut wakeups = 0;
    while WORD.load(Ordering::SeqCst) == 0 {
        let err = match mode.as_str() {
            // SAFETY: plain pause(2).
            "pause" => unsafe {
                libc::pause();
                libc::EINTR
            },
            "futex" => futex_wait(None),
            "futex-timeout" => futex_wait(Some(libc::timespec { tv_sec: 60, tv_nsec: 0 })),
            other => panic!("unknown mode {other}"),
        };
        check(matches!(err, 0 | libc::EINTR | libc::EAGAIN), 4, &format!("wait failed with errno {err}"));
        wakeups += 1;
    }
    say(&format!("ok after {wakeups} wakeups"));
}
