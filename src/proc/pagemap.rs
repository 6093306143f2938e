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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let e = PageEntry((1 << 63) | (1 << 61) | (1 << 55) | 0x1234);
        assert!(e.present() && e.file_or_shared() && e.soft_dirty() && !e.swapped());
        assert_eq!(e.pfn(), 0x1234);
        assert_eq!(PageEntry(1 << 62).pfn(), 0);
    }

    #[test]
    fn own_touched_page_is_present() {
        let page = 4096u64;
        let v = vec![1u8; 3 * page as usize];
        let start = (v.as_ptr() as u64).div_ceil(page) * page;
        let f = File::open("/proc/self/pagemap").unwrap();
        let e = read_range(&f, start, start + page, page).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].present());
        assert!(!e[0].file_or_shared());
    }
}
