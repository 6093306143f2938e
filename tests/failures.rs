//! Every failure path: a one-line cause naming what is wrong, a dumped task
//! that is still running and untouched, a restore that leaves no process.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A bigmem task: its memory is checksummed when it gets SIGUSR1.
fn bigmem(w: &Path, mib: &str) -> Target {
    let t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), mib], &w.join("out"));
    t.wait_output("ready", T);
    t
}

/// The task is alive, untraced, and its memory and registers are intact:
/// it verifies its checksum and exits 0.
fn assert_intact(mut t: Target) {
    t.assert_running_untraced();
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
}

fn one_line(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{err}");
    lines[0]
}

#[test]
fn wrong_pid() {
    let w = workdir();
    let err = ferry_err(&["dump", "-t", "4000000", "-D", w.path().to_str().unwrap()]);
    assert_eq!(one_line(&err), "ferry: dump: task 4000000: no such process");
    assert!(std::fs::read_dir(w.path()).unwrap().next().is_none(), "nothing may be written");
}

#[test]
fn unsupported_resources_are_named_and_the_task_is_untouched() {
    let w = workdir();
    let img = w.path().join("img");
    let img = img.to_str().unwrap();
    let cases: &[(&str, &str)] = &[
        ("import socket, time\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))\nprint('ready', flush=True)\ntime.sleep(60)", "(netlink) is not supported yet"),
        ("import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind('\\0ferry-test-listener')\ns.listen()\nc = socket.socket(socket.AF_UNIX)\nc.bind('\\0ferry-test-client')\nc.connect('\\0ferry-test-listener')\na = s.accept()\nprint('ready', flush=True)\ntime.sleep(60)", "bound to @ferry-test-client: bound unix sockets are not supported yet"),
        ("import ctypes, time\nfd = ctypes.CDLL(None).fanotify_init(0, 0)\nassert fd >= 0\nprint('ready', flush=True)\ntime.sleep(60)", "anon_inode:[fanotify] is not supported yet"),
    ];
    for (script, expect) in cases {
        let t = spawn(&["/usr/bin/python3", "-c", script], &w.path().join("out"));
        t.wait_output("ready", T);
        let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img]);
        let line = one_line(&err);
        assert!(line.starts_with(&format!("ferry: dump: task {}", t.pid)), "{line}");
        assert!(line.contains(expect), "expected {expect:?} in {line:?}");
        t.assert_running_untraced();
        assert!(!Path::new(img).join("inventory.json").exists());
    }
}

#[test]
fn deleted_files_over_the_limit_are_refused() {
    let w = workdir();
    // An open file that was deleted, too large to keep in the image.
    let file = w.path().join("gone.txt");
    std::fs::write(&file, vec![b'x'; 2 << 20]).unwrap();
    let script = format!(
        "import os, time\nf = open('{}', 'r+')\nos.unlink(f.name)\nprint('ready', flush=True)\ntime.sleep(60)",
        file.display()
    );
    let t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
    t.wait_output("ready", T);
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    let want =
        format!("{} was deleted while open and holds 2097152 bytes, over the 1048576-byte limit", file.display());
    assert!(one_line(&err).contains(&want), "{err}");
    t.assert_running_untraced();
    // A higher --ghost-limit (CRIU's option, with its K/M/G sizes) takes it.
    let img = w.path().join("img-2m");
    dump(t.pid, &img, &["--ghost-limit", "2M", "--leave-running"]);
    let shown = show_image(img.to_str().unwrap());
    assert!(shown.contains(&format!("{} (deleted), kept in the image, 2.0 MiB", file.display())), "{shown}");
    t.assert_running_untraced();
    // A size it cannot read is a usage error (clap's status 2), named.
    let pid = t.pid.to_string();
    let out = run_ferry(&["dump", "-t", &pid, "-D", w.path().join("img").to_str().unwrap(), "--ghost-limit", "2X"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"2X\" is not a size"), "{err}");

    // Shared memory of a deleted file is kept in the image up to 1 MiB
    // (CRIU's ghost limit): 2 MiB is refused, naming the file.
    let big = w.path().join("big.dat");
    // ctypes' mmap: Python's mmap module keeps an fd of its own.
    let script = format!(
        "import ctypes, os, time\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = ctypes.c_void_p\n\
         libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
         fd = os.open('{p}', os.O_RDWR | os.O_CREAT)\nos.ftruncate(fd, 2 << 20)\np = libc.mmap(None, 2 << 20, 3, 1, fd, 0)\n\
         os.close(fd)\nos.unlink('{p}')\nprint('ready', flush=True)\ntime.sleep(60)",
        p = big.display()
    );
    let t3 = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out3"));
    t3.wait_output("ready", T);
    let err = ferry_err(&["dump", "-t", &t3.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    let want =
        format!("{} was deleted while mapped and holds 2097152 bytes, over the 1048576-byte limit", big.display());
    assert!(one_line(&err).contains(&want), "{err}");
    t3.assert_running_untraced();
}

#[test]
fn already_traced_task_is_refused() {
    let w = workdir();
    let t = bigmem(w.path(), "8");
    let tracer = ferry::ptrace::Tracee::seize(t.pid, 0, ferry::ptrace::OnDrop::Detach).unwrap();
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    assert!(one_line(&err).contains(&format!("is already traced by {} (", nix::unistd::gettid())), "{err}");
    drop(tracer); // stops and detaches the running task
    assert_intact(t);
}

#[test]
fn disk_full_leaves_task_and_directory_clean() {
    let w = workdir();
    let mnt = w.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let t = bigmem(w.path(), "16");
    let img = mnt.join("img");
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
    assert!(one_line(&err).contains("No space left on device"), "{err}");
    assert!(std::fs::read_dir(&img).unwrap().next().is_none(), "partial images left behind");
    assert_intact(t);
}

/// Kill ferry while it holds the task at each dump stage.
#[test]
fn ferry_killed_at_each_dump_stage() {
    for stage in ["freeze", "memory", "write"] {
        let w = workdir();
        let t = bigmem(w.path(), "64");
        let img = w.path().join("img");
        let mut f = ferry_held_at(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()], stage);
        // It is frozen: traced by ferry.
        assert_eq!(t.status().unwrap().tracer_pid, f.id() as i32, "stage {stage}");
        f.kill().unwrap();
        f.wait().unwrap();
        assert!(!img.join("inventory.json").exists(), "stage {stage}: a dump killed midway must not look complete");
        assert_intact(t);
    }
}

#[test]
fn target_killed_mid_dump() {
    let w = workdir();
    let mut t = bigmem(w.path(), "64");
    let img = w.path().join("img");
    let f = ferry_held_at(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()], "memory:1000");
    t.signal(libc::SIGKILL);
    let out = f.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(t.wait_exit(T), WaitResult::Signaled(libc::SIGKILL));
    assert!(!img.join("inventory.json").exists());
    assert!(std::fs::read_dir(&img).map(|d| d.count()).unwrap_or(0) == 0, "partial files left");
}

/// Dump a small task once; the tests below damage copies of the image.
fn dumped(w: &Path) -> (std::path::PathBuf, i32) {
    let mut t = bigmem(w, "4");
    let img = w.join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    let pid = t.pid;
    std::mem::forget(t);
    (img, pid)
}

fn restore_err(img: &Path, pid: i32) -> String {
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap()]);
    assert!(!pid_exists(pid), "a process was left at PID {pid}");
    one_line(&err).to_string()
}

#[test]
fn corrupt_pages_are_detected_and_nothing_runs() {
    let w = workdir();
    let (img, pid) = dumped(w.path());
    let pages = img.join(format!("pages-{pid}.img"));
    let mut data = std::fs::read(&pages).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&pages, &data).unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains(&format!("pages-{pid}.img: checksum mismatch")), "{err}");
}

#[test]
fn truncated_and_missing_images() {
    let w = workdir();
    let (img, pid) = dumped(w.path());
    let pages = img.join(format!("pages-{pid}.img"));
    let len = std::fs::metadata(&pages).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pages).unwrap().set_len(len - 4096).unwrap();
    let err = restore_err(&img, pid);
    assert!(
        err.contains(&format!("pages-{pid}.img: truncated: {} bytes, the inventory says {len}", len - 4096)),
        "{err}"
    );

    let task = img.join(format!("task-{pid}.json"));
    std::fs::remove_file(&task).unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains(&format!("task-{pid}.json: missing")), "{err}");

    std::fs::remove_file(img.join("inventory.json")).unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains("is not a ferry image directory: inventory.json is missing"), "{err}");

    let err = restore_err(&w.path().join("nowhere"), pid);
    assert!(err.contains("nowhere: no such directory"), "{err}");
}

#[test]
fn corrupt_metadata_and_wrong_version() {
    let w = workdir();
    let (img, pid) = dumped(w.path());
    let task = img.join(format!("task-{pid}.json"));
    let text = std::fs::read_to_string(&task).unwrap();
    std::fs::write(&task, text.replacen("\"comm\"", "\"comx\"", 1)).unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains(&format!("task-{pid}.json: checksum mismatch")), "{err}");

    let inv = img.join("inventory.json");
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, text.replace("\"version\": 3,", "\"version\": 9,")).unwrap();
    let err = restore_err(&img, pid);
    assert!(
        err.ends_with("inventory.json: image format version 9 is not supported (this ferry reads version 3)"),
        "{err}"
    );

    std::fs::write(&inv, "{ not json").unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains("inventory.json: invalid JSON"), "{err}");
}

/// An image records the architecture it was dumped on; ferry of another
/// architecture refuses it before creating anything. (The inventory is
/// rewritten as another architecture's ferry writes it, checksum included.)
#[test]
fn image_of_another_architecture_is_refused() {
    use ferry::image::inventory::Inventory;
    use ferry_arch::Arch;
    let w = workdir();
    let (img, pid) = dumped(w.path());
    let path = img.join("inventory.json");
    let mut inv = Inventory::from_bytes(&path, &std::fs::read(&path).unwrap()).unwrap();
    let host = inv.arch;
    assert_eq!(host.name(), std::env::consts::ARCH, "the inventory names this machine's architecture");
    let other = if host == Arch::S390x { Arch::Aarch64 } else { Arch::S390x };
    inv.arch = other;
    std::fs::write(&path, inv.to_bytes_with_checksum()).unwrap();
    let err = restore_err(&img, pid);
    assert_eq!(err, format!("ferry: restore: {}: the image is for {other}, this machine is {host}", path.display()));
}

#[test]
fn pid_in_use_is_reported() {
    let w = workdir();
    let t = bigmem(w.path(), "4");
    let img = w.path().join("img");
    dump(t.pid, &img, &["--leave-running"]);
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap(), "--pid-wait", "1"]);
    assert!(one_line(&err).contains(&format!("PID {} is in use by 'tp-bigmem' (state S", t.pid)), "{err}");
    assert_intact(t);
}

#[test]
fn restore_right_after_dump_waits_for_the_pid() {
    let w = workdir();
    let mut t = bigmem(w.path(), "4");
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    // The killed task stays a zombie for a while: its parent (us) reaps late.
    let mut original = t.take_child();
    let reaper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        original.wait().unwrap()
    });
    restore_detached(&img, &[]);
    reaper.join().unwrap();
    assert_intact(t);
}

#[test]
fn ferry_killed_before_detach_leaves_no_process() {
    let w = workdir();
    let (img, pid) = dumped(w.path());
    let mut f = ferry_held_at(&["restore", "-d", "-D", img.to_str().unwrap()], "detach");
    assert!(pid_exists(pid), "the task is being built");
    f.kill().unwrap();
    f.wait().unwrap();
    // PTRACE_O_EXITKILL: the half-built task dies with ferry; it was
    // re-parented to us (subreaper), so reap it and check it is gone.
    let st = wait_pid(pid, T);
    assert_eq!(st, WaitResult::Signaled(libc::SIGKILL));
    assert!(!pid_exists(pid));
}

#[test]
fn restore_refuses_a_changed_mapped_file() {
    let w = workdir();
    let private = w.path().join("mapped.dat");
    let shared = w.path().join("shared.dat");
    std::fs::write(&private, vec![7u8; 4 * 4096]).unwrap();
    std::fs::write(&shared, vec![7u8; 4096]).unwrap();
    let mut t = spawn(
        &[testprog("tp-filemap").to_str().unwrap(), private.to_str().unwrap(), shared.to_str().unwrap()],
        &w.path().join("out"),
    );
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    std::fs::write(&private, vec![7u8; 2 * 4096]).unwrap();
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap()]);
    // Open fds of the file only warn (the data is the file's); the mapping is an error.
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("ferry: restore: task"), "{err}");
    assert!(last.contains("mapped.dat changed size since the dump (16384 bytes, now 8192)"), "{err}");
    assert!(!pid_exists(t.pid));
    std::mem::forget(t);
}

/// A failure inside the new process (its cwd is gone): named, and no process left.
#[test]
fn restore_failing_in_the_child_leaves_nothing() {
    let w = workdir();
    let cwd = w.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let mut c = std::process::Command::new("/bin/sleep");
    c.arg("1000").current_dir(&cwd);
    let mut t = spawn_command(c, &w.path().join("out"));
    std::thread::sleep(Duration::from_millis(100));
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    std::fs::remove_dir(&cwd).unwrap();
    let err = restore_err(&img, t.pid);
    assert_eq!(err, format!("ferry: restore: task {}: chdir {}: No such file or directory", t.pid, cwd.display()));
}

/// Images are trusted like root: a directory (or file) other users may
/// write is refused before anything is made (the trust model).
#[test]
fn images_writable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let w = workdir();
    let (img, pid) = dumped(w.path());
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains("writable by other users (mode 0777)") && err.contains("chmod go-w"), "{err}");
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o700)).unwrap();
    let task = img.join(format!("task-{pid}.json"));
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains(&format!("task-{pid}.json: refusing this image file")), "{err}");
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Owned by someone else.
    nix::unistd::chown(&img, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let err = restore_err(&img, pid);
    assert!(err.contains("belongs to uid 65534"), "{err}");
    nix::unistd::chown(&img, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    // Put right, it restores.
    let out = restore_detached(&img, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap_all(&[pid], Duration::from_secs(10));
}

/// Found by the image fuzzer: a consistent image (checksums right) whose
/// pagemap lists more pages than its pages file holds was read past the
/// end of the mapping (a panic). Now it is refused by name.
#[test]
fn pagemap_pointing_past_its_pages_file_is_refused() {
    let w = workdir();
    let (img, pid) = dumped(w.path());
    let pages = img.join(format!("pages-{pid}.img"));
    std::fs::OpenOptions::new().write(true).open(&pages).unwrap().set_len(4096).unwrap();
    common::fuzz::reseal(&img, true);
    let err = restore_err(&img, pid);
    assert!(err.contains("lie beyond the end of") && err.contains(&format!("pages-{pid}.img (4096 bytes)")), "{err}");
}

/// Found by the image fuzzer: `ferry show` added counters of stats.json
/// and overflowed on absurd ones; it shows them as they are.
#[test]
fn show_survives_absurd_counters() {
    let w = workdir();
    let (img, _pid) = dumped(w.path());
    let stats = img.join("stats.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    v["pages_in_parent"] = serde_json::json!(u64::MAX);
    v["pages_lazy"] = serde_json::json!(u64::MAX);
    std::fs::write(&stats, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    common::fuzz::reseal(&img, true);
    let out = ferry_ok(&["show", img.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} pages unchanged", u64::MAX)));
}
