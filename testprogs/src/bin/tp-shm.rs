//! Memory a parent and its child share, of every kind: shared anonymous
//! memory, a memfd held open (sealed), a memfd only mapped, a POSIX shared
//! memory file, a System V segment marked for removal, and private memory
//! still shared copy-on-write since the fork; plus a locked (mlock) area.
//! On SIGUSR1 (to the parent, after a restore) the child writes a mark into
//! each shared area and checks the copy-on-write data; the parent then
//! finds every mark (the memory is still shared), its own data intact,
//! the seals, names, segment state and lock, and prints "ok".
use ferry_testprogs::{check, checksum, fill_pattern, say};
use std::ffi::CString;

const KIB: usize = 1024;
const F_ADD_SEALS: i32 = 1033;
const F_GET_SEALS: i32 = 1034;
const F_SEAL_SHRINK: i32 = 2;
const F_SEAL_GROW: i32 = 4;

/// A mapping of `len` bytes; panics on failure.
fn map(len: usize, prot: i32, flags: i32, fd: i32) -> &'static mut [u8] {
    // SAFETY: a fresh mapping used for the whole life of the program.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0);
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        std::slice::from_raw_parts_mut(p as *mut u8, len)
    }
}

fn memfd(name: &str, len: usize, flags: u32) -> i32 {
    let n = CString::new(name).unwrap();
    // SAFETY: memfd_create and ftruncate on the new fd.
    unsafe {
        let fd = libc::memfd_create(n.as_ptr(), flags);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, len as i64), 0);
        fd
    }
}

struct Areas {
    anon: &'static mut [u8],
    memfd_open: &'static mut [u8],
    memfd_mapped: &'static mut [u8],
    posix: &'static mut [u8],
    sysv: &'static mut [u8],
}

impl Areas {
    fn all(&mut self) -> [(&'static str, &mut [u8]); 5] {
        [
            ("shared anonymous", &mut *self.anon),
            ("memfd (open)", &mut *self.memfd_open),
            ("memfd (mapped)", &mut *self.memfd_mapped),
            ("POSIX shm", &mut *self.posix),
            ("System V", &mut *self.sysv),
        ]
    }
}

fn main() {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: getpid has no side effects.
    let me = unsafe { libc::getpid() };
    let anon = map(1024 * KIB, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
    let open_fd = memfd("tp-memfd-open", 64 * KIB, libc::MFD_ALLOW_SEALING);
    let memfd_open = map(64 * KIB, rw, libc::MAP_SHARED, open_fd);
    // SAFETY: fcntl on our memfd; dup2 to a fixed number.
    unsafe {
        assert_eq!(libc::fcntl(open_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        libc::dup2(open_fd, 30);
        libc::close(open_fd);
    }
    let mapped_fd = memfd("tp-memfd-mapped", 32 * KIB, 0);
    let memfd_mapped = map(32 * KIB, rw, libc::MAP_SHARED, mapped_fd);
    // SAFETY: closing our own fd; the mapping stays.
    unsafe { libc::close(mapped_fd) };
    let shm_name = CString::new(format!("/tp-shm-{me}")).unwrap();
    // SAFETY: shm_open, ftruncate, close on our own object.
    let posix = unsafe {
        let fd = libc::shm_open(shm_name.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, 64 * KIB as i64), 0);
        let m = map(64 * KIB, rw, libc::MAP_SHARED, fd);
        libc::close(fd);
        m
    };
    // SAFETY: a private segment, attached once, marked for removal.
    let (shmid, sysv) = unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, 128 * KIB, 0o600);
        assert!(id >= 0);
        let p = libc::shmat(id, std::ptr::null(), 0);
        assert_ne!(p as isize, -1);
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        (id, std::slice::from_raw_parts_mut(p as *mut u8, 128 * KIB))
    };
    let mut areas = Areas { anon, memfd_open, memfd_mapped, posix, sysv };
    for (i, (_, a)) in areas.all().into_iter().enumerate() {
        fill_pattern(a, 100 + i as u64);
    }
    let sums: Vec<u64> = areas.all().iter().map(|(_, a)| checksum(&a[4096..])).collect();
    // Private, written before the fork: shared copy-on-write until written.
    let private = map(4096 * KIB, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1);
    fill_pattern(private, 7);
    let private_sum = checksum(private);
    let locked = map(64 * KIB, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1);
    fill_pattern(locked, 9);
    // SAFETY: mlock of our own mapping.
    unsafe { assert_eq!(libc::mlock(locked.as_ptr().cast(), locked.len()), 0) };

    // SAFETY: block SIGUSR1 everywhere before the fork.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    // SAFETY: fork; the child uses only what it inherited.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // The first byte of the shared anonymous area says "ready".
        areas.anon[0] = 1;
        ferry_testprogs::wait_for_usr1();
        for (i, (_, a)) in areas.all().into_iter().enumerate() {
            a[1] = 0xc0 + i as u8;
        }
        check(checksum(private) == private_sum, 2, "child: the copy-on-write data changed");
        // SAFETY: leave without the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: a volatile read of memory the child writes.
    while unsafe { std::ptr::read_volatile(areas.anon.as_ptr()) } != 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    say(&format!("ready child={child} shmid={shmid}"));
    ferry_testprogs::wait_for_usr1();
    // SAFETY: plain kill and waitpid of our child.
    unsafe {
        libc::kill(child, libc::SIGUSR1);
        let mut st = 0;
        check(libc::waitpid(child, &mut st, 0) == child, 3, "the child is gone");
        check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, 4, &format!("the child failed: {st:#x}"));
    }
    for (i, (name, a)) in areas.all().into_iter().enumerate() {
        check(a[1] == 0xc0 + i as u8, 10 + i as i32, &format!("{name}: the child's write is not seen (not shared)"));
        check(checksum(&a[4096..]) == sums[i], 20 + i as i32, &format!("{name}: contents changed"));
    }
    check(checksum(private) == private_sum, 30, "the copy-on-write data changed");
    check(
        checksum(locked) == {
            let mut v = vec![0u8; 64 * KIB];
            fill_pattern(&mut v, 9);
            checksum(&v)
        },
        31,
        "locked data changed",
    );
    // SAFETY: fcntl and pwrite on fd 30, our memfd.
    unsafe {
        let seals = libc::fcntl(30, F_GET_SEALS);
        check(seals == F_SEAL_SHRINK | F_SEAL_GROW, 32, &format!("memfd seals {seals:#x}"));
        // The fd and the mapping are one object.
        let b = [0x5au8];
        libc::pwrite(30, b.as_ptr().cast(), 1, 2);
    }
    check(areas.memfd_open[2] == 0x5a, 33, "memfd: the fd and the mapping are not one object");
    let link = std::fs::read_link("/proc/self/fd/30").unwrap();
    check(link.to_string_lossy() == "/memfd:tp-memfd-open (deleted)", 34, &format!("memfd name {link:?}"));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vmlck: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmLck:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    check(vmlck >= 64, 35, &format!("VmLck {vmlck} kB: the lock was lost"));
    let seg = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let line = seg.lines().find(|l| l.split_whitespace().nth(1) == Some(&shmid.to_string()));
    let f: Vec<&str> = line.map(|l| l.split_whitespace().collect()).unwrap_or_default();
    check(f.len() > 6, 36, "the System V segment is gone");
    let perms = u32::from_str_radix(f[2], 8).unwrap();
    check(perms & 0o777 == 0o600 && perms & 0o1000 != 0, 37, &format!("segment perms {perms:o} (want 600, removed)"));
    check(f[6] == "1", 38, &format!("segment attached {} times, not 1", f[6]));
    // SAFETY: removing our POSIX object.
    unsafe { libc::shm_unlink(shm_name.as_ptr()) };
    say("ok");
}
