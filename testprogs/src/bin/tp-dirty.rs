//! Fills MIB mebibytes, then waits for signals: each SIGUSR2 rewrites
//! exactly N distinct pages (the next N of a fixed walk) and prints
//! "dirtied TOTAL"; SIGUSR1 checks every page and exits 0 if all hold what
//! was last written, 3 otherwise.
use ferry_testprogs::{check, say};

fn main() {
    let mib: usize = ferry_testprogs::arg(1).parse().unwrap();
    let n: usize = ferry_testprogs::arg(2).parse().unwrap();
    // The kernel's page size: "dirty N pages" means N of the pages a
    // dirty tracker sees (4K, 16K or 64K).
    // SAFETY: sysconf only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = (mib << 20) / page;
    // Page-aligned (a Vec would start 16 bytes into a page, and each
    // rewrite would touch two pages).
    // SAFETY: a fresh private anonymous mapping, used for the program's life.
    let mem: &mut [u8] = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            pages * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        check(p != libc::MAP_FAILED, 2, "mmap");
        // Per-page precision is what the tests measure: soft-dirty marks a
        // whole transparent huge page dirty on one write.
        libc::madvise(p, pages * page, libc::MADV_NOHUGEPAGE);
        std::slice::from_raw_parts_mut(p.cast(), pages * page)
    };
    let mut gen = vec![0u8; pages];
    let fill =
        |buf: &mut [u8], i: usize, g: u8| ferry_testprogs::fill_pattern(buf, ((i as u64) << 9) | (u64::from(g) << 1));
    for (i, p) in mem.chunks_mut(page).enumerate() {
        fill(p, i, 0);
    }
    // SAFETY: plain signal-mask calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    say("ready");
    let mut walk = 0usize;
    let mut total = 0usize;
    loop {
        let mut sig = 0;
        // SAFETY: waits for one of the blocked signals.
        while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
        if sig == libc::SIGUSR1 {
            break;
        }
        for _ in 0..n {
            // A stride coprime with the page count visits distinct pages.
            let i = (walk * 7919) % pages;
            walk += 1;
            gen[i] = gen[i].wrapping_add(1);
            fill(&mut mem[i * page..(i + 1) * page], i, gen[i]);
        }
        total += n;
        say(&format!("dirtied {total}"));
    }
    let mut expect = vec![0u8; page];
    for (i, p) in mem.chunks(page).enumerate() {
        fill(&mut expect, i, gen[i]);
        check(p == &expect[..], 3, &format!("page {i} differs"));
    }
    say("ok");
}
