//! A process tree with every relation restore must rebuild:
//!
//! ```text
//! root            session and group leader, child subreaper; holds FILE
//!                 open (offset, O_NONBLOCK, owner, SIGIO signal),
//!                 dup'ed to fd 20 (inherited by all) and fd 21 (close-on-exec)
//! ├─ group        leads its own process group
//! │  └─ member    in that group (a grandchild of the root)
//! ├─ stopped      the test stops it before the dump; it must come back stopped
//! ├─ session      leads a new session
//! │  └─ inner     in that session
//! ├─ orphan       in a group whose leader has exited (reparented to root)
//! ├─ deathsig     with PR_SET_PDEATHSIG = SIGUSR2
//! └─ zombie       exited with status 42, not reaped
//! ```
//!
//! Every process remembers its PID, parent, group and session. On SIGUSR1
//! (sent to the root after the restore) the root checks itself and the
//! file, reaps the zombie (which must be one already), signals every other
//! process, each checks itself and appends "NAME ok" through fd 20 (the
//! shared offset keeps the lines apart), and the root waits for all of
//! them, checks the file's lines and prints "ok".
//!
//! Usage: tp-tree FILE
use ferry_testprogs::{check, say};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;

/// How many children are ready, in memory shared across fork.
fn shared_counter() -> &'static AtomicU32 {
    // SAFETY: a shared anonymous page, never unmapped, used as one atomic.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*(p as *const AtomicU32)
    }
}

struct Me {
    name: &'static str,
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

impl Me {
    fn now(name: &'static str) -> Me {
        // SAFETY: plain id queries.
        unsafe { Me { name, pid: libc::getpid(), ppid: libc::getppid(), pgid: libc::getpgrp(), sid: libc::getsid(0) } }
    }

    /// Still the same process in the same place; say so through fd 20.
    fn verify(&self, code: i32) {
        let now = Me::now(self.name);
        let n = self.name;
        check(now.pid == self.pid, code, &format!("{n}: pid {} became {}", self.pid, now.pid));
        // The root's parent is whoever restored it (as with CRIU); the
        // orphan's changed when its first parent exited.
        if n != "root" && n != "orphan" {
            check(now.ppid == self.ppid, code + 1, &format!("{n}: parent {} became {}", self.ppid, now.ppid));
        }
        check(now.pgid == self.pgid, code + 2, &format!("{n}: group {} became {}", self.pgid, now.pgid));
        check(now.sid == self.sid, code + 3, &format!("{n}: session {} became {}", self.sid, now.sid));
        let line = format!("{n} ok\n");
        // SAFETY: write to the inherited fd 20.
        let w = unsafe { libc::write(20, line.as_ptr().cast(), line.len()) };
        check(w == line.len() as isize, code + 4, &format!("{n}: write to fd 20 failed"));
    }
}

fn wait_usr1() {
    let mut sig = 0;
    // SAFETY: sigwait on a local set (SIGUSR1 is blocked in every process).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        while libc::sigwait(&set, &mut sig) != 0 || sig != libc::SIGUSR1 {}
    }
}

/// Fork; the child runs `f` and exits with what it returns.
fn spawn(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork in a single-threaded program; the child only runs `f`.
    match unsafe { libc::fork() } {
        0 => {
            let code = f();
            // SAFETY: leave without running the parent's atexit handlers twice.
            unsafe { libc::_exit(code) }
        }
        pid => pid,
    }
}

fn wait_exit(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: plain waitpid.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    check(r == pid, 90, &format!("waitpid({pid}) failed"));
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    }
}

/// A child that checks itself on SIGUSR1 and exits 0.
fn simple(name: &'static str, ready: &'static AtomicU32, code: i32) -> i32 {
    let me = Me::now(name);
    ready.fetch_add(1, Ordering::SeqCst);
    wait_usr1();
    me.verify(code);
    0
}

fn main() {
    let path = ferry_testprogs::arg(1);
    let ready = shared_counter();
    // SAFETY: process-wide settings and fd juggling before any fork.
    let file = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let fd = file.as_raw_fd();
        libc::write(fd, b"root\n".as_ptr().cast(), 5);
        // (O_ASYNC needs a file that can signal: pipes, sockets, terminals.)
        libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
        libc::fcntl(fd, libc::F_SETOWN, libc::getpid());
        libc::fcntl(fd, F_SETSIG, libc::SIGRTMIN() + 3);
        libc::dup2(fd, 20);
        libc::dup3(fd, 21, libc::O_CLOEXEC);
        file
    };
    let root = Me::now("root");

    let group = spawn(|| {
        // SAFETY: plain setpgid.
        unsafe { libc::setpgid(0, 0) };
        let member = spawn(|| simple("member", ready, 10));
        let code = simple("group", ready, 15);
        if wait_exit(member) != 0 {
            return 19;
        }
        code
    });
    let stopped = spawn(|| simple("stopped", ready, 20));
    let session = spawn(|| {
        // SAFETY: plain setsid.
        unsafe { libc::setsid() };
        let inner = spawn(|| simple("inner", ready, 25));
        let code = simple("session", ready, 30);
        if wait_exit(inner) != 0 {
            return 29;
        }
        code
    });
    // A group leader that exits: its member lives on, reparented to the root.
    let leader = spawn(|| {
        // SAFETY: plain setpgid.
        unsafe { libc::setpgid(0, 0) };
        spawn(|| simple("orphan", ready, 35));
        0
    });
    check(wait_exit(leader) == 0, 91, "the orphan's group leader failed");
    let deathsig = spawn(|| {
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR2) };
        let me = Me::now("deathsig");
        ready.fetch_add(1, Ordering::SeqCst);
        wait_usr1();
        let mut sig = 0;
        // SAFETY: PR_GET_PDEATHSIG into a local.
        unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut i32) };
        check(sig == libc::SIGUSR2, 40, &format!("deathsig: PR_GET_PDEATHSIG is {sig}"));
        me.verify(41);
        0
    });
    let zombie = spawn(|| 42);
    while ready.load(Ordering::SeqCst) < 7 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // The zombie has surely exited once it is one: wait for that, unreaped.
    loop {
        let st = std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap_or_default();
        if st.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // The orphan is the root's child now; find it.
    let kids: Vec<i32> = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", root.pid))
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let known = [group, stopped, session, deathsig, zombie];
    let orphan = *kids.iter().find(|k| !known.contains(k)).expect("the orphan is reparented to the root");
    say(&format!(
        "ready group={group} stopped={stopped} session={session} orphan={orphan} deathsig={deathsig} zombie={zombie}"
    ));

    wait_usr1();
    root.verify(50);
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl and lseek on our own fds.
    unsafe {
        let mut sub = 0;
        libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut sub as *mut i32);
        check(sub == 1, 55, "root: no longer a child subreaper");
        let fl = libc::fcntl(fd, libc::F_GETFL);
        check(fl & libc::O_NONBLOCK != 0, 56, "root: file flags lost");
        check(libc::fcntl(fd, libc::F_GETOWN) == root.pid, 57, "root: file owner lost");
        check(libc::fcntl(fd, F_GETSIG) == libc::SIGRTMIN() + 3, 58, "root: file signal lost");
        check(libc::fcntl(20, libc::F_GETFD) == 0, 59, "root: fd 20 became close-on-exec");
        check(libc::fcntl(21, libc::F_GETFD) == libc::FD_CLOEXEC, 60, "root: fd 21 lost close-on-exec");
        // One offset for FILE, fd 20 and fd 21 (root wrote 5 bytes, then "root ok\n").
        let at = libc::lseek(21, 0, libc::SEEK_CUR);
        check(at == 13 && libc::lseek(fd, 0, libc::SEEK_CUR) == at, 61, &format!("root: offset {at}, not shared"));
        let mut st = 0;
        check(libc::waitpid(zombie, &mut st, libc::WNOHANG) == zombie, 62, "root: the zombie was not one");
        check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 42, 63, &format!("root: zombie status {st:#x}"));
        for pid in [group, stopped, session, orphan, deathsig] {
            libc::kill(pid, libc::SIGUSR1);
        }
    }
    // The grandchildren: children of group and session.
    for parent in [group, session] {
        let text = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
        for c in text.split_whitespace().filter_map(|s| s.parse::<i32>().ok()) {
            // SAFETY: plain kill.
            unsafe { libc::kill(c, libc::SIGUSR1) };
        }
    }
    for (name, pid) in
        [("group", group), ("stopped", stopped), ("session", session), ("orphan", orphan), ("deathsig", deathsig)]
    {
        let code = wait_exit(pid);
        check(code == 0, 70, &format!("{name} ({pid}) exited with {code}"));
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let mut want = vec![
        "root",
        "root ok",
        "group ok",
        "member ok",
        "stopped ok",
        "session ok",
        "inner ok",
        "orphan ok",
        "deathsig ok",
    ];
    want.sort_unstable();
    check(lines == want, 71, &format!("file lines {lines:?}"));
    say("ok");
}
