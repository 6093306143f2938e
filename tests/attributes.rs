//! Per-process attributes: credentials, cwd, umask, rlimits, personality,
//! name, session and process group — set by a Python task, checked by it
//! after restore.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

const SCRIPT: &str = r#"
import ctypes, os, resource, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])
os.umask(0o027)
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))
resource.setrlimit(resource.RLIMIT_CORE, (0, 1 << 20))
libc.prctl(15, b"attr-test", 0, 0, 0)
libc.personality(0x0040000)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
want = dict(uid=os.getresuid(), gid=os.getresgid(), groups=sorted(os.getgroups()),
            sid=os.getsid(0), pgrp=os.getpgrp(), pid=os.getpid())
print("ready", want, flush=True)
signal.sigwait([signal.SIGUSR1])
def check(ok, code, what):
    if not ok:
        print("FAIL", code, what, flush=True)
        sys.exit(code)
have = dict(uid=os.getresuid(), gid=os.getresgid(), groups=sorted(os.getgroups()),
            sid=os.getsid(0), pgrp=os.getpgrp(), pid=os.getpid())
check(have == want, 10, f"ids {have} != {want}")
check(os.getcwd() == sys.argv[1], 11, f"cwd {os.getcwd()}")
u = os.umask(0); check(u == 0o027, 12, f"umask {u:o}")
check(resource.getrlimit(resource.RLIMIT_NOFILE) == (200, 300), 13, "RLIMIT_NOFILE")
check(resource.getrlimit(resource.RLIMIT_CORE) == (0, 1 << 20), 14, "RLIMIT_CORE")
check(open("/proc/self/comm").read() == "attr-test\n", 15, "name")
check(libc.personality(0xffffffff) == 0x0040000, 16, "personality")
check(open("/proc/self/cmdline").read().startswith("/usr/bin/python3\0"), 17, "argv")
print("ok", flush=True)
"#;

fn run(prefix: &[&str], cwd: &str) {
    let w = workdir();
    let mut cmd: Vec<&str> = prefix.to_vec();
    cmd.extend(["/usr/bin/python3", "-c", SCRIPT, cwd]);
    let mut t = spawn(&cmd, &w.path().join("out"));
    t.wait_output("ready", T);
    restore_and_self_check(&mut t, &w.path().join("img"), &[]);
}

#[test]
fn attributes_survive_as_root() {
    run(&[], "/tmp");
}

#[test]
fn attributes_and_credentials_of_another_user_survive() {
    // uid/gid 65534 with supplementary groups: switched back by injection.
    run(&["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--groups=100,65534", "--inh-caps=-all"], "/");
}

/// Without CAP_SYS_RESOURCE a hard limit above ferry's own cannot be
/// restored: ferry says so, keeps its own, and the task still comes back.
#[test]
fn unraisable_hard_limit_is_reported() {
    let w = workdir();
    let mut t = spawn(&["/usr/bin/python3", "-c", "import resource, time\nresource.setrlimit(resource.RLIMIT_NOFILE, (300, 400))\nprint('ready', flush=True)\ntime.sleep(60)"], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    let out = std::process::Command::new("/usr/bin/prlimit")
        .args(["--nofile=64:128", "--"])
        .arg(ferry())
        .args(["restore", "-d", "-D", img.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "ferry: warning: task {}: cannot restore RLIMIT_NOFILE hard limit 400 (raising it needs \
             CAP_SYS_RESOURCE, which ferry lacks here); keeping 128",
            t.pid
        )
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", t.pid)).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().nth(3) == Some("128")
            && l.split_whitespace().nth(4) == Some("128")),
        "{limits}"
    );
    t.assert_running_untraced();
}

/// A cwd removed while two processes (parent and child) were in it comes
/// back deleted, under its old name and with its mode, for both; the path
/// is free again afterwards. With the path taken by then, a sibling name
/// stands in.
#[test]
fn a_deleted_cwd_stays_deleted() {
    for taken in [false, true] {
        let w = workdir();
        let dir = w.path().join("gone");
        let script = format!(
            "import os, signal\nos.mkdir({d:?})\nos.chmod({d:?}, 0o710)\nos.chdir({d:?})\nos.rmdir({d:?})\n\
             signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\nchild = os.fork()\n\
             if child == 0:\n    signal.sigwait([signal.SIGUSR1])\n    os._exit(0 if os.stat('.').st_nlink == 0 else 3)\n\
             print('ready', flush=True)\nsignal.sigwait([signal.SIGUSR1])\nst = os.stat('.')\n\
             print(os.readlink('/proc/self/cwd'), st.st_nlink, oct(st.st_mode & 0o7777), flush=True)\n\
             os.kill(child, signal.SIGUSR1)\nprint('child', os.waitpid(child, 0)[1], flush=True)\n",
            d = dir.to_str().unwrap()
        );
        let mut t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
        t.wait_output("ready", T);
        let pids = tree_pids(t.pid);
        let img = w.path().join("img");
        dump(t.pid, &img, &[]);
        let show = show_image(img.to_str().unwrap());
        assert!(show.contains(&format!("cwd {} (deleted)", dir.display())), "{show}");
        t.reap_killed();
        reap_all(&pids, T);
        if taken {
            std::fs::create_dir(&dir).unwrap();
        }
        restore_detached(&img, &[]);
        t.signal(libc::SIGUSR1);
        assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
        let name = if taken { format!("{}.ferry-0", dir.display()) } else { dir.display().to_string() };
        assert!(t.output().ends_with(&format!("{name} (deleted) 0 0o710\nchild 0\n")), "{}", t.output());
        assert_eq!(dir.exists(), taken, "the stand-in directory was removed");
        assert!(!Path::new(&format!("{}.ferry-0", dir.display())).exists());
    }
}
