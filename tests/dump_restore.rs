//! Dump and restore real processes on the real kernel: each task comes back
//! at its PID with its state intact and runs to a correct exit.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn counter_continues_without_gap() {
    let w = workdir();
    let file = w.path().join("count.txt");
    let mut t =
        spawn(&[testprog("tp-counter").to_str().unwrap(), file.to_str().unwrap(), "400"], &w.path().join("out"));
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&file).unwrap_or_default().lines().count() < 50 {
        assert!(start.elapsed() < T, "counter did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    dump_and_restore(&mut t, &w.path().join("img"), &[]);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    let lines: Vec<u64> = std::fs::read_to_string(&file).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(lines, (0..400).collect::<Vec<u64>>(), "the count has a gap or a repeat");
}

#[test]
fn big_memory_checksum_survives() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), "512"], &w.path().join("out"));
    let before = t.wait_output("ready", T);
    let img = w.path().join("img");
    dump_and_restore(&mut t, &img, &[]);
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(img.join("stats.json")).unwrap()).unwrap();
    assert!(stats["bytes_written"].as_u64().unwrap() >= 512 << 20, "{stats}");
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert_eq!(t.output(), format!("{}ok\n", before));
}

#[test]
fn nanosleep_resumes_with_the_time_left() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-sleeper").to_str().unwrap(), "3"], &w.path().join("out"));
    t.wait_output("ready", T);
    std::thread::sleep(Duration::from_millis(300));
    let start = std::time::Instant::now();
    dump_and_restore(&mut t, &w.path().join("img"), &[]);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    let out = t.output();
    assert!(out.contains("ok slept") && out.contains("interrupted 1"), "{out}");
    // It slept the time left, not a fresh 3 s (dump+restore take well under 1 s here,
    // but allow for a loaded machine).
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
}

/// Blocked in pause, FUTEX_WAIT, or FUTEX_WAIT with a timeout: each resumes
/// its wait after restore and wakes up when the signal comes.
#[test]
fn blocking_waits_resume() {
    for mode in ["pause", "futex", "futex-timeout"] {
        let w = workdir();
        let mut t = spawn(&[testprog("tp-wait").to_str().unwrap(), mode], &w.path().join("out"));
        t.wait_output("ready", T);
        std::thread::sleep(Duration::from_millis(100));
        let img = w.path().join("img");
        dump_and_restore(&mut t, &img, &[]);
        let task: serde_json::Value =
            serde_json::from_slice(&std::fs::read(img.join(format!("task-{}.json", t.pid))).unwrap()).unwrap();
        assert_ne!(task["threads"][0]["restart"], "not_in_syscall", "{mode}: not dumped inside the wait");
        // Still waiting after the restore.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!t.output().contains("ok"), "{mode}: woke up by itself: {}", t.output());
        t.signal(libc::SIGUSR1);
        assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "{mode}: output: {}", t.output());
    }
}

#[test]
fn log_file_goes_to_the_images_dir() {
    let w = workdir();
    let t = spawn(&[testprog("tp-wait").to_str().unwrap(), "pause"], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    let out = dump(t.pid, &img, &["-R", "-v4", "-o", "dump.log"]);
    assert!(out.stderr.is_empty(), "with -o nothing goes to stderr: {}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(img.join("dump.log")).unwrap();
    assert!(log.contains("tree frozen") && log.contains("DEBUG"), "{log}");
    t.assert_running_untraced();
}

#[test]
fn signal_state_survives() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-signals").to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready", T);
    restore_and_self_check(&mut t, &w.path().join("img"), &[]);
}

/// File mappings (private with a page written, shared) and an offset;
/// then the same with the privately mapped (and open) file deleted before
/// the dump, as a library an upgrade replaced under a running program:
/// its content goes into the image and the pages come back the same.
#[test]
fn file_mappings_and_offsets_survive() {
    for deleted in [false, true] {
        let w = workdir();
        let private = w.path().join("private.dat");
        let shared = w.path().join("shared.dat");
        let mut data = vec![0u8; 4 * 4096];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        std::fs::write(&private, &data).unwrap();
        std::fs::write(&shared, vec![b'.'; 4096]).unwrap();
        let mut t = spawn(
            &[testprog("tp-filemap").to_str().unwrap(), private.to_str().unwrap(), shared.to_str().unwrap()],
            &w.path().join("out"),
        );
        t.wait_output("ready", T);
        if deleted {
            std::fs::remove_file(&private).unwrap();
        }
        restore_and_self_check(&mut t, &w.path().join("img"), &[]);
        if deleted {
            let shown = show_image(w.path().join("img").to_str().unwrap());
            assert!(shown.contains(&format!("{} (deleted), kept in the image", private.display())), "{shown}");
        }
    }
}

#[test]
fn live_vector_registers_survive() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-fpu").to_str().unwrap(), "2000000000"], &w.path().join("out"));
    t.wait_output("ready", T);
    std::thread::sleep(Duration::from_millis(200));
    let img = w.path().join("img");
    dump_and_restore(&mut t, &img, &[]);
    // It was dumped mid-loop, in user space.
    let task: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join(format!("task-{}.json", t.pid))).unwrap()).unwrap();
    assert_eq!(task["threads"][0]["restart"], "not_in_syscall", "dumped outside the loop?");
    assert_eq!(t.wait_exit(Duration::from_secs(120)), WaitResult::Exited(0), "output: {}", t.output());
}

#[test]
fn guard_pages_survive() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-guard").to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready", T);
    restore_and_self_check(&mut t, &w.path().join("img"), &[]);
}

#[test]
fn coreutils_sleep_comes_back() {
    let w = workdir();
    let mut t = spawn(&["/bin/sleep", "1000"], &w.path().join("out"));
    std::thread::sleep(Duration::from_millis(200));
    let before = std::fs::read_to_string(format!("/proc/{}/cmdline", t.pid)).unwrap();
    dump_and_restore(&mut t, &w.path().join("img"), &[]);
    let after = std::fs::read_to_string(format!("/proc/{}/cmdline", t.pid)).unwrap();
    assert_eq!(before, after, "argv area differs");
    assert_eq!(std::fs::read_link(format!("/proc/{}/exe", t.pid)).unwrap(), std::path::Path::new("/usr/bin/sleep"));
    std::thread::sleep(Duration::from_millis(300));
    t.assert_running_untraced();
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_exit(T), WaitResult::Signaled(libc::SIGTERM));
}

#[test]
fn coreutils_sleep_finishes_on_time() {
    let w = workdir();
    let mut t = spawn(&["/bin/sleep", "3"], &w.path().join("out"));
    std::thread::sleep(Duration::from_millis(500));
    dump_and_restore(&mut t, &w.path().join("img"), &[]);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0));
}

#[test]
fn python_loop_keeps_its_state() {
    let w = workdir();
    let out = w.path().join("py.txt");
    let script = "import sys, time\n\
                  f = open(sys.argv[1], 'w')\n\
                  total = 0\n\
                  for i in range(300):\n\
                  \x20   total += i * i\n\
                  \x20   f.write(f'{i} {total}\\n'); f.flush()\n\
                  \x20   time.sleep(0.005)\n\
                  sys.exit(0 if total == sum(i * i for i in range(300)) else 3)\n";
    let mut t = spawn(&["/usr/bin/python3", "-c", script, out.to_str().unwrap()], &w.path().join("stdout"));
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&out).unwrap_or_default().lines().count() < 30 {
        assert!(start.elapsed() < T, "python did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    dump_and_restore(&mut t, &w.path().join("img"), &[]);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0));
    let mut total = 0u64;
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 300);
    for (i, l) in lines.iter().enumerate() {
        total += (i * i) as u64;
        assert_eq!(*l, format!("{i} {total}"));
    }
}

#[test]
fn terminal_reader_with_shell_job() {
    let w = workdir();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pty.slave))).unwrap();
    // Held open for the whole test: while no slave is open (between the
    // dump's kill and the restore, or once the reader has exited) a read on
    // the master fails with EIO, and the reader's last words could be lost.
    let _slave = pty.slave;
    let mut master = std::fs::File::from(pty.master);
    let t_out = w.path().join("unused");
    let mut t = spawn_with(&[testprog("tp-ttyreader").to_str().unwrap()], &t_out, Stdin::Tty(slave));
    let mut seen = String::new();
    read_until(&mut master, &mut seen, "ready");
    // It is blocked in read() on the terminal now.
    std::thread::sleep(Duration::from_millis(100));
    let img = w.path().join("img");
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
    assert!(err.contains("is a terminal") && err.contains("--shell-job"), "{err}");
    t.assert_running_untraced();
    dump_and_restore(&mut t, &img, &["--shell-job"]);
    use std::io::Write;
    master.write_all(b"hello\n").unwrap();
    let mut seen = String::new();
    read_until(&mut master, &mut seen, "got: hello");
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0));
}

fn read_until(master: &mut std::fs::File, seen: &mut String, what: &str) {
    use std::io::Read;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 256];
    while !seen.contains(what) {
        assert!(start.elapsed() < T, "terminal never showed {what:?}: {seen:?}");
        let fd = std::os::fd::AsFd::as_fd(master);
        let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16)).unwrap() == 0 {
            continue;
        }
        let n = master.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn restore_without_detach_passes_the_exit_status_through() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-sleeper").to_str().unwrap(), "1"], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    let out = ferry_ok(&["restore", "-D", img.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(t.output().contains("ok slept"), "{}", t.output());

    // A task that fails: ferry exits with its status.
    let mut t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), "1"], &w.path().join("out2"));
    t.wait_output("ready", T);
    let img2 = w.path().join("img2");
    dump(t.pid, &img2, &[]);
    t.reap_killed();
    let pid = t.pid;
    let h = std::thread::spawn(move || run_ferry(&["restore", "-D", img2.to_str().unwrap(), "--pidfile", "/dev/null"]));
    while !pid_exists(pid) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = h.join().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{out:?}");
}

#[test]
fn leave_running_and_pidfile() {
    let w = workdir();
    let file = w.path().join("count.txt");
    let mut t =
        spawn(&[testprog("tp-counter").to_str().unwrap(), file.to_str().unwrap(), "300"], &w.path().join("out"));
    std::thread::sleep(Duration::from_millis(200));
    let img = w.path().join("img");
    dump(t.pid, &img, &["--leave-running"]);
    t.assert_running_untraced();
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0));
    let lines: Vec<u64> = std::fs::read_to_string(&file).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(lines, (0..300).collect::<Vec<u64>>());
}

#[test]
fn show_prints_every_part() {
    let w = workdir();
    let t = spawn(&[testprog("tp-signals").to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &["-R"]);
    let out = ferry_ok(&["show", img.to_str().unwrap()]);
    let s = String::from_utf8(out.stdout).unwrap();
    for part in [
        "format       ferry-images v3",
        "task-",
        "pages-",
        "[stack]",
        "[heap]",
        "SIGUSR1",
        "pending for the process: SIGUSR2",
        "thread ",
        "rip=",
        "ok",
    ] {
        assert!(s.contains(part), "show output lacks {part:?}:\n{s}");
    }
    let task = format!("task-{}.json", t.pid);
    let out = ferry_ok(&["show", img.to_str().unwrap(), &task]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pid"], t.pid);
    let out = ferry_ok(&["show", img.to_str().unwrap(), &format!("pages-{}.img", t.pid)]);
    assert!(String::from_utf8(out.stdout).unwrap().contains("extents"));
    // The binary pagemap is shown as JSON.
    let out = ferry_ok(&["show", img.to_str().unwrap(), &format!("pagemap-{}.img", t.pid)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pages_file"], format!("pages-{}.img", t.pid));
    assert!(v["entries"].as_array().unwrap().iter().any(|e| e["flags"] == "present"), "{v}");
}

#[test]
fn check_passes_here() {
    let out = ferry_ok(&["check"]);
    let s = String::from_utf8(out.stdout).unwrap();
    for f in
        ["ptrace-seize", "clone3-set-tid", "prctl-mm-map", "uffd-wp-async", "pagemap-scan", "soft-dirty", "page-size"]
    {
        assert!(s.contains(f), "{s}");
    }
    assert!(s.contains("Looks good"), "{s}");
}

/// A file deleted while open and mapped shared is kept in the image (up to
/// 1 MiB) as one object: after restore a write through the mapping shows
/// through the fd, and the content and offset are as they were.
#[test]
fn deleted_file_open_and_mapped_is_one_object() {
    let w = workdir();
    let file = w.path().join("scratch");
    let script = format!(
        "import mmap, os, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})\n\
         f = open('{p}', 'w+b')\nf.write(b'hello')\nf.truncate(4096)\nf.flush()\nf.seek(3)\n\
         m = mmap.mmap(f.fileno(), 4096)\nos.unlink('{p}')\nprint('ready', flush=True)\n\
         signal.sigwait({{signal.SIGUSR1}})\nassert os.pread(f.fileno(), 5, 0) == b'hello'\n\
         assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == 3\nm[0:5] = b'world'\n\
         assert os.pread(f.fileno(), 5, 0) == b'world'\nprint('ok', flush=True)",
        p = file.display()
    );
    let mut t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    let show = show_image(img.to_str().unwrap());
    assert!(
        show.contains("memory 0  deleted-file") && !show.contains("memory 1 "),
        "one object for the fd and the mapping:\n{show}"
    );
    let out = restore_and_wake(&mut t, &img);
    assert!(out.ends_with("ok\n"), "{out}");
}

/// Run ferry with stderr on a new terminal; returns all it drew there.
fn ferry_on_terminal(args: &[&str]) -> String {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let status = std::process::Command::new(ferry())
        .args(args)
        .env("FERRY_PROGRESS_DELAY_MS", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::from(pty.slave))
        .status()
        .unwrap();
    assert!(status.success(), "ferry {args:?}: {status}");
    // The slave is closed now: read what is left, up to EIO.
    let mut master = std::fs::File::from(pty.master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// On a terminal, dump and restore draw a bar with bytes, rate and time
/// left; into a pipe they print no bar and no terminal codes. The memory
/// comes back whole either way.
#[test]
fn progress_bars_on_a_terminal_only() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), "64"], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    let drawn = ferry_on_terminal(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
    assert!(drawn.contains("dumping pages [") && drawn.contains("/64.") && drawn.contains("B/s"), "{drawn:?}");
    t.reap_killed();
    let drawn = ferry_on_terminal(&["restore", "-d", "-D", img.to_str().unwrap()]);
    assert!(drawn.contains("restoring pages [") && drawn.contains(" left"), "{drawn:?}");
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "{}", t.output());

    let mut t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), "64"], &w.path().join("out2"));
    t.wait_output("ready", T);
    let img = w.path().join("img2");
    let mut c = std::process::Command::new(ferry());
    c.args(["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]).env("FERRY_PROGRESS_DELAY_MS", "0");
    let out = c.output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("dumping pages") && !err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    restore_and_wake(&mut t, &img);
}

/// A process under a seccomp filter (both threads): the restore installs
/// the dumped program again in each thread; the program checks getppid
/// still fails as its filter says, and /proc shows the filter.
#[test]
fn seccomp_filters_come_back_in_every_thread() {
    let w = workdir();
    let mut t = spawn(&[testprog("tp-seccomp").to_str().unwrap()], &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    restore_and_self_check(&mut t, &img, &[]);
    let task: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join(format!("task-{}.json", t.pid))).unwrap()).unwrap();
    for th in task["threads"].as_array().unwrap() {
        assert_eq!(th["seccomp"].as_array().map(Vec::len), Some(1), "{th}");
    }
}
