//! Installs a seccomp filter on both its threads (TSYNC) that makes
//! getppid(2) fail with EMLINK, says "ready", and after SIGUSR1 checks
//! that the filter still holds in each thread (getppid fails so, and
//! /proc says mode 2 with one filter): a restore that dropped or changed
//! the filter lets getppid succeed.

use ferry_testprogs::{check, say, wait_for_usr1};
use std::sync::mpsc;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf, k }
}

/// What this thread sees: getppid's errno under the filter, and /proc's
/// seccomp lines.
fn look() -> (i32, String) {
    // The raw call: glibc's getppid() cannot fail, so it sets no errno.
    // SAFETY: plain getppid.
    let r = unsafe { libc::syscall(libc::SYS_getppid) };
    let errno = if r == -1 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let lines: Vec<&str> = status.lines().filter(|l| l.starts_with("Seccomp")).collect();
    (errno, lines.join(" "))
}

fn main() {
    let (ask_tx, ask_rx) = mpsc::channel::<()>();
    let (tell_tx, tell_rx) = mpsc::channel::<(i32, String)>();
    let other = std::thread::spawn(move || {
        while ask_rx.recv().is_ok() {
            tell_tx.send(look()).unwrap();
        }
    });
    // Offsets into struct seccomp_data: nr is its first field.
    let prog = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(libc::SYS_getppid as u32, 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ERRNO | libc::EMLINK as u32),
        stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: seccomp reads the program we pass (root: no no_new_privs needed).
    let r = unsafe {
        libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog as *const _)
    };
    check(r == 0, 2, &format!("seccomp: {}", std::io::Error::last_os_error()));
    let want = (libc::EMLINK, "Seccomp:\t2 Seccomp_filters:\t1".to_string());
    check(look() == want, 3, &format!("before: main thread sees {:?}", look()));
    say("ready");
    wait_for_usr1();
    let mine = look();
    check(mine == want, 4, &format!("after the restore the main thread sees {mine:?}"));
    ask_tx.send(()).unwrap();
    let theirs = tell_rx.recv().unwrap();
    check(theirs == want, 5, &format!("after the restore the other thread sees {theirs:?}"));
    drop(ask_tx);
    other.join().unwrap();
    say("ok");
}
