//! Keeps changing its memory: MIB mebibytes in 4 MiB regions; every 10 ms
//! it rewrites random pages so that PERCENT of its memory changes per
//! second, and with `layout` it also moves regions (mremap), drops them
//! (munmap) and maps new ones. Every page's content derives from (region
//! seed, page number, version), so on SIGUSR1 it stops and checks them all:
//! exit 0 if every page is what it last wrote, 3 otherwise.
use ferry_testprogs::{check, say};
use std::sync::atomic::{AtomicBool, Ordering};

const PAGE: usize = 4096;
const REGION: usize = 4 << 20;
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

struct Region {
    addr: *mut u8,
    seed: u64,
    versions: Vec<u32>,
}

fn fill(page: &mut [u8], seed: u64, n: usize, version: u32) {
    let x = seed ^ ((n as u64) << 20) ^ u64::from(version).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ferry_testprogs::fill_pattern(page, x);
}

fn map() -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    check(p != libc::MAP_FAILED, 2, "mmap");
    p.cast()
}

fn new_region(seed: u64) -> Region {
    let addr = map();
    let mut r = Region { addr, seed, versions: vec![0; REGION / PAGE] };
    for n in 0..REGION / PAGE {
        write_page(&mut r, n);
    }
    r
}

fn page_of(r: &Region, n: usize) -> &'static mut [u8] {
    // SAFETY: n is within the region's mapping, which lives until unmapped.
    unsafe { std::slice::from_raw_parts_mut(r.addr.add(n * PAGE), PAGE) }
}

fn write_page(r: &mut Region, n: usize) {
    let v = r.versions[n];
    fill(page_of(r, n), r.seed, n, v);
}

fn main() {
    let mib: usize = ferry_testprogs::arg(1).parse().unwrap();
    let percent: usize = ferry_testprogs::arg(2).parse().unwrap();
    let layout = std::env::args().nth(3).as_deref() == Some("layout");
    // SAFETY: a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
    let mut regions: Vec<Region> = (0..mib * (1 << 20) / REGION).map(|i| new_region(i as u64 + 1)).collect();
    let total_pages = regions.len() * REGION / PAGE;
    // Pages per 10 ms tick to change `percent` of memory per second.
    let per_tick = (total_pages * percent / 100 / 100).max(1);
    let mut rng = 0x1234_5678u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut seeds = 1000u64;
    say("ready");
    let mut tick = 0u64;
    while !STOP.load(Ordering::SeqCst) {
        for _ in 0..per_tick {
            let r = (next() as usize) % regions.len();
            let n = (next() as usize) % (REGION / PAGE);
            regions[r].versions[n] += 1;
            write_page(&mut regions[r], n);
        }
        tick += 1;
        if layout && tick.is_multiple_of(10) {
            let r = (next() as usize) % regions.len();
            match tick / 10 % 3 {
                // Move a region elsewhere: its content goes with it.
                0 => {
                    let dst = map();
                    // SAFETY: moving our own mapping over another of ours.
                    let moved = unsafe {
                        libc::mremap(
                            regions[r].addr.cast(),
                            REGION,
                            REGION,
                            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                            dst,
                        )
                    };
                    check(moved != libc::MAP_FAILED, 4, "mremap");
                    regions[r].addr = moved.cast();
                }
                // Drop one and map a fresh one (possibly at the same address).
                1 => {
                    // SAFETY: unmapping our own region.
                    unsafe { libc::munmap(regions[r].addr.cast(), REGION) };
                    seeds += 1;
                    regions[r] = new_region(seeds);
                }
                // Give pages back (they read as zeros), then rewrite them.
                _ => {
                    // SAFETY: dropping pages of our own region.
                    unsafe { libc::madvise(regions[r].addr.add(PAGE * 8).cast(), PAGE * 8, libc::MADV_DONTNEED) };
                    for n in 8..16 {
                        regions[r].versions[n] += 1;
                        write_page(&mut regions[r], n);
                    }
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut expect = vec![0u8; PAGE];
    for (i, r) in regions.iter().enumerate() {
        for n in 0..REGION / PAGE {
            fill(&mut expect, r.seed, n, r.versions[n]);
            check(page_of(r, n) == &expect[..], 3, &format!("region {i} page {n} (version {}) differs", r.versions[n]));
        }
    }
    say(&format!("ok after {tick} ticks"));
}
