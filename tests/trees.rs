//! Process trees: every process back at its PID with its parent, session
//! and process group, zombies as zombies, stopped ones stopped, shared
//! file descriptions shared.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// "ready name=pid ..." → name → pid.
fn roles(line: &str) -> HashMap<String, i32> {
    line.lines()
        .find(|l| l.starts_with("ready"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn wait_state(pid: i32, state: char) {
    let start = std::time::Instant::now();
    while proc_ids(pid).0 != state {
        assert!(start.elapsed() < T, "process {pid} never reached state {state}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tree_comes_back_whole() {
    let w = workdir();
    let file = w.path().join("shared-file");
    let mut t = spawn(&[testprog("tp-tree").to_str().unwrap(), file.to_str().unwrap()], &w.path().join("out"));
    let r = roles(&t.wait_output("ready", T));
    let stopped = r["stopped"];
    // SAFETY: plain kill of a process of the test's tree.
    unsafe { libc::kill(stopped, libc::SIGSTOP) };
    wait_state(stopped, 'T');
    let pids = tree_pids(t.pid);
    assert_eq!(pids.len(), 9, "{pids:?}");
    let before: Vec<(i32, (char, i32, i32))> = pids.iter().map(|&p| (p, proc_ids(p))).collect();
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    reap_all(&pids, T);
    restore_detached(&img, &[]);
    // Every process at its PID, in its group and session, in its state.
    for (pid, (state, pgid, sid)) in &before {
        let (s, g, ss) = proc_ids(*pid);
        assert_eq!((g, ss), (*pgid, *sid), "process {pid}: group and session");
        let want = if *state == 'T' || *state == 'Z' { *state } else { 'S' };
        if want != 'S' {
            assert_eq!(s, want, "process {pid}");
        }
    }
    let zombie = r["zombie"];
    assert_eq!(std::fs::read_to_string(format!("/proc/{zombie}/comm")).unwrap().trim(), "tp-tree");
    assert_eq!(tree_pids(t.pid).len(), 9, "no helper is left behind");
    // SAFETY: plain kill.
    unsafe { libc::kill(stopped, libc::SIGCONT) };
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
}
