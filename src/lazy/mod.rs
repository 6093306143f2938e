//! Lazy migration: pages left on the source by a lazy dump are served over
//! an authenticated connection ([`serve`]) to the lazy-pages daemon on the
//! destination ([`daemon`]), which feeds them to the restored task through
//! its userfaultfd ([`handoff`] brings the fd over from `ferry restore`).

pub mod client;
pub mod daemon;
pub mod guard;
pub mod handoff;
pub mod local;
pub mod ranges;
pub mod serve;
pub mod upload;

use crate::image::pagemap::PageFlags;
use ranges::RangeSet;

/// Name of the key a lazy dump generates next to its images.
pub const KEY_FILE: &str = "lazy-pages.key";

/// Niceness of threads doing background transfers: on a busy machine the
/// scheduler then runs a fault's threads first, so bulk work does not add
/// to the latency of a fault. Failure only costs latency, so it is ignored.
pub fn background_thread(background: bool) {
    let nice = if background { 10 } else { 0 };
    // SAFETY: setpriority on the calling thread (who 0 = this thread on Linux).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
}

/// The lazy pages of an image (task address = source address at first).
pub fn lazy_ranges(pm: &crate::image::pagemap::PagemapImage) -> RangeSet {
    ranges_flagged(pm, &[PageFlags::Lazy])
}

/// What the source of a lazy dump may serve: its lazy pages, and the
/// pages unchanged since the parent image, which the destination holds
/// already and fetches only if its copy of a block turns out damaged.
pub fn servable_ranges(pm: &crate::image::pagemap::PagemapImage) -> RangeSet {
    ranges_flagged(pm, &[PageFlags::Lazy, PageFlags::InParent])
}

fn ranges_flagged(pm: &crate::image::pagemap::PagemapImage, flags: &[PageFlags]) -> RangeSet {
    // Extents are sorted and disjoint (the pagemap's own check): one go.
    let ranges = pm
        .entries
        .iter()
        .filter(|e| flags.contains(&e.flags))
        .map(|e| (e.vaddr, e.vaddr + e.nr_pages * pm.page_size, e.vaddr))
        .collect();
    RangeSet::from_sorted(ranges)
}
