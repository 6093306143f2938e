//! Shared harness for the end-to-end tests: real processes, real ferry
//! binary, real kernel. Tests run as root.
#![allow(dead_code)]

pub mod fuzz;
pub mod ns;
pub mod pki;
pub mod route;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// A test program from the ferry-testprogs crate. `cargo xtask test` builds
/// them; a plain `cargo test` needs `cargo build --release -p ferry-testprogs`.
pub fn testprog(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/test-binary → target/
    let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
    for profile in ["release", "debug"] {
        let p = target.join(profile).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not built: run `cargo xtask test`, or `cargo build --release -p ferry-testprogs` first");
}

static INIT: Once = Once::new();

/// Root check, and become a child subreaper: tasks restored with -d are
/// re-parented to us, so tests can wait for their exit status.
pub fn init() {
    INIT.call_once(|| {
        assert!(nix::unistd::geteuid().is_root(), "the end-to-end tests need root");
        // SAFETY: plain prctl.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    });
}

/// A scratch directory on tmpfs (fast images), removed at drop.
pub fn workdir() -> tempfile::TempDir {
    init();
    tempfile::Builder::new().prefix("ferry-test-").tempdir_in("/dev/shm").unwrap()
}

/// A started test target. Killed at drop if still around.
pub struct Target {
    pub pid: i32,
    child: Option<Child>,
    pub out: PathBuf,
}

/// How to wire a target's standard streams.
pub enum Stdin {
    Null,
    Tty(PathBuf),
    /// Whatever the command was given (a socket, a pipe).
    Given,
}

/// Start `cmd` as its own session leader, stdio on /dev/null and `out`,
/// with no inherited fds beyond those three.
pub fn spawn(cmd: &[&str], out: &Path) -> Target {
    spawn_with(cmd, out, Stdin::Null)
}

pub fn spawn_with(cmd: &[&str], out: &Path, stdin: Stdin) -> Target {
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..]);
    spawn_configured(c, out, stdin)
}

/// Like [`spawn`], for a command already set up (cwd, environment).
pub fn spawn_command(c: Command, out: &Path) -> Target {
    spawn_configured(c, out, Stdin::Null)
}

/// Like [`spawn_command`], keeping the stdin the command was given.
pub fn spawn_command_keep_stdin(c: Command, out: &Path) -> Target {
    spawn_configured(c, out, Stdin::Given)
}

fn spawn_configured(mut c: Command, out: &Path, stdin: Stdin) -> Target {
    init();
    let tty = match &stdin {
        Stdin::Null => {
            c.stdin(Stdio::null()).stdout(fs::File::create(out).unwrap()).stderr(Stdio::null());
            false
        }
        Stdin::Given => {
            c.stdout(fs::File::create(out).unwrap()).stderr(Stdio::null());
            false
        }
        Stdin::Tty(path) => {
            let t = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
            c.stdin(t.try_clone().unwrap()).stdout(t.try_clone().unwrap()).stderr(t);
            true
        }
    };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::setsid();
            if tty {
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = c.spawn().unwrap_or_else(|e| panic!("spawning {c:?}: {e}"));
    Target { pid: child.id() as i32, child: Some(child), out: out.to_path_buf() }
}

impl Target {
    /// Wait until the output file contains `what`.
    pub fn wait_output(&self, what: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = fs::read_to_string(&self.out).unwrap_or_default();
            if s.contains(what) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "task {} did not print {what:?} within {timeout:?}; output: {s:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Collect the original process after ferry killed it (frees its PID).
    pub fn reap_killed(&mut self) {
        let st = self.child.take().expect("already reaped").wait().unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "the dumped task should have been killed, got {st:?}");
    }

    /// Hand the reaping of the original process to someone else.
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("already taken")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2).
        assert_eq!(unsafe { libc::kill(self.pid, sig) }, 0, "kill({}, {sig})", self.pid);
    }

    /// Wait for the task to exit; works for the original (our child) and for
    /// a restored one (re-parented to us as subreaper).
    pub fn wait_exit(&mut self, timeout: Duration) -> WaitResult {
        if let Some(c) = self.child.as_mut() {
            let start = Instant::now();
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    self.child = None;
                    return WaitResult::from_status(st.into_raw());
                }
                assert!(start.elapsed() < timeout, "task {} still running after {timeout:?}", self.pid);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        wait_pid(self.pid, timeout)
    }

    pub fn status(&self) -> Option<ferry::proc::status::Status> {
        ferry::proc::ProcDir::new(self.pid).status().ok()
    }

    /// Alive, not a zombie, and not traced by anyone.
    pub fn assert_running_untraced(&self) {
        let st = self.status().unwrap_or_else(|| panic!("task {} is gone", self.pid));
        assert!(!matches!(st.state, 'Z' | 'X'), "task {} is a zombie", self.pid);
        assert_eq!(st.tracer_pid, 0, "task {} is still traced by {}", self.pid, st.tracer_pid);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // The whole tree: a failed test must not leave processes behind.
        for pid in tree_pids(self.pid).into_iter().skip(1) {
            // SAFETY: plain kill(2) of a process of the test's tree.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: plain kill(2); the PID is ours (child or re-parented).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        } else {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(self.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum WaitResult {
    Exited(i32),
    Signaled(i32),
}

impl WaitResult {
    fn from_status(st: i32) -> WaitResult {
        if libc::WIFEXITED(st) {
            WaitResult::Exited(libc::WEXITSTATUS(st))
        } else {
            WaitResult::Signaled(libc::WTERMSIG(st))
        }
    }
}

/// waitpid with a timeout, for a child or a re-parented task.
pub fn wait_pid(pid: i32, timeout: Duration) -> WaitResult {
    let start = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: plain waitpid.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            return WaitResult::from_status(st);
        }
        assert!(r == 0, "waitpid({pid}): {}", std::io::Error::last_os_error());
        assert!(start.elapsed() < timeout, "task {pid} still running after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run ferry with arguments; returns its output.
pub fn run_ferry(args: &[&str]) -> Output {
    Command::new(ferry()).args(args).stdin(Stdio::null()).output().unwrap()
}

/// Run ferry and require success.
pub fn ferry_ok(args: &[&str]) -> Output {
    let out = run_ferry(args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run ferry and require failure; returns stderr.
pub fn ferry_err(args: &[&str]) -> String {
    let out = run_ferry(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "ferry {args:?} should fail with status 1; stderr: {err}");
    err
}

pub fn dump(pid: i32, dir: &Path, extra: &[&str]) -> Output {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ferry_ok(&args)
}

/// What `ferry show DIR` prints.
pub fn show_image(dir: &str) -> String {
    String::from_utf8_lossy(&ferry_ok(&["show", dir]).stdout).into_owned()
}

/// Restore detached: ferry exits once the task runs.
pub fn restore_detached(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["restore", "-d", "-D", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ferry_ok(&args)
}

/// Dump (killing the task), reap the original, restore detached; checks the
/// PID is back and running.
pub fn dump_and_restore(t: &mut Target, dir: &Path, extra: &[&str]) {
    dump(t.pid, dir, extra);
    t.reap_killed();
    restore_detached(dir, extra);
    let st = t.status().expect("restored task exists");
    assert!(!matches!(st.state, 'Z' | 'X'), "restored task {} is not running", t.pid);
}

/// For the self-checking test programs: dump and restore the ready task,
/// send SIGUSR1, and require it to print "ok" last and exit 0.
/// Reap the dumped task, restore it detached, wake it with SIGUSR1 and
/// wait for it to exit 0; returns its output.
pub fn restore_and_wake(t: &mut Target, img: &Path) -> String {
    t.reap_killed();
    restore_detached(img, &[]);
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(Duration::from_secs(30)), WaitResult::Exited(0), "output: {}", t.output());
    t.output()
}

pub fn restore_and_self_check(t: &mut Target, img: &Path, extra: &[&str]) {
    dump_and_restore(t, img, extra);
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(Duration::from_secs(30)), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
}

/// Spawn ferry with a test hold at `stage`; returns once it announced it.
pub fn ferry_held_at(args: &[&str], stage: &str) -> Child {
    let mut c = Command::new(ferry())
        .args(args)
        .env("FERRY_TEST_HOLD_AT", stage)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            panic!("ferry {args:?} ended before reaching stage {stage}: {rest}");
        }
        let name = stage.split([':', '#']).next().unwrap();
        if line.contains(&format!("test hold at {name}")) {
            break;
        }
    }
    // Keep draining stderr so ferry never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    c
}

pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Wait for `pids` (processes of a dumped tree, re-parented to the tests
/// as subreaper once their parent died) to be gone, reaping them.
pub fn reap_all(pids: &[i32], timeout: Duration) {
    let start = Instant::now();
    for &pid in pids {
        loop {
            // SAFETY: plain waitpid; ECHILD once it is not ours (or gone).
            let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
            if r == pid || !pid_exists(pid) {
                break;
            }
            if start.elapsed() > timeout {
                let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let line = |k: &str| st.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
                panic!(
                    "process {pid} of the dumped tree is still there: {} {} {}",
                    line("Name"),
                    line("State"),
                    line("PPid")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// State letter, process group and session of a process (/proc/PID/stat).
pub fn proc_ids(pid: i32) -> (char, i32, i32) {
    let s = ferry::proc::ProcDir::new(pid).stat().unwrap_or_else(|e| panic!("process {pid}: {e:#}"));
    (s.state, s.pgrp, s.session)
}

/// Every process of a tree, the root first (from /proc).
pub fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = ferry::proc::ProcDir::new(out[i]);
        out.extend(p.all_children().unwrap_or_default());
        i += 1;
    }
    out
}
