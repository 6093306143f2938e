//! pagemap-PID.json: which pages of the task are in the pages file.

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

impl PagemapImage {
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

    #[test]
    fn offsets_follow_present_extents() {
        let pm = PagemapImage {
            pages_file: "pages-1.img".into(),
            page_size: 4096,
            entries: vec![
                PageExtent { vaddr: 0x1000, nr_pages: 2, flags: PageFlags::Present },
                PageExtent { vaddr: 0x8000, nr_pages: 1, flags: PageFlags::InParent },
                PageExtent { vaddr: 0x9000, nr_pages: 3, flags: PageFlags::Present },
            ],
        };
        let offs: Vec<_> = pm.present_with_offsets().map(|(e, o)| (e.vaddr, o)).collect();
        assert_eq!(offs, vec![(0x1000, 0), (0x9000, 8192)]);
        assert_eq!(pm.present_bytes(), 5 * 4096);
        insta::assert_snapshot!(serde_json::to_string_pretty(&pm).unwrap());
    }
}
