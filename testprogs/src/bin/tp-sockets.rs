//! Unix socketpairs between two processes, with messages queued:
//!
//! ```text
//! stream S     parent's end: 3000 bytes from the child; child's end
//!              (O_NONBLOCK, SO_SNDBUF 96 KiB): 100 bytes from the parent
//! dgram D      parent's end: datagrams of 10, 0 and 500 bytes
//! seqpacket Q  child's end: 2 messages, then the parent shut its writing
//! stream L     parent's end: 50 bytes, then its peer was closed
//! ```
//!
//! On SIGUSR1 (to the parent) each process reads its ends and checks
//! every byte, every boundary, end of file where due, and that S still
//! connects them both ways; "ok" and exit 0 if both found all.
//!
//! Usage: tp-sockets
use ferry_testprogs::{check, fill_pattern, say};
use std::os::fd::RawFd;

fn pair(kind: i32) -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(&mut v, seed);
    v
}

fn send(fd: RawFd, data: &[u8]) {
    // SAFETY: send from a live buffer.
    assert_eq!(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) }, data.len() as isize);
}

/// One recv without waiting: Ok(bytes) (empty at end of file or for an
/// empty message), Err(errno).
fn recv(fd: RawFd) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; 8192];
    // SAFETY: recv into a live buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Read a stream until `len` bytes came.
fn recv_stream(fd: RawFd, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        match recv(fd) {
            Ok(b) if !b.is_empty() => out.extend(b),
            _ => break,
        }
    }
    out
}

fn sndbuf(fd: RawFd) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = 4;
    // SAFETY: an int option into a local.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn wait_usr1() {
    ferry_testprogs::wait_for_usr1();
}

fn main() {
    let (s_p, s_c) = pair(libc::SOCK_STREAM);
    let (d_p, d_c) = pair(libc::SOCK_DGRAM);
    let (q_p, q_c) = pair(libc::SOCK_SEQPACKET);
    let (l_p, l_c) = pair(libc::SOCK_STREAM);
    // SAFETY: signal masks, fork, close, fcntl, setsockopt, waitpid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let child = libc::fork();
        if child == 0 {
            libc::close(s_p);
            libc::close(d_p);
            libc::close(q_p);
            libc::close(l_p);
            libc::close(l_c);
            libc::close(d_c);
            libc::fcntl(s_c, libc::F_SETFL, libc::O_NONBLOCK);
            let big = 96 << 10;
            libc::setsockopt(s_c, libc::SOL_SOCKET, libc::SO_SNDBUF, (&big as *const i32).cast(), 4);
            let want_buf = sndbuf(s_c);
            send(s_c, &pattern(3000, 1));
            wait_usr1();
            let code = if libc::fcntl(s_c, libc::F_GETFL) & libc::O_NONBLOCK == 0 {
                30
            } else if sndbuf(s_c) != want_buf {
                31
            } else if recv_stream(s_c, 100) != pattern(100, 2) {
                32
            } else if recv(q_c) != Ok(pattern(64, 3)) || recv(q_c) != Ok(pattern(7, 4)) {
                33
            } else if recv(q_c) != Ok(Vec::new()) {
                // The parent shut its writing: end of file.
                34
            } else {
                // S still works both ways after restore.
                send(s_c, b"back");
                0
            };
            libc::_exit(code);
        }
        libc::close(s_c);
        libc::close(q_c);
        libc::close(l_c);
        send(s_p, &pattern(100, 2));
        send(q_p, &pattern(64, 3));
        send(q_p, &pattern(7, 4));
        libc::shutdown(q_p, libc::SHUT_WR);
        send(d_c, &pattern(10, 5));
        send(d_c, &[]);
        send(d_c, &pattern(500, 6));
        // l_p's peer is closed: write into it before closing.
        let (lp2, lc2) = pair(libc::SOCK_STREAM);
        send(lc2, &pattern(50, 7));
        libc::close(lc2);
        libc::close(l_p);
        libc::dup2(lp2, l_p);
        libc::close(lp2);
        // Wait until the child's 3000 bytes are in.
        while libc::recv(s_p, [0u8; 1].as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) < 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        say(&format!("ready {child}"));
        wait_usr1();

        check(recv_stream(s_p, 3000) == pattern(3000, 1), 10, "stream: the child's 3000 bytes");
        check(recv(d_p) == Ok(pattern(10, 5)), 11, "dgram 1");
        check(recv(d_p) == Ok(Vec::new()), 12, "dgram 2 (empty)");
        check(recv(d_p) == Ok(pattern(500, 6)), 13, "dgram 3");
        check(recv(d_p) == Err(libc::EAGAIN), 14, "a fourth datagram");
        check(recv_stream(l_p, 100) == pattern(50, 7), 15, "stream with a closed peer: its 50 bytes");
        check(recv(l_p) == Ok(Vec::new()), 16, "stream with a closed peer: no end of file");
        libc::kill(child, libc::SIGUSR1);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        check(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            17,
            &format!("the child found its sockets changed (status {status:#x})"),
        );
        check(recv_stream(s_p, 4) == b"back", 18, "stream: the child's answer after restore");
    }
    say("ok");
}
