//! eventfd, timerfd and signalfd: counters, semaphores, time left and
//! interval, expirations not read yet, signal sets; each checked by the
//! program that holds them (tp-eventfds).

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
    let show = String::from_utf8_lossy(&ferry_ok(&["show", img.to_str().unwrap()]).stdout).into_owned();
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
