//! Unix sockets within the tree: socketpairs of every type with messages
//! queued both ways (boundaries kept), shutdowns, a peer already closed,
//! buffer sizes; and what is refused by name, with the task untouched: a
//! peer outside the tree, descriptors in flight.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn socketpairs_keep_their_queues_and_shutdowns() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-sockets").to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready", T);
    let pids = tree_pids(t.pid);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    let show = String::from_utf8_lossy(&ferry_ok(&["show", img.to_str().unwrap()]).stdout).into_owned();
    for what in ["3000 bytes queued", "3 messages (510 bytes) queued", "peer closed, 50 bytes queued", "write shut"] {
        assert!(show.contains(what), "{what:?} not in:\n{show}");
    }
    t.reap_killed();
    reap_all(&pids, T);
    restore_detached(&img, &[]);
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
}

/// Start python with `fd` as its stdin (a socket the test holds the peer
/// of), running `script`.
fn python_on(fd: std::os::fd::OwnedFd, script: &str, out: &std::path::Path) -> Target {
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", script]).stdin(Stdio::from(fd));
    spawn_command_keep_stdin(c, out)
}

#[test]
fn a_peer_outside_the_tree_is_refused_by_name() {
    let w = workdir();
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let t = python_on(theirs.into(), "import time\nprint('ready', flush=True)\ntime.sleep(60)", &w.path().join("out"));
    t.wait_output("ready", T);
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    let me = std::process::id();
    assert!(err.contains(&format!("task {} fd 0: unix stream socket: its peer (socket:[", t.pid)), "{err}");
    assert!(err.contains(&format!("is held by process {me} (")), "{err}");
    assert!(err.contains("outside the tree (--ext-unix-sk is not supported yet)"), "{err}");
    t.assert_running_untraced();
    drop(mine);
}

#[test]
fn descriptors_in_flight_are_refused_and_stay_queued() {
    let w = workdir();
    let script = "import socket, os, time\na, b = socket.socketpair()\nsocket.send_fds(a, [b'x'], [1])\n\
                  print('ready', flush=True)\ntime.sleep(60)\n";
    let t = spawn(&["/usr/bin/python3", "-c", script], &w.path().join("out"));
    t.wait_output("ready", T);
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    assert!(err.contains("file descriptors in flight (SCM_RIGHTS) are not supported yet"), "{err}");
    t.assert_running_untraced();
    // The message and its fd are still queued, and ferry holds no copy.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", t.pid)).unwrap().count();
    assert_eq!(fds, 5, "python's stdio and the pair");
}
