//! File locks: a flock, an OFD record lock and a POSIX record lock come
//! back held with `--file-locks` (another process cannot take them; the
//! POSIX one is owned by the restored process again), and a task holding
//! one is refused without the flag, as CRIU does.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn locker(w: &std::path::Path) -> (Target, std::path::PathBuf) {
    let file = w.join("locked");
    std::fs::write(&file, vec![0u8; 4096]).unwrap();
    let script = format!(
        "import fcntl, os, struct, time\na = open('{p}', 'r+')\nfcntl.flock(a, fcntl.LOCK_EX)\n\
         b = open('{p}', 'r+')\nfcntl.fcntl(b, fcntl.F_OFD_SETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 100, 50, 0))\n\
         c = open('{p}', 'r+')\nfcntl.fcntl(c, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 200, 10, 0))\n\
         print('ready', flush=True)\ntime.sleep(60)",
        p = file.display()
    );
    let t = spawn(&["/usr/bin/python3", "-c", &script], &w.join("out"));
    t.wait_output("ready", T);
    (t, file)
}

/// The owner of a POSIX lock that keeps this process from writing bytes
/// 200..210 (F_GETLK), if any.
fn posix_owner(file: &std::path::Path) -> Option<i32> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    // SAFETY: fcntl on our own file with a local struct flock.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as _;
        fl.l_start = 200;
        fl.l_len = 10;
        assert_eq!(libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl), 0);
        (fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
    }
}

/// Whether this process can take a flock, and an OFD lock on bytes 120..130.
fn can_lock(file: &std::path::Path) -> (bool, bool) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    // SAFETY: flock and fcntl on our own file, with a local struct flock.
    unsafe {
        let flock = libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0;
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as _;
        fl.l_start = 120;
        fl.l_len = 10;
        let ofd = libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0;
        (flock, ofd)
    }
}

#[test]
fn locks_come_back_held_with_file_locks() {
    let w = workdir();
    let (mut t, file) = locker(w.path());
    assert_eq!(can_lock(&file), (false, false), "the program holds both");
    assert_eq!(posix_owner(&file), Some(t.pid));
    let img = w.path().join("img");
    dump(t.pid, &img, &["--file-locks"]);
    let show = show_image(img.to_str().unwrap());
    for l in ["flock write lock", "OFD write lock on bytes 100-149", "POSIX read lock on bytes 200-209"] {
        assert!(show.contains(l), "{l:?} not in {show}");
    }
    t.reap_killed();
    assert_eq!(can_lock(&file), (true, true), "the dumped program is gone, and its locks");
    assert_eq!(posix_owner(&file), None);
    restore_detached(&img, &[]);
    assert_eq!(can_lock(&file), (false, false), "the restored program holds both again");
    assert_eq!(posix_owner(&file), Some(t.pid), "the restored process owns its POSIX lock");
    // SAFETY: plain kill of the restored program.
    unsafe { libc::kill(t.pid, libc::SIGKILL) };
    wait_pid(t.pid, T);
}

#[test]
fn a_lock_without_file_locks_is_refused() {
    let w = workdir();
    let (t, file) = locker(w.path());
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    let want = format!("{} holds a FLOCK write lock: dump with --file-locks to take it along", file.display());
    assert!(err.contains(&want), "{err}");
    t.assert_running_untraced();
}

#[test]
fn a_posix_lock_without_file_locks_is_refused() {
    let w = workdir();
    let file = w.path().join("locked");
    std::fs::write(&file, vec![0u8; 4096]).unwrap();
    let script = format!(
        "import fcntl, time\nf = open('{}', 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX, 10, 200)\nprint('ready', flush=True)\ntime.sleep(60)",
        file.display()
    );
    let t = spawn(&["/usr/bin/python3", "-c", &script], &w.path().join("out"));
    t.wait_output("ready", T);
    let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", w.path().join("img").to_str().unwrap()]);
    let want = format!("{} holds a POSIX write lock: dump with --file-locks to take it along", file.display());
    assert!(err.contains(&want), "{err}");
    t.assert_running_untraced();
    assert_eq!(posix_owner(&file).map(|_| ()), Some(()));
}
