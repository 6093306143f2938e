//! Memory shared within a tree: shared anonymous memory, memfd (open and
//! sealed, or only mapped), POSIX shared memory, System V segments; the
//! sharing itself survives (one process's write is seen by the other),
//! as do contents, seals, names, the segment's id, mode and removal mark,
//! and locked (mlock) memory.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn shared_memory_of_every_kind_stays_shared() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-shm").to_str().unwrap()], &w.path().join("out"));
    let ready = t.wait_output("ready", T);
    let shmid: i32 = ready.split("shmid=").nth(1).unwrap().trim().parse().unwrap();
    let pids = tree_pids(t.pid);
    assert_eq!(pids.len(), 2);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    reap_all(&pids, T);
    // The segment (marked for removal) went with its last process; the
    // restore brings it back under its id.
    let segments = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    assert!(!segments.lines().any(|l| l.split_whitespace().nth(1) == Some(&shmid.to_string())));
    let objects: serde_json::Value = serde_json::from_slice(&std::fs::read(img.join("objects.json")).unwrap()).unwrap();
    let kinds: Vec<&str> = objects["memory"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    for k in ["shared-anon", "memfd", "sysv-shm"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    restore_detached(&img, &[]);
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
}

/// A segment someone outside the tree also uses cannot be taken along:
/// the tree would no longer share it with them.
#[test]
fn system_v_segment_used_outside_the_tree_is_refused() {
    let w = workdir();
    let t = spawn(&[testprog("tp-shm").to_str().unwrap()], &w.path().join("out"));
    let ready = t.wait_output("ready", T);
    let shmid: i32 = ready.split("shmid=").nth(1).unwrap().trim().parse().unwrap();
    // Attach it here too (the test is outside the tree).
    // SAFETY: attach and later detach a segment read-only.
    let at = unsafe { libc::shmat(shmid, std::ptr::null(), libc::SHM_RDONLY) };
    assert_ne!(at as isize, -1);
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    assert!(
        err.contains(&format!("System V segment {shmid} (key 0x0) is attached 3 times, 2 of them by the tree")),
        "{err}"
    );
    // SAFETY: detaching what we attached.
    unsafe { libc::shmdt(at) };
    for pid in tree_pids(t.pid) {
        let st = ferry::proc::ProcDir::new(pid).status().unwrap();
        assert_eq!(st.tracer_pid, 0, "process {pid} is still traced");
    }
}
