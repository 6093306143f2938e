//! Pre-copy: pre-dump rounds while the task runs, incremental images, and
//! restore through the chain of parent images, for every dirty tracker this
//! kernel has (soft-dirty only where CONFIG_MEM_SOFT_DIRTY is set: the VM
//! guests run it).

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Trackers `ferry check` says work here.
fn trackers() -> Vec<&'static str> {
    let mut out = vec!["hashing"];
    for (feature, name) in [("uffd-wp-async", "uffd-wp"), ("soft-dirty", "soft-dirty")] {
        if run_ferry(&["check", "--feature", feature]).status.success() {
            out.push(name);
        }
    }
    out
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("stats.json")).unwrap()).unwrap()
}

fn holders_of(pid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            // A holder keeps a pidfd of its task at fd 4.
            let st = ferry::proc::ProcDir::new(*p).stat();
            st.is_ok_and(|s| s.comm == "ferry-track" && s.state != 'Z')
                && std::fs::read_to_string(format!("/proc/{p}/fdinfo/4"))
                    .is_ok_and(|info| info.contains(&format!("Pid:\t{pid}\n")))
        })
        .count()
}

fn wait_no_holder(pid: i32) {
    let start = std::time::Instant::now();
    while holders_of(pid) > 0 {
        assert!(start.elapsed() < T, "tracking holder for {pid} did not go away");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The DESIGN.md sequence: two pre-dumps and a final dump, each writing only
/// what changed, with memory whose layout keeps changing (mmap, munmap,
/// mremap, MADV_DONTNEED); the restored task checks every page.
#[test]
fn precopy_chain_with_changing_layout() {
    for tracker in trackers() {
        let w = workdir();
        let mut t = spawn(&[testprog("tp-churn").to_str().unwrap(), "64", "5", "layout"], &w.path().join("out"));
        t.wait_output("ready", T);
        let pid = t.pid.to_string();
        let d = |n: u32| w.path().join(n.to_string());
        let tr = ["--dirty-tracker", tracker];
        ferry_ok(&[&["pre-dump", "-t", &pid, "-D", d(1).to_str().unwrap()][..], &tr].concat());
        std::thread::sleep(Duration::from_millis(500));
        ferry_ok(
            &[
                &["pre-dump", "-t", &pid, "-D", d(2).to_str().unwrap(), "--prev-images-dir", "../1", "--track-mem"][..],
                &tr,
            ]
            .concat(),
        );
        std::thread::sleep(Duration::from_millis(500));
        // The final dump infers the tracker from its parent.
        ferry_ok(&["dump", "-t", &pid, "-D", d(3).to_str().unwrap(), "--prev-images-dir", "../2", "--track-mem"]);
        t.reap_killed();
        let (s1, s2, s3) = (stats(&d(1)), stats(&d(2)), stats(&d(3)));
        let full = s1["pages_written"].as_u64().unwrap();
        assert!(full >= 64 * 256, "{tracker}: first round copied {full} pages");
        for (n, s) in [(2, &s2), (3, &s3)] {
            let copied = s["pages_written"].as_u64().unwrap();
            assert!(copied < full / 2, "{tracker}: round {n} copied {copied} of {full} pages: not incremental");
            assert!(s["pages_in_parent"].as_u64().unwrap() > full / 2, "{tracker}: round {n}: {s}");
        }
        restore_detached(&d(3), &[]);
        restore_and_check_after(&mut t);
        wait_no_holder(t.pid);
    }
}

fn restore_and_check_after(t: &mut Target) {
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().contains("ok"), "{}", t.output());
}

/// An incremental image holds the pages the task wrote, and (almost) only
/// those: 300 pages dirtied between rounds, plus the few the program
/// touches to do it (stack, stdout buffer).
#[test]
fn incremental_images_match_the_dirtied_set() {
    for tracker in trackers() {
        let w = workdir();
        let mut t = spawn(&[testprog("tp-dirty").to_str().unwrap(), "32", "300"], &w.path().join("out"));
        t.wait_output("ready", T);
        let pid = t.pid.to_string();
        let d = |n: u32| w.path().join(n.to_string());
        ferry_ok(&["pre-dump", "-t", &pid, "-D", d(1).to_str().unwrap(), "--dirty-tracker", tracker]);
        t.signal(libc::SIGUSR2);
        t.wait_output("dirtied 300", T);
        ferry_ok(&["pre-dump", "-t", &pid, "-D", d(2).to_str().unwrap(), "--prev-images-dir", "../1"]);
        t.signal(libc::SIGUSR2);
        t.wait_output("dirtied 600", T);
        ferry_ok(&["dump", "-t", &pid, "-D", d(3).to_str().unwrap(), "--prev-images-dir", "../2"]);
        t.reap_killed();
        for n in [2, 3] {
            let copied = stats(&d(n))["pages_written"].as_u64().unwrap();
            assert!((300..300 + 40).contains(&copied), "{tracker}: round {n} copied {copied} pages for 300 dirtied");
            let size = std::fs::metadata(d(n).join(format!("pages-{pid}.img"))).unwrap().len();
            assert_eq!(size, copied * 4096);
        }
        restore_detached(&d(3), &[]);
        restore_and_check_after(&mut t);
    }
}

#[test]
fn tracking_ends_with_the_task_and_with_the_final_dump() {
    if !trackers().contains(&"uffd-wp") {
        return;
    }
    let w = workdir();
    let mut t = spawn(&[testprog("tp-dirty").to_str().unwrap(), "8", "10"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    ferry_ok(&["pre-dump", "-t", &pid, "-D", w.path().join("1").to_str().unwrap(), "--dirty-tracker", "uffd-wp"]);
    assert_eq!(holders_of(t.pid), 1, "one holder keeps the userfaultfd");
    // The task itself does not see it.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", t.pid))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_link(e.path()).unwrap().display().to_string())
        .collect();
    assert!(!fds.iter().any(|f| f.contains("userfaultfd")), "{fds:?}");
    // The task exits: the holder follows.
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    wait_no_holder(t.pid);

    // A final dump ends tracking too.
    let t2 = spawn(&[testprog("tp-dirty").to_str().unwrap(), "8", "10"], &w.path().join("out2"));
    t2.wait_output("ready", T);
    let pid = t2.pid.to_string();
    ferry_ok(&["pre-dump", "-t", &pid, "-D", w.path().join("a").to_str().unwrap()]);
    assert_eq!(holders_of(t2.pid), 1);
    ferry_ok(&["dump", "-t", &pid, "-D", w.path().join("b").to_str().unwrap(), "--prev-images-dir", "../a", "-R"]);
    wait_no_holder(t2.pid);
    t2.assert_running_untraced();
}

#[test]
fn flag_mistakes_are_explained() {
    let w = workdir();
    let t = spawn(&[testprog("tp-dirty").to_str().unwrap(), "4", "10"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    let err = ferry_err(&["dump", "-t", &pid, "-D", w.path().join("x").to_str().unwrap(), "--track-mem"]);
    assert!(err.contains("--track-mem without --prev-images-dir") && err.contains("--leave-running"), "{err}");
    let err =
        ferry_err(&["dump", "-t", &pid, "-D", w.path().join("x").to_str().unwrap(), "--prev-images-dir", "../nope"]);
    assert!(err.contains("--prev-images-dir ../nope"), "{err}");
    ferry_ok(&["pre-dump", "-t", &pid, "-D", w.path().join("1").to_str().unwrap(), "--dirty-tracker", "hashing"]);
    let err = ferry_err(&[
        "pre-dump",
        "-t",
        &pid,
        "-D",
        w.path().join("2").to_str().unwrap(),
        "--prev-images-dir",
        "../1",
        "--dirty-tracker",
        "uffd-wp",
    ]);
    assert!(err.contains("tracked with hashing"), "{err}");
    let err = ferry_err(&["restore", "-D", w.path().join("1").to_str().unwrap()]);
    assert!(err.contains("holds a pre-dump"), "{err}");
    t.assert_running_untraced();
}

/// Page identities are frame numbers here: a dump keeps them only while
/// the task lives on. A final dump (the task killed) writes none, and a
/// later dump that names it as its parent copies every page instead of
/// trusting frames the dead task no longer owns.
#[test]
fn page_identities_are_kept_only_while_the_task_lives_on() {
    if !trackers().contains(&"uffd-wp") {
        return;
    }
    let w = workdir();
    let mut t = spawn(&[testprog("tp-dirty").to_str().unwrap(), "16", "100"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    let d = |n: &str| w.path().join(n);
    let ids = |n: &str| d(n).join(format!("pageids-{pid}.img")).exists();
    ferry_ok(&["dump", "-t", &pid, "-D", d("a").to_str().unwrap(), "-R", "--track-mem"]);
    assert!(ids("a"), "a dump that leaves the task running keeps its page identities");
    ferry_ok(&["dump", "-t", &pid, "-D", d("b").to_str().unwrap(), "--prev-images-dir", "../a", "--track-mem"]);
    t.reap_killed();
    assert!(!ids("b"), "a final dump of a task that ends wrote page identities");
    assert!(stats(&d("b"))["pages_in_parent"].as_u64().unwrap() > 16 * 256 / 2, "{}", stats(&d("b")));
    restore_detached(&d("b"), &[]);
    // The restored task, dumped against the final dump: no identities to
    // compare (and no tracking to say what is unchanged), all copied.
    ferry_ok(&["dump", "-t", &pid, "-D", d("c").to_str().unwrap(), "--prev-images-dir", "../b", "-R"]);
    let c = stats(&d("c"));
    assert_eq!(c["pages_in_parent"].as_u64(), Some(0), "{c}");
    assert!(c["pages_written"].as_u64().unwrap() >= 16 * 256, "{c}");
    restore_and_check_after(&mut t);
}
