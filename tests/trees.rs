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
    let script =
        format!("sleep 1000 & echo $! > {f}; sleep 1000 & echo $! >> {f}; wait; echo waited >> {f}", f = f.display());
    let mut u = spawn(
        &["/usr/bin/unshare", "--pid", "--fork", "/usr/bin/setsid", "/bin/sh", "-c", &script],
        &w.path().join("out"),
    );
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

/// Wait until `f` exists and has `lines` lines.
fn wait_lines(f: &std::path::Path, lines: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if text.lines().count() >= lines {
            return text.lines().map(String::from).collect();
        }
        assert!(start.elapsed() < T, "{} never got {lines} lines: {text:?}", f.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every thread of every process: running, untraced, not stopped.
fn assert_tree_untouched(pids: &[i32]) {
    for &pid in pids {
        let proc = ferry::proc::ProcDir::new(pid);
        let tids = proc.threads().unwrap();
        assert!(!tids.is_empty(), "process {pid} is gone");
        for tid in tids {
            let st = proc.thread(tid).status().unwrap();
            assert_eq!(st.tracer_pid, 0, "thread {tid} of {pid} is still traced");
            assert!(!matches!(st.state, 't' | 'T' | 'Z' | 'X'), "thread {tid} of {pid} is in state {}", st.state);
        }
    }
}

/// An fd ferry cannot take along, three levels down, is named, and the
/// whole tree runs on as if nothing happened.
#[test]
fn unsupported_fd_in_a_grandchild_is_refused_and_the_tree_runs_on() {
    let w = workdir();
    let f = w.path().join("pids");
    let py = "import socket, time\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))\ntime.sleep(1000)";
    let script = format!("(/usr/bin/python3 -c \"{py}\" & echo $! > {f}; wait) & wait", f = f.display());
    let t = spawn(&["/bin/sh", "-c", &script], &w.path().join("out"));
    let grandchild: i32 = wait_lines(&f, 1)[0].parse().unwrap();
    let pids = tree_pids(t.pid);
    assert_eq!(pids.len(), 3);
    let start = std::time::Instant::now();
    while !std::fs::read_link(format!("/proc/{grandchild}/fd/3"))
        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
    {
        assert!(start.elapsed() < T, "python did not open its socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let img = w.path().join("img");
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
    let line = err.lines().next().unwrap();
    assert!(line.starts_with(&format!("ferry: dump: task {grandchild} fd 3: socket:[")), "{line}");
    assert!(line.ends_with("(netlink) is not supported yet"), "{line}");
    assert!(!img.join("inventory.json").exists());
    assert_tree_untouched(&pids);
    assert_eq!(tree_pids(t.pid), pids);
}

/// ferry killed at any stage of a tree dump (every thread of every
/// process frozen by then) leaves all of them running, untraced.
#[test]
fn ferry_killed_at_each_stage_of_a_tree_dump() {
    for stage in ["freeze", "memory", "memory#3", "write"] {
        let w = workdir();
        let tp = testprog("tp-threads");
        let tp = tp.to_str().unwrap();
        let script = format!("{tp} 2 & ({tp} 1 & wait) & wait");
        let t = spawn(&["/bin/sh", "-c", &script], &w.path().join("out"));
        let start = std::time::Instant::now();
        while t.output().matches("ready").count() < 2 {
            assert!(start.elapsed() < T, "the threads did not start: {}", t.output());
            std::thread::sleep(Duration::from_millis(10));
        }
        let pids = tree_pids(t.pid);
        assert_eq!(pids.len(), 4, "{pids:?}");
        let img = w.path().join("img");
        let mut f = ferry_held_at(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()], stage);
        for &pid in &pids {
            let st = ferry::proc::ProcDir::new(pid).status().unwrap();
            assert_eq!(st.tracer_pid, f.id() as i32, "stage {stage}: process {pid} is not frozen");
        }
        f.kill().unwrap();
        f.wait().unwrap();
        assert!(!img.join("inventory.json").exists(), "stage {stage}");
        assert_tree_untouched(&pids);
        // And they still work: each threaded process checks itself.
        for &pid in &pids[1..] {
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim() == "tp-threads" {
                // SAFETY: plain kill of a process of the test's tree.
                unsafe { libc::kill(pid, libc::SIGUSR1) };
            }
        }
        let start = std::time::Instant::now();
        while t.output().matches("ok\n").count() < 2 {
            assert!(start.elapsed() < T, "stage {stage}: {}", t.output());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!t.output().contains("FAIL"), "stage {stage}: {}", t.output());
    }
}

/// A tree of five sleepers, each in a directory of its own.
fn sleepers(w: &std::path::Path) -> (Target, Vec<i32>) {
    let mut script = String::new();
    for i in 1..=5 {
        let d = w.join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        script += &format!("(cd {} && exec sleep 1000) & ", d.display());
    }
    script += "wait";
    let t = spawn(&["/bin/sh", "-c", &script], &w.join("out"));
    let start = std::time::Instant::now();
    while tree_pids(t.pid).len() < 6
        || tree_pids(t.pid)
            .iter()
            .skip(1)
            .any(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim() != "sleep")
    {
        assert!(start.elapsed() < T, "the sleepers did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = tree_pids(t.pid);
    (t, pids)
}

/// The sleepers, dumped (and gone): their images and PIDs.
fn dumped_sleepers(w: &std::path::Path) -> (std::path::PathBuf, Vec<i32>) {
    let (mut t, pids) = sleepers(w);
    let img = w.join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    reap_all(&pids, T);
    (img, pids)
}

/// A restore that fails in the fifth process (its directory is gone)
/// leaves none of the tree behind.
#[test]
fn restore_failing_in_the_fifth_process_leaves_nothing() {
    let w = workdir();
    let (img, pids) = dumped_sleepers(w.path());
    std::fs::remove_dir(w.path().join("d5")).unwrap();
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap()]);
    assert!(err.contains("d5: No such file or directory") && err.contains("chdir"), "{err}");
    reap_all(&pids, T);
    for p in &pids {
        assert!(!pid_exists(*p), "process {p} was left behind");
    }
}

/// ferry killed after it rebuilt five processes of six: none is left.
#[test]
fn ferry_killed_mid_tree_restore_leaves_nothing() {
    let w = workdir();
    let (img, pids) = dumped_sleepers(w.path());
    let mut f = ferry_held_at(&["restore", "-d", "-D", img.to_str().unwrap()], "restore-process#5");
    assert!(pids.iter().all(|&p| pid_exists(p)), "the tree is being built");
    f.kill().unwrap();
    f.wait().unwrap();
    reap_all(&pids, T);
    for p in &pids {
        assert!(!pid_exists(*p), "process {p} was left behind");
    }
}
