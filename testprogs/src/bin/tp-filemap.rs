//! A private file mapping with one page written (copy-on-write), a shared
//! mapping written through, and a file open at an offset. On SIGUSR1 it
//! checks each.
use ferry_testprogs::{check, say};
use std::os::fd::AsRawFd;

const PAGE: usize = 4096;

fn main() {
    let private_path = ferry_testprogs::arg(1);
    let shared_path = ferry_testprogs::arg(2);
    let original = std::fs::read(&private_path).unwrap();
    check(original.len() >= 4 * PAGE, 2, "file too small");
    let f = std::fs::File::open(&private_path).unwrap();
    let s = std::fs::OpenOptions::new().read(true).write(true).open(&shared_path).unwrap();
    // SAFETY: plain mmap/lseek on files we opened.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        ) as *mut u8;
        check(p as *mut libc::c_void != libc::MAP_FAILED, 3, "mmap private");
        // Touch page 0 (read only, stays a file page) and write page 1.
        std::ptr::read_volatile(p);
        *p.add(PAGE + 7) = original[PAGE + 7] ^ 0xff;
        let q = libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            s.as_raw_fd(),
            0,
        ) as *mut u8;
        check(q as *mut libc::c_void != libc::MAP_FAILED, 4, "mmap shared");
        *q.add(100) = b'S';
        let fd = std::fs::File::open(&private_path).unwrap();
        libc::lseek(fd.as_raw_fd(), 1234, libc::SEEK_SET);
        say("ready");
        ferry_testprogs::wait_for_usr1();

        let m = std::slice::from_raw_parts(p, 4 * PAGE);
        check(m[..PAGE] == original[..PAGE], 10, "private page 0 differs from the file");
        check(m[PAGE + 7] == original[PAGE + 7] ^ 0xff, 11, "private write lost");
        check(m[PAGE + 8..] == original[PAGE + 8..4 * PAGE], 12, "private pages differ");
        check(*q.add(100) == b'S', 13, "shared mapping lost its byte");
        *q.add(101) = b'T';
        libc::msync(q.cast(), PAGE, libc::MS_SYNC);
        let shared_now = std::fs::read(&shared_path).unwrap();
        check(shared_now[101] == b'T', 14, "shared mapping no longer writes through to the file");
        check(libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) == 1234, 15, "file offset lost");
        let mut buf = [0u8; 16];
        libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 16);
        check(buf[..] == original[1234..1250], 16, "read at offset returns other data");
        std::mem::forget(fd);
    }
    say("ok");
}
