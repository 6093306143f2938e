//! Guard pages: PROT_NONE between written pages, and a page written before
//! being made PROT_NONE. On SIGUSR1 it checks the data, the layout, and that
//! the guard still faults.
use ferry_testprogs::{check, say};

const PAGE: usize = 4096;

fn main() {
    // SAFETY: plain mmap/mprotect/fork on memory we own.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) as *mut u8;
        let pages = std::slice::from_raw_parts_mut(p, 4 * PAGE);
        ferry_testprogs::fill_pattern(pages, 77);
        let expect = pages.to_vec();
        libc::mprotect(p.add(PAGE).cast(), PAGE, libc::PROT_NONE); // guard, data behind it
        libc::mprotect(p.add(3 * PAGE).cast(), PAGE, libc::PROT_NONE);
        say(&format!("ready {:x}", p as usize));
        ferry_testprogs::wait_for_usr1();

        check(pages[..PAGE] == expect[..PAGE], 10, "page 0 changed");
        check(pages[2 * PAGE..3 * PAGE] == expect[2 * PAGE..3 * PAGE], 11, "page 2 changed");
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let guard = format!("{:x}-{:x} ---p", p as usize + PAGE, p as usize + 2 * PAGE);
        check(maps.contains(&guard), 12, &format!("no guard mapping {guard}"));
        match libc::fork() {
            0 => {
                std::ptr::read_volatile(p.add(PAGE));
                libc::_exit(0);
            }
            child => {
                let mut st = 0;
                libc::waitpid(child, &mut st, 0);
                check(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSEGV, 13, "guard page does not fault");
            }
        }
        libc::mprotect(p.add(PAGE).cast(), PAGE, libc::PROT_READ);
        libc::mprotect(p.add(3 * PAGE).cast(), PAGE, libc::PROT_READ);
        check(pages[PAGE..2 * PAGE] == expect[PAGE..2 * PAGE], 14, "data behind the guard lost");
        check(pages[3 * PAGE..] == expect[3 * PAGE..], 15, "data of the PROT_NONE page lost");
    }
    say("ok");
}
