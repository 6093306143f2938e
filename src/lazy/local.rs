//! Pre-copied pages a lazy restore leaves to the lazy-pages daemon: they
//! are already on this machine (in the parent images of a pre-dump chain),
//! so the task can run before they are placed, and the daemon fills them
//! from the pages files (mapped read-only), faults first.
//!
//! The restore and the daemon pick the same pages, as a function of the
//! images alone (`kept` and `cut`: [`split_unresolved`] in `restore
//! --lazy-pages`, [`deferred_sources`] in a separate `lazy-pages` daemon,
//! [`split`] when one process does both), so they agree without telling
//! each other.
//!
//! Each 4 MiB block is checked against the inventory's hash before its
//! first page is used. A damaged block is not fatal: the source still
//! holds the frozen task, and serves the same pages (they are in-parent
//! pages of the lazy dump), so the daemon fetches them from there instead.

use super::ranges::RangeSet;
use crate::image::chain::{Chain, Source};
use crate::image::pagemap::PageFlags;
use crate::image::task::{TaskImage, Vma, VmaKind};
use crate::image::{digest, hash_hex, ImageError};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use tracing::warn;

/// Bytes around each thread's stack pointer that the threads touch the
/// moment they run: placed before, not faulted in.
pub const AROUND_SP: u64 = 64 << 10;

/// Pages a restored task needs before anyone could serve them: around
/// every thread's stack pointer; each thread's rseq area, which the kernel
/// itself writes as the thread resumes (such a write does not go through
/// the userfaultfd: it fills the page with zeros first, and the copy then
/// finds the page taken); and locked memory, which mlock populates at
/// restore. The dump leaves these out of a lazy dump's lazy pages; the
/// restore places the pre-copied ones among them before the task runs.
pub fn eager_ranges<'a>(
    sps: impl IntoIterator<Item = u64>,
    rseqs: impl IntoIterator<Item = (u64, u32)>,
    vmas: impl IntoIterator<Item = &'a Vma> + Clone,
    page: u64,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for sp in sps {
        out.extend(
            vmas.clone()
                .into_iter()
                .filter(|v| v.start <= sp && sp < v.end)
                .map(|v| (sp.saturating_sub(AROUND_SP).max(v.start), (sp + AROUND_SP).min(v.end))),
        );
    }
    for (addr, len) in rseqs.into_iter().filter(|&(a, l)| a != 0 && l != 0) {
        out.push((addr & !(page - 1), (addr + u64::from(len)).div_ceil(page) * page));
    }
    out.extend(vmas.into_iter().filter(|v| v.locked && !v.lock_on_fault).map(|v| (v.start, v.end)));
    out
}

/// Areas a userfaultfd can fill and the restore may leave empty: private
/// anonymous memory, neither locked nor sealed.
fn deferrable(v: &Vma) -> bool {
    v.kind == VmaKind::Anon && !v.shared() && !v.locked && !v.sealed
}

/// What a lazy restore places itself, whole pages, merged: the eager
/// ranges and everything outside the deferrable areas.
fn kept(task: &TaskImage, page: u64) -> Vec<(u64, u64)> {
    let sps = task.threads.iter().map(|t| t.cpu.sp());
    let rseqs = task.threads.iter().filter_map(|t| t.rseq.as_ref().map(|r| (r.addr, r.len)));
    let mut keep: Vec<(u64, u64)> = eager_ranges(sps, rseqs, task.vmas.iter(), page);
    let mut cursor = 0;
    for v in task.vmas.iter().filter(|v| deferrable(v)) {
        keep.push((cursor, v.start));
        cursor = v.end;
    }
    keep.push((cursor, u64::MAX));
    // Whole pages: the ranges around stack pointers end where the pointers
    // do, and a copy must be whole pages.
    merged(
        keep.into_iter()
            .map(|(s, e)| (s & !(page - 1), e.checked_next_multiple_of(page).unwrap_or(u64::MAX)))
            .collect(),
    )
}

/// Per view of the chain: whether its pages may wait for the daemon (its
/// pages file lists its blocks, so the daemon can check each one as it
/// first uses it). The newest image's own pages never wait.
fn listed(chain: &Chain) -> Vec<bool> {
    let mut listed = vec![false; chain.views.len()];
    for (v, view) in chain.views.iter().enumerate().skip(1) {
        listed[v] = view.pagemap.present_bytes() > 0
            && view.images.block_hashes(&view.pagemap.pages_file).is_ok_and(|b| b.is_some());
    }
    listed
}

/// `[start, end)` cut at the `keep` ranges (sorted, disjoint) into
/// `(from, to, kept)` pieces, in order.
fn cut(keep: &[(u64, u64)], start: u64, end: u64, out: &mut Vec<(u64, u64, bool)>) {
    out.clear();
    let mut at = start;
    let first = keep.partition_point(|&(_, ke)| ke <= start);
    for &(ks, ke) in keep[first..].iter().take_while(|&&(ks, _)| ks < end) {
        let (ks, ke) = (ks.max(start), ke.min(end));
        if ks > at {
            out.push((at, ks, false));
        }
        out.push((ks, ke, true));
        at = ke;
    }
    if at < end {
        out.push((at, end, false));
    }
}

/// Split a process's page sources into those placed before it runs and
/// those deferred to the daemon: pages from a parent image (pre-copied)
/// in deferrable areas, outside the eager ranges, from pages files whose
/// blocks the inventory lists one by one (so the daemon can check each
/// block as it first uses it).
pub fn split(task: &TaskImage, chain: &Chain, sources: Vec<Source>) -> Result<(Vec<Source>, Vec<Source>)> {
    split_listed(task, chain, sources, &listed(chain))
}

/// [`split`], with [`listed`] already known.
fn split_listed(
    task: &TaskImage,
    chain: &Chain,
    sources: Vec<Source>,
    listed: &[bool],
) -> Result<(Vec<Source>, Vec<Source>)> {
    let keep = kept(task, chain.views[0].pagemap.page_size);
    let (mut eager, mut deferred) = (Vec::new(), Vec::new());
    let mut pieces = Vec::new();
    for s in sources {
        if !listed[s.view] {
            eager.push(s);
            continue;
        }
        cut(&keep, s.vaddr, s.vaddr + s.len, &mut pieces);
        for &(a, b, kept) in &pieces {
            let piece = Source { vaddr: a, len: b - a, view: s.view, offset: s.offset + (a - s.vaddr) };
            if kept {
                eager.push(piece)
            } else {
                deferred.push(piece)
            }
        }
    }
    Ok((eager, deferred))
}

/// Pre-copied pages a lazy restore leaves to the daemon.
pub enum Deferred {
    /// With where their bytes are, for the daemon the restore runs itself
    /// (`ferry receive`).
    Sources(Vec<Source>),
    /// Only where they go, in address order: a separate `ferry lazy-pages`
    /// finds their bytes itself, so the restore does not resolve them
    /// through the parent images inside the downtime.
    Ranges(Vec<(u64, u64)>),
}

impl Deferred {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many pieces.
    pub fn len(&self) -> usize {
        match self {
            Deferred::Sources(s) => s.len(),
            Deferred::Ranges(r) => r.len(),
        }
    }

    /// Whether a deferred page lies in `[start, end)`.
    pub fn meets(&self, start: u64, end: u64) -> bool {
        match self {
            Deferred::Sources(s) => {
                let i = s.partition_point(|s| s.vaddr + s.len <= start);
                s.get(i).is_some_and(|s| s.vaddr < end)
            }
            Deferred::Ranges(r) => {
                let i = r.partition_point(|&(_, e)| e <= start);
                r.get(i).is_some_and(|&(s, _)| s < end)
            }
        }
    }

    /// Where their bytes are, if resolved.
    pub fn sources(&self) -> Option<&[Source]> {
        match self {
            Deferred::Sources(s) => Some(s),
            Deferred::Ranges(_) => None,
        }
    }
}

/// One piece of the newest image's pages, in address order: its own, or
/// pre-copied (in a parent image) and kept (placed by the restore) or not.
enum Piece {
    Own(Source),
    Parent { start: u64, end: u64, kept: bool },
}

/// Walk the newest image's pages as [`Piece`]s, the in-parent extents cut
/// at the kept ranges. None if some parent's pages cannot wait for the
/// daemon (its blocks are not listed): then every page of the chain must
/// be resolved and split with [`split_listed`].
fn walk(task: &TaskImage, chain: &Chain, mut each: impl FnMut(Piece) -> Result<()>) -> Result<Option<Vec<bool>>> {
    let listed = listed(chain);
    if chain.views.iter().zip(&listed).skip(1).any(|(v, &l)| !l && v.pagemap.present_bytes() > 0) {
        return Ok(Some(listed));
    }
    let top = &chain.views[0];
    let page = top.pagemap.page_size;
    let keep = kept(task, page);
    let mut pieces = Vec::new();
    for (e, offset) in top.entries_with_offsets() {
        let end = e.vaddr + e.nr_pages * page;
        match e.flags {
            PageFlags::Present => each(Piece::Own(Source { vaddr: e.vaddr, len: end - e.vaddr, view: 0, offset }))?,
            PageFlags::InParent => {
                cut(&keep, e.vaddr, end, &mut pieces);
                for &(start, end, kept) in &pieces {
                    each(Piece::Parent { start, end, kept })?;
                }
            }
            PageFlags::Lazy => {}
        }
    }
    Ok(None)
}

/// The same split for a restore whose daemon is a separate `ferry
/// lazy-pages`: only the pages placed now are looked up in the parent
/// images; the deferred ones are known by address alone. The daemon picks
/// the same pages with [`deferred_sources`] (and checks that the parents
/// have them).
pub fn split_unresolved(task: &TaskImage, chain: &Chain) -> Result<(Vec<Source>, Deferred)> {
    let (mut eager, mut deferred) = (Vec::new(), Vec::new());
    let unlisted = walk(task, chain, |piece| {
        match piece {
            Piece::Own(s) => eager.push(s),
            Piece::Parent { start, end, kept: true } => chain.resolve(start, end, &mut eager)?,
            Piece::Parent { start, end, kept: false } => deferred.push((start, end)),
        }
        Ok(())
    })?;
    if let Some(listed) = unlisted {
        // Some parent's pages are placed now wherever they are: resolve all.
        let (eager, deferred) = split_listed(task, chain, chain.sources()?, &listed)?;
        return Ok((eager, Deferred::Sources(deferred)));
    }
    Ok((eager, Deferred::Ranges(deferred)))
}

/// The pre-copied pages a restore leaves to the daemon, as [`split`] picks
/// them, with where their bytes are: only those pages are looked up in
/// the parent images (the daemon starts beside the restore, and on a small
/// machine its start-up takes the restore's CPU).
pub fn deferred_sources(task: &TaskImage, chain: &Chain) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let unlisted = walk(task, chain, |piece| match piece {
        Piece::Parent { start, end, kept: false } => chain.resolve(start, end, &mut out),
        _ => Ok(()),
    })?;
    match unlisted {
        Some(listed) => Ok(split_listed(task, chain, chain.sources()?, &listed)?.1),
        None => Ok(out),
    }
}

/// The deferred pages of process `vpid` of the lazy images whose chain
/// is `chain`, as the restore picks them; None if it has none.
pub fn for_process(chain: &Chain, vpid: i32) -> Result<Option<LocalPages>> {
    let task: TaskImage = chain.views[0].images.read_json(&crate::image::task_file(vpid))?;
    let deferred = deferred_sources(&task, chain)?;
    if deferred.is_empty() {
        return Ok(None);
    }
    LocalPages::open(chain, &deferred).map(Some)
}

/// Sorted, overlapping and touching ranges joined, empty ones dropped.
fn merged(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.retain(|&(s, e)| s < e);
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Where a deferred range's bytes are: `FILE_SHIFT` bits of offset, the
/// file's index above them, and `TAG` to tell them from source addresses.
pub const TAG: u64 = 1 << 63;
const FILE_SHIFT: u32 = 48;

/// A tagged location's file index and offset.
fn locate(at: u64) -> (usize, usize) {
    (((at & !TAG) >> FILE_SHIFT) as usize, (at & ((1 << FILE_SHIFT) - 1)) as usize)
}

/// One pages file, mapped, with the hash of each of its blocks.
struct PagesFile {
    path: PathBuf,
    map: memmap2::Mmap,
    blocks: Vec<u64>,
    /// Per block: [`UNCHECKED`], [`GOOD`] or [`DAMAGED`].
    state: Vec<AtomicU8>,
}

const UNCHECKED: u8 = 0;
const GOOD: u8 = 1;
const DAMAGED: u8 = 2;

impl PagesFile {
    /// Whether block `b` matches its hash; checked once.
    fn good(&self, b: usize) -> bool {
        match self.state[b].load(Ordering::Acquire) {
            GOOD => return true,
            DAMAGED => return false,
            _ => {}
        }
        let block = &self.map[b * digest::BLOCK..((b + 1) * digest::BLOCK).min(self.map.len())];
        let got = digest::block_hash(block);
        let state = if got == self.blocks[b] { GOOD } else { DAMAGED };
        // Two threads may check the same block; only the first one says so.
        let first = self.state[b].swap(state, Ordering::AcqRel) == UNCHECKED;
        if state == DAMAGED && first {
            let err = ImageError::Checksum {
                path: self.path.clone(),
                expected: hash_hex(self.blocks[b]),
                got: hash_hex(got),
            };
            warn!("{err} (block {b}): its pages come from the source instead");
        }
        state == GOOD
    }
}

/// The deferred pages of one process, ready to be copied in.
pub struct LocalPages {
    files: Vec<PagesFile>,
    /// Task address -> tagged location.
    pub ranges: RangeSet,
    /// (tagged location, end, task address at the dump), by location: where
    /// the source holds a damaged block's pages.
    by_location: Vec<(u64, u64, u64)>,
}

impl LocalPages {
    /// Map the pages files the deferred sources read.
    pub fn open(chain: &Chain, deferred: &[Source]) -> Result<LocalPages> {
        let mut index = vec![None; chain.views.len()];
        let mut files = Vec::new();
        let mut ranges = Vec::with_capacity(deferred.len());
        for s in deferred {
            let f = match index[s.view] {
                Some(f) => f,
                None => {
                    let view = &chain.views[s.view];
                    let name = &view.pagemap.pages_file;
                    let path = view.images.path(name);
                    let blocks = view.images.block_hashes(name)?.context("deferred pages need block hashes")?;
                    let file = view.images.open_raw(name)?;
                    // SAFETY: read-only mapping of an image file nobody writes to.
                    let map =
                        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
                    let state = blocks.iter().map(|_| AtomicU8::new(UNCHECKED)).collect();
                    files.push(PagesFile { path, map, blocks, state });
                    index[s.view] = Some(files.len() - 1);
                    files.len() - 1
                }
            };
            let pf = &files[f];
            if s.offset.checked_add(s.len).is_none_or(|e| e > pf.map.len() as u64) {
                anyhow::bail!("{}: pages at {:#x} lie beyond its end", pf.path.display(), s.vaddr);
            }
            ranges.push((s.vaddr, s.vaddr + s.len, TAG | (f as u64) << FILE_SHIFT | s.offset));
        }
        ranges.sort_unstable();
        let mut by_location: Vec<_> = ranges.iter().map(|&(s, e, at)| (at, at + (e - s), s)).collect();
        by_location.sort_unstable();
        Ok(LocalPages { files, ranges: RangeSet::from_sorted(ranges), by_location })
    }

    /// The bytes at tagged location `at`, `len` long, if every block they
    /// touch matches its hash (checked the first time); None if one is
    /// damaged: then [`LocalPages::source_address`] says where the source
    /// has them.
    pub fn bytes(&self, at: u64, len: u64) -> Option<&[u8]> {
        let (f, off) = locate(at);
        let f = &self.files[f];
        let end = off + len as usize;
        (off / digest::BLOCK..end.div_ceil(digest::BLOCK)).all(|b| f.good(b)).then(|| &f.map[off..end])
    }

    /// Piece `(start, end, location)` cut where its bytes cross a block
    /// boundary of their file, so that each part lies in one block.
    pub fn by_block((start, end, at): (u64, u64, u64)) -> impl Iterator<Item = (u64, u64, u64)> {
        let block = digest::BLOCK as u64;
        let mut s = start;
        std::iter::from_fn(move || {
            if s >= end {
                return None;
            }
            let loc = at + (s - start);
            let e = (s + (block - loc % block)).min(end);
            let part = (s, e, loc);
            s = e;
            Some(part)
        })
    }

    /// The task's address at the dump of the bytes at tagged location
    /// `at` (where the source serves them from), and how many bytes from
    /// there on lie contiguously at both ends.
    pub fn source_address(&self, at: u64) -> Option<(u64, u64)> {
        let i = self.by_location.partition_point(|&(_, end, _)| end <= at);
        let &(start, end, vaddr) = self.by_location.get(i)?;
        (start <= at && at < end).then(|| (vaddr + (at - start), end - at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_inverts_the_ranges() {
        let l = LocalPages {
            files: Vec::new(),
            ranges: RangeSet::default(),
            by_location: vec![(TAG, TAG + 0x2000, 0x7000), (TAG + 0x2000, TAG + 0x3000, 0x1000)],
        };
        assert_eq!(l.source_address(TAG + 0x1000), Some((0x8000, 0x1000)));
        assert_eq!(l.source_address(TAG + 0x2fff), Some((0x1fff, 1)));
        assert_eq!(l.source_address(TAG + 0x3000), None);
    }

    #[test]
    fn pieces_cut_at_block_boundaries() {
        let b = digest::BLOCK as u64;
        let parts: Vec<_> = LocalPages::by_block((0x1000, 0x1000 + b + 0x2000, TAG + b - 0x1000)).collect();
        assert_eq!(
            parts,
            vec![
                (0x1000, 0x2000, TAG + b - 0x1000),
                (0x2000, 0x2000 + b, TAG + b),
                (0x2000 + b, 0x3000 + b, TAG + 2 * b)
            ]
        );
    }

    #[test]
    fn cut_places_what_the_kept_ranges_cover_and_defers_the_rest() {
        let keep = [(0x1000, 0x3000), (0x5000, 0x6000)];
        let mut out = Vec::new();
        cut(&keep, 0, 0x8000, &mut out);
        let want = [(0, 0x1000, false), (0x1000, 0x3000, true), (0x3000, 0x5000, false)];
        assert_eq!(out[..3], want);
        assert_eq!(out[3..], [(0x5000, 0x6000, true), (0x6000, 0x8000, false)]);
        cut(&keep, 0x2000, 0x2800, &mut out);
        assert_eq!(out, [(0x2000, 0x2800, true)]);
        cut(&keep, 0x3000, 0x5000, &mut out);
        assert_eq!(out, [(0x3000, 0x5000, false)]);
    }

    #[test]
    fn deferred_ranges_and_sources_meet_areas_alike() {
        let ranges = Deferred::Ranges(vec![(0x1000, 0x2000), (0x8000, 0x9000)]);
        let sources = Deferred::Sources(vec![
            Source { vaddr: 0x1000, len: 0x1000, view: 1, offset: 0 },
            Source { vaddr: 0x8000, len: 0x1000, view: 1, offset: 0x1000 },
        ]);
        for d in [&ranges, &sources] {
            assert!(d.meets(0, 0x1001));
            assert!(!d.meets(0, 0x1000));
            assert!(!d.meets(0x2000, 0x8000));
            assert!(d.meets(0x8fff, 0xa000));
            assert!(!d.meets(0x9000, 0xa000));
        }
        assert!(Deferred::Ranges(Vec::new()).is_empty());
        assert_eq!(sources.sources().map(<[Source]>::len), Some(2));
        assert!(ranges.sources().is_none());
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(merged(vec![(5, 9), (0, 2), (2, 4), (8, 12), (20, 20)]), vec![(0, 4), (5, 12)]);
    }
}
