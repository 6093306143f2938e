//! Multi-threaded processes: every thread comes back at its TID with its
//! own registers, TLS, signal mask and queue, alternate stack, rseq,
//! robust list, clear_child_tid, name and scheduling, and each resumes the
//! wait it was in.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn task(img: &std::path::Path, pid: i32) -> Value {
    serde_json::from_slice(&std::fs::read(img.join(format!("task-{pid}.json"))).unwrap()).unwrap()
}

/// The per-thread kernel state a second dump must find as the first did.
fn thread_state(t: &Value) -> Vec<Value> {
    t["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|th| {
            let mut th = th.clone();
            let o = th.as_object_mut().unwrap();
            // Registers move on, and so do the wait's restart markers.
            o.remove("cpu");
            o.remove("restart");
            th
        })
        .collect()
}

#[test]
fn threads_keep_their_state_and_waits() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-threads").to_str().unwrap(), "3"], &w.path().join("out"));
    t.wait_output("ready", T);
    std::thread::sleep(Duration::from_millis(300));
    let img = w.path().join("img");
    dump_and_restore(&mut t, &img, &[]);
    let first = task(&img, t.pid);
    assert_eq!(first["threads"].as_array().unwrap().len(), 9, "{}", first["threads"]);
    let names: Vec<&str> = first["threads"].as_array().unwrap().iter().map(|th| th["comm"].as_str().unwrap()).collect();
    for n in ["tp-threads", "tp-compute", "tp-futex", "tp-sleep", "tp-poll", "tp-batch", "tp-worker-2"] {
        assert!(names.contains(&n), "{names:?}");
    }
    // The restored threads, as the kernel reports them, are the dumped ones.
    let img2 = w.path().join("img2");
    dump(t.pid, &img2, &["-R"]);
    let second = task(&img2, t.pid);
    assert_eq!(thread_state(&first), thread_state(&second));
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
}
