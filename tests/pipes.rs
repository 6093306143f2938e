//! Pipes and FIFOs: bytes in flight kept exactly (neither lost nor
//! repeated), buffer sizes, per-description flags, ends that no process
//! holds any more, a pipe shared with a process outside the tree
//! (`--inherit-fd`), and a ferry killed mid-dump that takes nothing.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn tp_pipes(w: &std::path::Path) -> Target {
    let t = spawn(&[testprog("tp-pipes").to_str().unwrap(), w.join("fifo").to_str().unwrap()], &w.join("out"));
    t.wait_output("ready", T);
    t
}

/// tp-pipes: a pipe between two processes with 3000 bytes in flight and a
/// 128 KiB buffer, a pipe whose write end is closed (data, then end of
/// file), one whose read end is closed (EPIPE), and a FIFO; every byte
/// comes back once, in order, and `ferry show` lists each pipe.
#[test]
fn pipes_keep_their_bytes_in_flight() {
    let w = workdir();
    let mut t = tp_pipes(w.path());
    let img = w.path().join("img");
    let pids = tree_pids(t.pid);
    dump(t.pid, &img, &[]);
    let show = show_image(img.to_str().unwrap());
    assert!(show.contains("131072-byte buffer, 3000 bytes in flight"), "{show}");
    assert!(show.contains("1000 bytes in flight, O_RDONLY"), "{show}");
    assert!(show.contains(&format!("FIFO {}", w.path().join("fifo").display())), "{show}");
    t.reap_killed();
    reap_all(&pids, T);
    restore_detached(&img, &[]);
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
}

/// ferry killed while the tree is frozen: the bytes in flight were only
/// copied (tee), so the processes find every one of them.
#[test]
fn ferry_killed_mid_dump_takes_no_byte() {
    for stage in ["memory", "write"] {
        let w = workdir();
        let mut t = tp_pipes(w.path());
        let img = w.path().join("img");
        let mut f = ferry_held_at(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()], stage);
        f.kill().unwrap();
        f.wait().unwrap();
        assert!(!img.join("inventory.json").exists(), "stage {stage}");
        t.assert_running_untraced();
        t.signal(libc::SIGUSR1);
        assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "stage {stage}: {}", t.output());
    }
}

/// A process writing numbered lines into a pipe the test reads (its other
/// end is outside the tree): restore refuses without `--inherit-fd` and
/// says how; with the test's own end handed in, the lines go on into the
/// same pipe with none lost or repeated.
#[test]
fn pipe_to_an_outside_reader_needs_inherit_fd() {
    let w = workdir();
    let (r, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let script = "import itertools, time\nfor i in itertools.count():\n    print(i, flush=True)\n    time.sleep(0.01)";
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", script]).stdin(Stdio::null()).stdout(wr.try_clone().unwrap()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let mut lines = BufReader::new(std::fs::File::from(r));
    let mut next = 0u64;
    let mut read_line = |lines: &mut BufReader<std::fs::File>| {
        let mut l = String::new();
        lines.read_line(&mut l).unwrap();
        assert_eq!(l.trim().parse::<u64>().unwrap(), next, "a line lost or repeated");
        next += 1;
    };
    for _ in 0..5 {
        read_line(&mut lines);
    }
    let ino = std::fs::metadata(format!("/proc/{pid}/fd/1")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let img = w.path().join("img");
    dump(pid, &img, &[]);
    child.wait().unwrap();
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap()]);
    let me = std::process::id();
    // (Bytes the task wrote after the test's last read may be in flight.)
    assert!(err.contains(&format!("pipe:[{ino}], 65536-byte buffer,")), "{err}");
    assert!(err.contains(&format!("also held by {me} (")), "{err}");
    assert!(err.contains(&format!("task {pid} fd 1 cannot be re-created: hand an end of it to ferry as fd N with --inherit-fd fd[N]:pipe:[{ino}]")), "{err}");
    assert!(!pid_exists(pid), "nothing may be left of a refused restore");
    // ferry gets the test's write end as its fd 3.
    let mut c = Command::new(ferry());
    let inherit = format!("fd[3]:pipe:[{ino}]");
    c.args(["restore", "-d", "-D", img.to_str().unwrap(), "--inherit-fd", &inherit]);
    let raw = wr.as_raw_fd();
    // SAFETY: dup2 between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::dup2(raw, 3);
            Ok(())
        });
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    for _ in 0..20 {
        read_line(&mut lines);
    }
    assert!(start.elapsed() < T);
    // SAFETY: plain kill of the restored process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_pid(pid, T);
}
