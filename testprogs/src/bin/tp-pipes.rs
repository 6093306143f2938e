//! Pipes between two processes, with bytes in flight in each:
//!
//! ```text
//! pipe A   parent writes, child reads (its end O_NONBLOCK); 128 KiB buffer;
//!          3000 bytes in flight
//! pipe B   only the parent's read end is left: 1000 bytes, then end of file
//! pipe C   only the child's write end is left: writing fails with EPIPE
//! FIFO     at PATH, opened read-write by the parent: 500 bytes in flight
//! ```
//!
//! On SIGUSR1 (to the parent) the parent checks B, the FIFO and A's size,
//! writes 100 more bytes into A and signals the child, which checks its
//! flags, reads exactly the 3100 bytes of A in order and finds C broken;
//! "ok" and exit 0 when both found everything.
//!
//! Usage: tp-pipes PATH
use ferry_testprogs::{check, fill_pattern, say};
use std::os::fd::RawFd;

const F_SETPIPE_SZ: i32 = 1031;
const F_GETPIPE_SZ: i32 = 1032;

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(&mut v, seed);
    v
}

fn write_all(fd: RawFd, data: &[u8]) {
    // SAFETY: write from a live buffer.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}

/// Read up to `len` bytes: (bytes, errno of the read that stopped it, 0 at EOF).
fn read_some(fd: RawFd, len: usize) -> (Vec<u8>, i32) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; len.max(1)];
    while out.len() < len {
        // SAFETY: read into a live buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len - out.len()) };
        if n <= 0 {
            return (out, if n == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) });
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    (out, -1)
}

fn main() {
    let path = ferry_testprogs::arg(1);
    // SAFETY: signal mask, pipes, fork, fcntl and reads of our own; the
    // child only uses async-signal-safe calls before it exits.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let (a_r, a_w) = pipe();
        let (b_r, b_w) = pipe();
        let (c_r, c_w) = pipe();
        check(libc::fcntl(a_w, F_SETPIPE_SZ, 128 << 10) >= 0, 2, "F_SETPIPE_SZ");
        let _ = std::fs::remove_file(&path);
        let cpath = std::ffi::CString::new(path.clone()).unwrap();
        check(libc::mkfifo(cpath.as_ptr(), 0o600) == 0, 3, "mkfifo");
        let child = libc::fork();
        if child == 0 {
            libc::close(a_w);
            libc::close(b_r);
            libc::close(b_w);
            libc::close(c_r);
            let fl = libc::fcntl(a_r, libc::F_GETFL);
            libc::fcntl(a_r, libc::F_SETFL, fl | libc::O_NONBLOCK);
            let mut sig = 0;
            while libc::sigwait(&set, &mut sig) != 0 {}
            let code = if libc::fcntl(a_r, libc::F_GETFL) & libc::O_NONBLOCK == 0 {
                20
            } else {
                let (got, err) = read_some(a_r, 3100);
                let mut want = pattern(3000, 1);
                want.extend(pattern(100, 4));
                if got != want {
                    21
                } else if read_some(a_r, 1).1 != libc::EAGAIN || err != -1 {
                    22
                } else if libc::write(c_w, b"x".as_ptr().cast(), 1) != -1
                    || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPIPE)
                {
                    23
                } else {
                    0
                }
            };
            libc::_exit(code);
        }
        libc::close(a_r);
        libc::close(c_r);
        libc::close(c_w);
        write_all(a_w, &pattern(3000, 1));
        write_all(b_w, &pattern(1000, 2));
        libc::close(b_w);
        let fifo = libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK);
        check(fifo >= 0, 4, "opening the FIFO");
        write_all(fifo, &pattern(500, 3));
        say(&format!("ready {child}"));
        let mut sig = 0;
        while libc::sigwait(&set, &mut sig) != 0 {}

        check(libc::fcntl(a_w, F_GETPIPE_SZ) == 128 << 10, 10, "pipe A lost its size");
        let (got, err) = read_some(b_r, 2000);
        check(got == pattern(1000, 2), 11, &format!("pipe B: {} bytes, not the 1000 written", got.len()));
        check(err == 0, 12, &format!("pipe B: no end of file after its data (errno {err})"));
        let (got, _) = read_some(fifo, 1000);
        check(got == pattern(500, 3), 13, &format!("FIFO: {} bytes, not the 500 written", got.len()));
        write_all(a_w, &pattern(100, 4));
        libc::kill(child, libc::SIGUSR1);
        let mut status = 0;
        check(libc::waitpid(child, &mut status, 0) == child, 14, "waitpid");
        check(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            15,
            &format!("the child found its pipes changed (status {status:#x})"),
        );
    }
    say("ok");
}
