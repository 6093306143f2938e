//! /proc/PID/pagemap: one 64-bit entry per virtual page.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// One pagemap entry (see Documentation/admin-guide/mm/pagemap.rst).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PageEntry(pub u64);

impl PageEntry {
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// Swapped out to a real swap area: the page has data. Pagemap also
    /// reports the kernel's special swap-format entries (uffd-wp markers on
    /// empty entries, migration entries) as swapped; those use the reserved
    /// top swap types (the frame field is `type | offset << 5`), real swap
    /// areas the low ones. Needs frame numbers (CAP_SYS_ADMIN).
    pub fn swapped_data(self) -> bool {
        const FIRST_SPECIAL_SWAP_TYPE: u64 = 24;
        self.swapped() && (self.0 & 0x1f) < FIRST_SPECIAL_SWAP_TYPE
    }
    /// A page-cache page (file or shared anonymous), not a private anonymous one.
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    pub fn soft_dirty(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// Page frame number; zero unless the reader has CAP_SYS_ADMIN.
    pub fn pfn(self) -> u64 {
        if self.present() {
            self.0 & ((1 << 55) - 1)
        } else {
            0
        }
    }
}

/// Entries for the pages of `[start, end)`.
pub fn read_range(pagemap: &File, start: u64, end: u64, page_size: u64) -> Result<Vec<PageEntry>> {
    let n = ((end - start) / page_size) as usize;
    let mut buf = vec![0u8; n * 8];
    let mut done = 0;
    while done < buf.len() {
        let off = start / page_size * 8 + done as u64;
        let got = pagemap
            .read_at(&mut buf[done..], off)
            .with_context(|| format!("reading pagemap at {:#x}", start + done as u64 / 8 * page_size))?;
        if got == 0 {
            anyhow::bail!("pagemap ended early at {:#x}", start + done as u64 / 8 * page_size);
        }
        done += got;
    }
    Ok(buf.chunks_exact(8).map(|c| PageEntry(u64::from_ne_bytes(c.try_into().unwrap()))).collect())
}

/// PAGEMAP_SCAN (Linux 6.7+): page categories, reported per region.
pub mod category {
    pub const WPALLOWED: u64 = 1 << 0;
    pub const WRITTEN: u64 = 1 << 1;
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    pub const SWAPPED: u64 = 1 << 4;
}

/// Write-protect the matched pages again as they are reported.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (EPERM) on memory not registered for async uffd write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

nix::ioctl_readwrite!(pagemap_scan_ioctl, b'f', 16, PmScanArg);

/// Regions `[start, end)` of `[from, to)` whose pages are in all of
/// `categories`; with `PM_SCAN_WP_MATCHING` they are write-protected again
/// in the same step (atomic with respect to the task's writes).
pub fn scan(pagemap: &File, from: u64, to: u64, flags: u64, categories: u64) -> Result<Vec<(u64, u64)>, nix::Error> {
    use std::os::fd::AsRawFd;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = vec![[0u64; 3]; 1024];
    let mut start = from;
    while start < to {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start,
            end: to,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_mask: categories,
            return_mask: categories,
            ..Default::default()
        };
        // SAFETY: the kernel writes at most vec_len regions into `regions`.
        let n = unsafe { pagemap_scan_ioctl(pagemap.as_raw_fd(), &mut arg) }? as usize;
        for r in &regions[..n] {
            match out.last_mut() {
                Some(last) if last.1 == r[0] => last.1 = r[1],
                _ => out.push((r[0], r[1])),
            }
        }
        // The walk may stop early (full vector, or a VMA boundary): go on
        // from where it stopped.
        if arg.walk_end <= start {
            break;
        }
        start = arg.walk_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_not_swapped_data() {
        let marker = PageEntry(0x4000_0000_0000_003f);
        assert!(marker.swapped() && !marker.swapped_data());
        let swapped = PageEntry((1 << 62) | (0x1234 << 5));
        assert!(swapped.swapped_data());
    }

    #[test]
    fn bits() {
        let e = PageEntry((1 << 63) | (1 << 61) | (1 << 55) | 0x1234);
        assert!(e.present() && e.file_or_shared() && e.soft_dirty() && !e.swapped());
        assert_eq!(e.pfn(), 0x1234);
        assert_eq!(PageEntry(1 << 62).pfn(), 0);
    }

    #[test]
    fn scan_finds_present_pages() {
        let page = crate::page_size();
        let v = vec![1u8; 8 * page as usize];
        let start = (v.as_ptr() as u64).div_ceil(page) * page;
        let f = File::open("/proc/self/pagemap").unwrap();
        let r = scan(&f, start, start + 4 * page, 0, category::PRESENT).unwrap();
        assert_eq!(r, vec![(start, start + 4 * page)]);
    }

    #[test]
    fn own_touched_page_is_present() {
        let page = crate::page_size();
        let v = vec![1u8; 3 * page as usize];
        let start = (v.as_ptr() as u64).div_ceil(page) * page;
        let f = File::open("/proc/self/pagemap").unwrap();
        let e = read_range(&f, start, start + page, page).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].present());
        assert!(!e[0].file_or_shared());
    }
}
