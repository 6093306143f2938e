//! eventfd, timerfd, signalfd, epoll and inotify: counters, semaphores, time left and
//! interval, expirations not read yet, signal sets; each checked by the
//! program that holds them (tp-eventfds, tp-epoll); epoll watches by number.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn event_fds_keep_their_state() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-eventfds").to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready", Duration::from_secs(30));
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    let show = show_image(img.to_str().unwrap());
    for what in [
        "eventfd, counter 7,",
        "eventfd, counter 3, semaphore",
        "every 10000.000 ms",
        "1 expirations unread",
        "signalfd for signals 12",
    ] {
        assert!(show.contains(what), "{what:?} not in:\n{show}");
    }
    t.reap_killed();
    restore_detached(&img, &[]);
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(Duration::from_secs(30)), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
}

/// tp-epoll: an epoll over a pipe, an eventfd (edge-triggered), a timerfd
/// and an inner epoll comes back with exactly the same ready set, and its
/// watches answer to their fd numbers (EPOLL_CTL_MOD/DEL by number).
#[test]
fn epoll_keeps_its_watches_under_their_numbers() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-epoll").to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready", Duration::from_secs(30));
    restore_and_self_check(&mut t, &w.path().join("img"), &[]);
}

/// A watch whose fd the process closed (the file kept open by a dup) has
/// no number that says which file it is: refused by name, untouched.
#[test]
fn epoll_watch_of_a_closed_fd_is_refused() {
    let w = workdir();
    let script = "import os, select, time\nr, w = os.pipe()\nkeep = os.dup(r)\nep = select.epoll()\n\
                  ep.register(r, select.EPOLLIN)\nos.close(r)\nprint('ready', r, flush=True)\ntime.sleep(60)";
    let t = spawn(&["/usr/bin/python3", "-c", script], &w.path().join("out"));
    let out = t.wait_output("ready", Duration::from_secs(30));
    let fd = out.split_whitespace().nth(1).unwrap().to_string();
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    assert!(err.contains(&format!("the epoll watches fd {fd} (inode")), "{err}");
    assert!(err.contains("which the process has closed since it added it"), "{err}");
    t.assert_running_untraced();
}

/// inotify: watches come back on their paths with their masks, at the
/// watch descriptors the program had (2 and 3, after a removed 1).
#[test]
fn inotify_watches_keep_their_numbers() {
    let w = workdir();
    for d in ["a", "b"] {
        std::fs::create_dir(w.path().join(d)).unwrap();
    }
    std::fs::write(w.path().join("b/old"), "").unwrap();
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/inotify_watch.py");
    let mut t =
        spawn(&["/usr/bin/python3", program.to_str().unwrap(), w.path().to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready 2 3", Duration::from_secs(30));
    restore_and_self_check(&mut t, &w.path().join("img"), &[]);
}
