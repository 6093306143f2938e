//! Dirty-page tracking between a pre-dump and the next dump.
//!
//! Three methods, the best one this kernel offers chosen at run time:
//!
//! 1. `uffd-wp`: a userfaultfd in write-protect async mode covers the
//!    task's memory; PAGEMAP_SCAN reports the pages written since the last
//!    scan and write-protects them again in the same step (Linux 6.7+).
//! 2. `soft-dirty`: the kernel's soft-dirty bits, cleared through
//!    /proc/PID/clear_refs (CONFIG_MEM_SOFT_DIRTY).
//! 3. `hashing`: every page is hashed; a page is unchanged when its hash
//!    equals the parent's (works everywhere, reads all memory each round).
//!
//! The userfaultfd is created inside the task by injection and taken out at
//! once: a small holder process keeps it open between ferry invocations, so
//! the task never sees it. The holder ends when the task ends, when a final
//! dump ends tracking, or after an idle timeout; tracking lost that way only
//! means the next round copies everything.

pub mod holder;
pub mod uffd_wp;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    UffdWp,
    SoftDirty,
    #[default]
    Hashing,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::UffdWp => "uffd-wp",
            Method::SoftDirty => "soft-dirty",
            Method::Hashing => "hashing",
        }
    }

    /// Page identities of this method are content hashes (not frame numbers).
    pub fn ids_are_hashes(self) -> bool {
        self == Method::Hashing
    }
}

/// `--dirty-tracker`: a method, or the best available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    Auto,
    UffdWp,
    SoftDirty,
    Hashing,
}

/// What this kernel supports, best first.
pub fn best_available() -> Method {
    if crate::probe::uffd::wp_async().ok && crate::probe::uffd::pagemap_scan().ok {
        Method::UffdWp
    } else if crate::probe::soft_dirty_works().unwrap_or(false) {
        Method::SoftDirty
    } else {
        Method::Hashing
    }
}

pub fn choose(c: Choice) -> anyhow::Result<Method> {
    let m = match c {
        Choice::Auto => return Ok(best_available()),
        Choice::UffdWp => Method::UffdWp,
        Choice::SoftDirty => Method::SoftDirty,
        Choice::Hashing => Method::Hashing,
    };
    let ok = match m {
        Method::UffdWp => crate::probe::uffd::wp_async().ok && crate::probe::uffd::pagemap_scan().ok,
        Method::SoftDirty => crate::probe::soft_dirty_works().unwrap_or(false),
        Method::Hashing => true,
    };
    if !ok {
        anyhow::bail!(
            "dirty tracker {} is not available on this kernel (see `ferry check --feature dirty-tracking`)",
            m.name()
        );
    }
    Ok(m)
}

/// track.json: how the next round finds out what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRecord {
    pub method: Method,
    /// For uffd-wp: per process of the tree (by its PID in the tree's
    /// namespace), the holder that keeps its userfaultfd open.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub holders: std::collections::BTreeMap<i32, holder::HolderRef>,
}

pub const TRACK_FILE: &str = "track.json";

/// For each planned area: the ranges written since the last round, or None
/// when the area is not tracked (all of it counts as written).
pub type Written = Vec<Option<Vec<(u64, u64)>>>;

/// Whether addresses lie in one of `ranges` (sorted, not overlapping),
/// asked in increasing order: a cursor that only moves forward. A
/// scattered dirty set has one range per page, and a binary search for
/// each of a gibibyte's pages cost milliseconds of the freeze.
pub struct RangeCursor<'a> {
    ranges: &'a [(u64, u64)],
    next: usize,
    last: u64,
}

impl<'a> RangeCursor<'a> {
    pub fn new(ranges: &'a [(u64, u64)]) -> RangeCursor<'a> {
        RangeCursor { ranges, next: 0, last: 0 }
    }

    /// `addr` must not be below the address asked before.
    pub fn contains(&mut self, addr: u64) -> bool {
        debug_assert!(addr >= self.last, "RangeCursor asked backwards");
        self.last = addr;
        while self.ranges.get(self.next).is_some_and(|&(_, e)| e <= addr) {
            self.next += 1;
        }
        self.ranges.get(self.next).is_some_and(|&(s, _)| s <= addr)
    }
}

/// `ranges` sorted, with those that overlap or touch merged.
pub fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The page identity used for `uffd-wp` and `soft-dirty`: frame number (or
/// swap entry) plus the present/swapped bits, without the tracking bits.
pub fn frame_id(entry: crate::proc::pagemap::PageEntry) -> u64 {
    let raw = entry.0;
    (raw & ((1 << 55) - 1)) | (raw & (3 << 62))
}

#[cfg(test)]
mod tests {
    use super::{merged, RangeCursor};

    #[test]
    fn range_lookup_finds_edges_and_gaps() {
        let r = [(0x1000, 0x2000), (0x5000, 0x8000)];
        let mut c = RangeCursor::new(&r);
        let hits: Vec<bool> =
            [0x0, 0x1000, 0x1fff, 0x2000, 0x4fff, 0x5000, 0x7fff, 0x8000].iter().map(|&a| c.contains(a)).collect();
        assert_eq!(hits, [false, true, true, false, false, true, true, false]);
        assert!(!RangeCursor::new(&[]).contains(0x1000));
    }

    #[test]
    fn overlapping_ranges_merge() {
        let m = merged(vec![(0x5000, 0x6000), (0x1000, 0x3000), (0x2000, 0x4000), (0x4000, 0x4800), (0x9000, 0xa000)]);
        assert_eq!(m, [(0x1000, 0x4800), (0x5000, 0x6000), (0x9000, 0xa000)]);
    }
}
