//! Unix sockets within the tree: socketpairs of every type with messages
//! queued both ways (boundaries kept), shutdowns, a peer already closed,
//! buffer sizes; listeners and the connections they accepted; peers
//! outside the tree (--ext-unix-sk); and what is refused by name, with
//! the task untouched: descriptors in flight.

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
    let show = show_image(img.to_str().unwrap());
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

/// The tree's end of a stream whose other end the test holds: refused by
/// name (with the hint) without --ext-unix-sk, and by an inode list that
/// names another socket; with it, restored as closed by its peer after
/// the bytes the peer had sent.
#[test]
fn a_peer_outside_the_tree_needs_ext_unix_sk() {
    use std::io::{Read, Write};
    let w = workdir();
    let (mut mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let script = "import signal, sys\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\nprint('ready', flush=True)\nsignal.sigwait([signal.SIGUSR1])\n\
                  print(repr(sys.stdin.buffer.read()), flush=True)\n";
    let mut t = python_on(theirs.into(), script, &w.path().join("out"));
    t.wait_output("ready", T);
    mine.write_all(b"sent before the dump\n").unwrap();
    let img = w.path().join("img");
    let (pid, dir) = (t.pid.to_string(), img.to_str().unwrap().to_string());
    let err = ferry_err(&["dump", "-t", &pid, "-D", &dir]);
    let me = std::process::id();
    assert!(err.contains(&format!("task {} fd 0: unix stream socket (socket:[", t.pid)), "{err}");
    assert!(err.contains(&format!("is held by process {me} (")), "{err}");
    assert!(err.contains("outside the tree; --ext-unix-sk lets it go"), "{err}");
    t.assert_running_untraced();
    let ino = std::fs::metadata(format!("/proc/{}/fd/0", t.pid)).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let ino = ino.unwrap();
    let err = ferry_err(&["dump", "-t", &pid, "-D", &dir, &format!("--ext-unix-sk={}", ino + 1)]);
    assert!(err.contains("--ext-unix-sk lets it go"), "{err}");
    t.assert_running_untraced();
    std::fs::remove_dir_all(&img).ok();
    dump(t.pid, &img, &[&format!("--ext-unix-sk={ino}")]);
    let show = show_image(&dir);
    assert!(show.contains("outside the tree, 21 bytes queued"), "{show}");
    // The dumped end went with the task, its bytes unread: the test's
    // end sees the connection reset (the kernel's answer to that).
    let mut rest = Vec::new();
    let e = mine.read_to_end(&mut rest).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    let out = restore_and_wake(&mut t, &img);
    assert!(out.ends_with("ready\nb'sent before the dump\\n'\n"), "{out}");
}

/// A datagram socket connected to a named socket outside the tree (as to
/// /dev/log) connects to that name again on restore.
#[test]
fn a_datagram_peer_outside_the_tree_is_connected_again() {
    let w = workdir();
    let log = w.path().join("log.sock");
    let logger = std::os::unix::net::UnixDatagram::bind(&log).unwrap();
    logger.set_read_timeout(Some(T)).unwrap();
    let script = format!(
        "import signal, socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.connect({:?})\n\
         s.send(b'before')\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\nprint('ready', flush=True)\nsignal.sigwait([signal.SIGUSR1])\ns.send(b'after')\n",
        log.to_str().unwrap()
    );
    let mut t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
    t.wait_output("ready", T);
    let mut buf = [0u8; 64];
    let n = logger.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before");
    let img = w.path().join("img");
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
    assert!(err.contains("--ext-unix-sk lets it go"), "{err}");
    std::fs::remove_dir_all(&img).ok();
    dump(t.pid, &img, &["--ext-unix-sk"]);
    let show = show_image(img.to_str().unwrap());
    assert!(show.contains(&format!("outside the tree ({})", log.display())), "{show}");
    t.reap_killed();
    restore_detached(&img, &[]);
    t.signal(libc::SIGUSR1);
    let n = logger.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after");
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
}

/// A listener on a path (its socket file's mode set by the program) and a
/// connection it accepted from a client in the same process, with bytes
/// queued: after restore the bytes are there, the socket file has its
/// mode, and new clients connect.
#[test]
fn an_accepted_connection_and_its_listener_come_back() {
    let w = workdir();
    let path = w.path().join("srv.sock");
    let script = format!(
        "import os, signal, socket\np = {:?}\nl = socket.socket(socket.AF_UNIX)\nl.bind(p)\nos.chmod(p, 0o660)\n\
         l.listen(8)\nc = socket.socket(socket.AF_UNIX)\nc.connect(p)\na, _ = l.accept()\nc.send(b'ping')\n\
         a.send(b'pong')\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\nprint('ready', flush=True)\nsignal.sigwait([signal.SIGUSR1])\n\
         print(a.recv(16), c.recv(16), oct(os.stat(p).st_mode & 0o777))\nn, _ = l.accept()\n\
         n.send(b'welcome')\nprint('ok', flush=True)\n",
        path.to_str().unwrap()
    );
    let mut t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    let show = show_image(img.to_str().unwrap());
    assert!(show.contains(&format!("accepted on {}, peer socket:[", path.display())), "{show}");
    t.reap_killed();
    // A socket file left behind by the dumped listener is replaced.
    assert!(path.exists());
    restore_detached(&img, &[]);
    t.signal(libc::SIGUSR1);
    let mut late = std::os::unix::net::UnixStream::connect(&path).expect("the listener is back");
    let mut got = String::new();
    std::io::Read::read_to_string(&mut late, &mut got).unwrap();
    assert_eq!(got, "welcome");
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("b'ping' b'pong' 0o660\nok\n"), "{}", t.output());
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

/// A restore that fails after the listener took its path over (here the
/// task's cwd is gone, so its setup fails) puts the old socket file back,
/// the same inode, and leaves nothing of its own beside it.
#[test]
fn a_failed_restore_gives_the_socket_path_back() {
    use std::os::unix::fs::MetadataExt;
    let w = workdir();
    let cwd = w.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let path = w.path().join("srv.sock");
    let script = format!(
        "import socket, time\nl = socket.socket(socket.AF_UNIX)\nl.bind({:?})\nl.listen(4)\n\
         print('ready', flush=True)\ntime.sleep(60)\n",
        path.to_str().unwrap()
    );
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", &script]).current_dir(&cwd);
    let mut t = spawn_command(c, &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    let ino = std::fs::symlink_metadata(&path).unwrap().ino();
    std::fs::remove_dir(&cwd).unwrap();
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap()]);
    assert!(err.contains(&format!("chdir {}", cwd.display())), "{err}");
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino, "the old socket file is back");
    let names: Vec<String> =
        std::fs::read_dir(w.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains(".ferry-")), "{names:?}");
}

/// A datagram server bound to a path with messages queued (from a client
/// connected to it and from an unnamed sender), that client, and sockets
/// neither bound nor connected: after restore the server reads the same
/// messages in order, the client still reaches it, and its socket file has
/// its mode.
#[test]
fn a_datagram_server_keeps_its_messages_and_its_client() {
    let w = workdir();
    let path = w.path().join("dgram.sock");
    let script = format!(
        "import os, signal, socket\np = {:?}\nsrv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\nsrv.bind(p)\n\
         os.chmod(p, 0o620)\ncli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ncli.connect(p)\n\
         cli.send(b'one')\ncli.send(b'two!')\nanon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         anon.sendto(b'three', p)\nidle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\nprint('ready', flush=True)\n\
         signal.sigwait([signal.SIGUSR1])\ngot = [srv.recv(16) for _ in range(3)]\ncli.send(b'four')\n\
         got.append(srv.recv(16))\nprint(got, oct(os.stat(p).st_mode & 0o777), flush=True)\n",
        path.to_str().unwrap()
    );
    let mut t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    let show = show_image(img.to_str().unwrap());
    for s in [
        format!("bound to {}, unconnected, 3 messages (12 bytes) queued", path.display()),
        format!("connected to {}, peer socket:[", path.display()),
        "unix stream socket:".to_string(),
    ] {
        assert!(show.contains(&s), "{s:?} not in {show}");
    }
    let out = restore_and_wake(&mut t, &img);
    assert!(out.ends_with("[b'one', b'two!', b'three', b'four'] 0o620\n"), "{out}");
}

/// A connection waiting to be accepted: refused by name without
/// --ext-unix-sk; with it, let go (its client sees it closed) and the
/// restored listener accepts the next client first.
#[test]
fn a_waiting_connection_from_outside_is_let_go() {
    use std::io::{Read, Write};
    let w = workdir();
    let path = w.path().join("srv.sock");
    let script = format!(
        "import signal, socket\nl = socket.socket(socket.AF_UNIX)\nl.bind({:?})\nl.listen(4)\n\
         signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\nprint('ready', flush=True)\n\
         signal.sigwait([signal.SIGUSR1])\nc, _ = l.accept()\nprint(c.recv(16), flush=True)\n",
        path.to_str().unwrap()
    );
    let mut t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
    t.wait_output("ready", T);
    let mut early = std::os::unix::net::UnixStream::connect(&path).unwrap();
    early.write_all(b"early").unwrap();
    let img = w.path().join("img");
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
    assert!(err.contains("1 connections wait to be accepted; --ext-unix-sk lets them go"), "{err}");
    t.assert_running_untraced();
    std::fs::remove_dir_all(&img).ok();
    let out = dump(t.pid, &img, &["--ext-unix-sk"]);
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(warned.contains("1 connections waiting to be accepted are let go"), "{warned}");
    t.reap_killed();
    let mut rest = Vec::new();
    assert!(early.read_to_end(&mut rest).is_err() || rest.is_empty(), "the early client sees its connection end");
    restore_detached(&img, &[]);
    let mut late = std::os::unix::net::UnixStream::connect(&path).unwrap();
    late.write_all(b"late").unwrap();
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("b'late'\n"), "{}", t.output());
}
