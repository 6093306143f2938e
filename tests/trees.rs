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

/// A tree whose root is the init of its own PID namespace (`unshare --pid
/// --fork`) comes back in a new PID namespace with the same PIDs inside;
/// the root is a real shell, whose `wait` must still know its children.
#[test]
fn pid_namespace_tree_and_a_waiting_shell() {
    let w = workdir();
    let f = w.path().join("pids");
    let script = format!(
        "sleep 1000 & echo $! > {f}; sleep 1000 & echo $! >> {f}; wait; echo waited >> {f}",
        f = f.display()
    );
    let mut u = spawn(&["/usr/bin/unshare", "--pid", "--fork", "/usr/bin/setsid", "/bin/sh", "-c", &script], &w.path().join("out"));
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&f).unwrap_or_default().lines().count() < 2 {
        assert!(start.elapsed() < T, "the shell did not start its children");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sh = tree_pids(u.pid)[1];
    let inner: Vec<i32> = std::fs::read_to_string(&f).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let pids = tree_pids(sh);
    let img = w.path().join("img");
    dump(sh, &img, &[]);
    reap_all(&pids, T);
    let _ = u.wait_exit(T);
    let pidfile = w.path().join("pidfile");
    restore_detached(&img, &["--pidfile", pidfile.to_str().unwrap()]);
    let root: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let nspid = |pid: i32| ferry::proc::ProcDir::new(pid).status().unwrap().nspid;
    assert_eq!(nspid(root).last(), Some(&1), "the root is its namespace's init again");
    let children: Vec<i32> = ferry::proc::ProcDir::new(root).all_children().unwrap();
    let mut inner_now: Vec<i32> = children.iter().map(|&c| *nspid(c).last().unwrap()).collect();
    inner_now.sort_unstable();
    assert_eq!(inner_now, inner, "the shell's children keep their PIDs inside the namespace");
    for c in children {
        // SAFETY: plain kill of a restored process.
        unsafe { libc::kill(c, libc::SIGTERM) };
    }
    assert_eq!(wait_pid(root, T), WaitResult::Exited(0));
    assert!(std::fs::read_to_string(&f).unwrap().ends_with("waited\n"), "the shell's wait did not return");
}
