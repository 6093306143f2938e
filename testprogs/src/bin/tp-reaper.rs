//! Runs CMD in a session of its own as a child subreaper and reaps every
//! process that ends up its child (a dumped tree's processes, once their
//! parents are gone), until none is left; exits with CMD's status. The QEMU
//! guests use it: their init does not reap what it did not start.
//!
//! Usage: tp-reaper CMD [ARGS...]
use std::ffi::CString;

fn main() {
    let args: Vec<CString> = std::env::args().skip(1).map(|a| CString::new(a).unwrap()).collect();
    assert!(!args.is_empty(), "usage: tp-reaper CMD [ARGS...]");
    // SAFETY: prctl, fork, setsid and execvp with valid C strings; waitpid loop.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        let child = libc::fork();
        if child == 0 {
            libc::setsid();
            let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            libc::execvp(argv[0], argv.as_ptr());
            libc::_exit(127);
        }
        let mut code = 0;
        loop {
            let mut st = 0;
            let r = libc::waitpid(-1, &mut st, libc::__WALL);
            if r < 0 {
                break;
            }
            if r == child {
                code = if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { 128 + libc::WTERMSIG(st) };
            }
        }
        std::process::exit(code);
    }
}
