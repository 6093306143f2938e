//! Programs nobody here wrote, from Debian, checkpointed with their
//! threads and children and checked through their own output: Python's
//! thread pool, a JVM's executor.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(name)
}

/// Eight results, each "k n digest", each digest checked by the program.
fn check_results(path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "{text}");
    for (k, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f[0], k.to_string(), "{l}");
        assert!(f[1].parse::<u64>().unwrap() >= 1000, "{l}");
        assert_eq!(f[2].len(), 64, "{l}");
    }
}

#[test]
fn python_thread_pool_keeps_its_work() {
    let w = workdir();
    let res = w.path().join("results");
    let mut t = spawn(
        &["/usr/bin/python3", program("thread_pool.py").to_str().unwrap(), res.to_str().unwrap()],
        &w.path().join("out"),
    );
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump_and_restore(&mut t, &img, &[]);
    let task: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join(format!("task-{}.json", t.pid))).unwrap()).unwrap();
    assert_eq!(task["threads"].as_array().unwrap().len(), 9, "the interpreter and its 8 workers");
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
    check_results(&res, 8);
}

#[test]
fn jvm_executor_keeps_its_work() {
    let w = workdir();
    let classes = w.path().join("classes");
    let javac = std::process::Command::new("/usr/bin/javac")
        .args(["-d", classes.to_str().unwrap(), program("Workers.java").to_str().unwrap()])
        .output()
        .expect("javac (default-jdk-headless; `cargo xtask test` installs it)");
    assert!(javac.status.success(), "{}", String::from_utf8_lossy(&javac.stderr));
    let (go, res) = (w.path().join("go"), w.path().join("results"));
    let mut c = std::process::Command::new("/usr/bin/java");
    // No perf data file: it would be one more file shared with tools outside.
    c.args(["-XX:-UsePerfData", "-XX:+UseSerialGC", "-Xmx64m", "-cp", classes.to_str().unwrap(), "Workers"]);
    c.args([go.to_str().unwrap(), res.to_str().unwrap()]);
    let mut t = spawn_command(c, &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump_and_restore(&mut t, &img, &[]);
    let task: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join(format!("task-{}.json", t.pid))).unwrap()).unwrap();
    let threads = task["threads"].as_array().unwrap().len();
    assert!(threads > 10, "a JVM has its workers, GC and compiler threads: {threads}");
    std::fs::write(&go, "").unwrap();
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
    check_results(&res, 6);
}
