//! Written memory in areas that touch: AREAS anonymous areas side by side,
//! each a little over 1 MiB (so that no boundary falls on a round offset),
//! read-write and read-only in turn, so that the kernel keeps them apart.
//! A lazy restore sees one run of lazy pages across all of them, while
//! every userfaultfd copy must stay inside one area. On SIGUSR1 it checks
//! every byte and that the areas are still apart.
//!
//! With PAGES, each area is that many pages instead (many small areas:
//! the restore's cost per mapping).
//!
//! Usage: tp-areas [AREAS [PAGES]]
use ferry_testprogs::{check, checksum, fill_pattern, say};

fn main() {
    let areas: usize = std::env::args().nth(1).map_or(6, |a| a.parse().expect("AREAS"));
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let size = match std::env::args().nth(2) {
        Some(p) => p.parse::<usize>().expect("PAGES") * page,
        None => (1 << 20) + 3 * page,
    };
    let total = areas * size;
    // SAFETY: one fresh private anonymous mapping of our own, made
    // read-only in every other area after it is written.
    let mem = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mem = std::slice::from_raw_parts_mut(p as *mut u8, total);
        fill_pattern(mem, 0xa7ea5);
        for n in (1..areas).step_by(2) {
            assert_eq!(libc::mprotect(p.add(n * size), size, libc::PROT_READ), 0);
        }
        mem
    };
    let sum = checksum(mem);
    let start = mem.as_ptr() as usize;
    say(&format!("ready {start:x} {areas} areas of {size} bytes"));
    ferry_testprogs::wait_for_usr1();

    let mut expect = vec![0u8; total];
    fill_pattern(&mut expect, 0xa7ea5);
    for (n, (got, want)) in mem.chunks(size).zip(expect.chunks(size)).enumerate() {
        check(got == want, 10 + n as i32, &format!("area {n} changed"));
    }
    check(checksum(mem) == sum, 9, "checksum changed");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    // Each inner boundary starts a mapping (the outer ones may merge with
    // a neighbour of the same kind).
    let starts: std::collections::HashSet<&str> = maps.lines().filter_map(|l| l.split('-').next()).collect();
    let apart = (1..areas).filter(|n| starts.contains(format!("{:x}", start + n * size).as_str())).count();
    check(apart == areas - 1, 20, &format!("{apart} of {} boundaries found in /proc/self/maps", areas - 1));
    say("ok");
}
