//! pagemap-PID.json: which pages of the task are in the pages file.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
