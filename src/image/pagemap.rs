//! pagemap-PID.img: which pages of the task are in the pages file.
//!
//! Binary, not JSON: a task with 1 GiB of memory dirtied in scattered
//! pages has some 30,000 extents, and their JSON (3 MB) took 13 ms to
//! write inside the dump's freeze and as long again to parse inside the
//! restore. This layout (all little-endian) is read and written in well
//! under a millisecond:
//!
//! ```text
//! "FERRYPM1"          magic and layout version
//! u64 page_size
//! u64 extent count
//! u16 name length, then the pages file's name (UTF-8)
//! per extent: u64 vaddr with the flags in its low two bits
//!             (0 present, 1 in-parent, 2 lazy), u64 nr_pages
//! ```
//!
//! `ferry show DIR pagemap-PID.img` prints it as JSON.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Unchecked")]
pub struct PagemapImage {
    pub pages_file: String,
    pub page_size: u64,
    /// Sorted by address; `present` extents sit back to back in the pages file.
    pub entries: Vec<PageExtent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageExtent {
    #[serde(with = "ferry_arch::hex::u64")]
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: PageFlags,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageFlags {
    /// The data is in this image's pages file.
    Present,
    /// Unchanged since the parent image: read it from there.
    InParent,
    /// Not copied: served on demand by a page server.
    Lazy,
}

/// Highest user address on any architecture ferry supports (57-bit
/// virtual addresses with 5-level page tables): nothing maps above it.
pub const USER_LIMIT: u64 = 1 << 57;

/// A pagemap as it is on disk, before [`PagemapImage`] checks it.
#[derive(Deserialize)]
struct Unchecked {
    pages_file: String,
    page_size: u64,
    entries: Vec<PageExtent>,
}

impl TryFrom<Unchecked> for PagemapImage {
    type Error = String;

    /// Every reader gets a pagemap whose arithmetic cannot overflow:
    /// page-aligned extents in order, inside the user address range, and a
    /// pages file named like one (no path).
    fn try_from(u: Unchecked) -> Result<PagemapImage, String> {
        // Also keeps the flag bits of the binary form clear of the address.
        if !u.page_size.is_power_of_two() || !(4096..=65536).contains(&u.page_size) {
            return Err(format!("page size {} is not one a kernel uses", u.page_size));
        }
        if !super::plain_name(&u.pages_file) {
            return Err(format!("pages file {:?} is not a plain file name", u.pages_file));
        }
        let mut end = 0u64;
        for (i, e) in u.entries.iter().enumerate() {
            let len = e.nr_pages.checked_mul(u.page_size).filter(|l| *l > 0);
            let last = len.and_then(|l| e.vaddr.checked_add(l));
            match last {
                _ if e.vaddr % u.page_size != 0 => {
                    return Err(format!("extent {i} at {:#x} is not page-aligned", e.vaddr))
                }
                Some(last) if last <= USER_LIMIT && e.vaddr >= end => end = last,
                Some(last) if last <= USER_LIMIT => {
                    return Err(format!("extent {i} at {:#x} overlaps or precedes the one before", e.vaddr))
                }
                _ => return Err(format!("extent {i} at {:#x} ({} pages) is outside user memory", e.vaddr, e.nr_pages)),
            }
        }
        Ok(PagemapImage { pages_file: u.pages_file, page_size: u.page_size, entries: u.entries })
    }
}

const MAGIC: &[u8; 8] = b"FERRYPM1";

impl PageFlags {
    fn code(self) -> u64 {
        match self {
            PageFlags::Present => 0,
            PageFlags::InParent => 1,
            PageFlags::Lazy => 2,
        }
    }
}

impl PagemapImage {
    /// The on-disk form (see the module's doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let name = self.pages_file.as_bytes();
        let mut out = Vec::with_capacity(26 + name.len() + self.entries.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        for e in &self.entries {
            out.extend_from_slice(&(e.vaddr | e.flags.code()).to_le_bytes());
            out.extend_from_slice(&e.nr_pages.to_le_bytes());
        }
        out
    }

    /// Read the on-disk form; every extent is checked as the JSON reader
    /// checks it (aligned, in order, inside user memory).
    pub fn from_bytes(b: &[u8]) -> Result<PagemapImage, String> {
        let word = |at: usize| -> Result<u64, String> {
            b.get(at..at + 8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                .ok_or_else(|| format!("cut short at byte {at} of {}", b.len()))
        };
        if b.get(..8) != Some(MAGIC.as_slice()) {
            return Err("not a ferry pagemap (no FERRYPM1 magic)".into());
        }
        let page_size = word(8)?;
        let count = word(16)?;
        let name_len =
            b.get(24..26).map(|w| u16::from_le_bytes([w[0], w[1]]) as usize).ok_or("cut short in its header")?;
        let name = b.get(26..26 + name_len).ok_or("cut short in the pages file's name")?;
        let pages_file = std::str::from_utf8(name).map_err(|_| "the pages file's name is not UTF-8")?.to_string();
        let start = 26 + name_len;
        let expected = count.checked_mul(16).and_then(|n| n.checked_add(start as u64));
        if expected != Some(b.len() as u64) {
            return Err(format!("{count} extents do not fit its {} bytes", b.len()));
        }
        let mut entries = Vec::with_capacity(count as usize);
        // The length was checked above: whole 16-byte extents follow.
        for (i, raw) in b[start..].chunks_exact(16).enumerate() {
            let head = u64::from_le_bytes(raw[..8].try_into().unwrap());
            let nr_pages = u64::from_le_bytes(raw[8..].try_into().unwrap());
            let flags = match head & 3 {
                0 => PageFlags::Present,
                1 => PageFlags::InParent,
                2 => PageFlags::Lazy,
                _ => return Err(format!("extent {i} has unknown flags")),
            };
            entries.push(PageExtent { vaddr: head & !3, nr_pages, flags });
        }
        PagemapImage::try_from(Unchecked { pages_file, page_size, entries })
    }

    /// Extents with their offset in the pages file.
    pub fn present_with_offsets(&self) -> impl Iterator<Item = (&PageExtent, u64)> {
        let mut off = 0u64;
        self.entries.iter().filter(|e| e.flags == PageFlags::Present).map(move |e| {
            let here = off;
            off += e.nr_pages * self.page_size;
            (e, here)
        })
    }

    pub fn present_bytes(&self) -> u64 {
        self.entries.iter().filter(|e| e.flags == PageFlags::Present).map(|e| e.nr_pages * self.page_size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_that_overflow_overlap_or_leave_user_memory_are_refused() {
        let read = |entries: &str| {
            let text = format!(r#"{{"pages_file": "pages-1.img", "page_size": 4096, "entries": [{entries}]}}"#);
            serde_json::from_str::<PagemapImage>(&text).map_err(|e| e.to_string())
        };
        assert!(read(r#"{"vaddr": "0x1000", "nr_pages": 2, "flags": "present"}"#).is_ok());
        let huge = r#"{"vaddr": "0x1000", "nr_pages": 18446744073709551615, "flags": "present"}"#;
        assert!(read(huge).unwrap_err().contains("outside user memory"));
        let unaligned = r#"{"vaddr": "0x1001", "nr_pages": 1, "flags": "present"}"#;
        assert!(read(unaligned).unwrap_err().contains("not page-aligned"));
        let overlap = r#"{"vaddr": "0x1000", "nr_pages": 2, "flags": "present"}, {"vaddr": "0x2000", "nr_pages": 1, "flags": "lazy"}"#;
        assert!(read(overlap).unwrap_err().contains("overlaps"));
        let kernel = r#"{"vaddr": "0xffff800000000000", "nr_pages": 1, "flags": "present"}"#;
        assert!(read(kernel).unwrap_err().contains("outside user memory"));
        let path = r#"{"pages_file": "../x", "page_size": 4096, "entries": []}"#;
        assert!(serde_json::from_str::<PagemapImage>(path).unwrap_err().to_string().contains("plain file name"));
    }

    /// A pagemap of 4 KiB pages: (address, pages, flags) per extent.
    fn pagemap(pages_file: &str, extents: &[(u64, u64, PageFlags)]) -> PagemapImage {
        let entries = extents.iter().map(|&(vaddr, nr_pages, flags)| PageExtent { vaddr, nr_pages, flags }).collect();
        PagemapImage { pages_file: pages_file.into(), page_size: 4096, entries }
    }

    #[test]
    fn offsets_follow_present_extents() {
        let pm = pagemap(
            "pages-1.img",
            &[(0x1000, 2, PageFlags::Present), (0x8000, 1, PageFlags::InParent), (0x9000, 3, PageFlags::Present)],
        );
        let offs: Vec<_> = pm.present_with_offsets().map(|(e, o)| (e.vaddr, o)).collect();
        assert_eq!(offs, vec![(0x1000, 0), (0x9000, 8192)]);
        assert_eq!(pm.present_bytes(), 5 * 4096);
        insta::assert_snapshot!(serde_json::to_string_pretty(&pm).unwrap());
        assert_eq!(PagemapImage::from_bytes(&pm.to_bytes()), Ok(pm));
    }

    #[test]
    fn the_binary_form_is_checked_like_the_json() {
        let pm = pagemap("pages-7.img", &[(0x1000, 2, PageFlags::Lazy), (0x4000, 1, PageFlags::InParent)]);
        let good = pm.to_bytes();
        assert_eq!(good.len(), 26 + 11 + 32);
        let read = |b: &[u8]| PagemapImage::from_bytes(b).unwrap_err();
        assert!(read(&good[..good.len() - 1]).contains("do not fit"));
        assert!(read(&good[..20]).contains("cut short"));
        assert!(read(b"FERRYPM2").contains("magic"));
        let mut bad = good.clone();
        bad[37] |= 3; // the first extent's flags
        assert!(read(&bad).contains("unknown flags"));
        let mut overlap = good.clone();
        overlap[54] = 0x20; // the second extent now starts at 0x2000
        assert!(read(&overlap).contains("overlaps"));
        let mut unaligned = good.clone();
        unaligned[37] |= 0x10;
        assert!(read(&unaligned).contains("not page-aligned"));
        let mut huge = good;
        huge[45..53].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read(&huge).contains("outside user memory"));
    }
}
