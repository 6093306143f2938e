//! Pre-copied pages a lazy restore leaves to the lazy-pages daemon: they
//! are already on this machine (in the parent images of a pre-dump chain),
//! so the task can run before they are placed, and the daemon fills them
//! from the pages files (mapped read-only), faults first.
//!
//! The restore and the daemon pick the same pages with [`split`], a
//! function of the images alone, so `restore --lazy-pages` and a separate
//! `lazy-pages` daemon agree without telling each other.

use super::ranges::RangeSet;
use crate::image::chain::{Chain, Source};
use crate::image::task::{TaskImage, Vma, VmaKind};
use crate::image::{digest, hash_hex, ImageDir, ImageError};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Split a process's page sources into those placed before it runs and
/// those deferred to the daemon: pages from a parent image (pre-copied)
/// in deferrable areas, outside the eager ranges, from pages files whose
/// blocks the inventory lists one by one (so the daemon can check each
/// block as it first uses it).
pub fn split(task: &TaskImage, chain: &Chain, sources: Vec<Source>) -> Result<(Vec<Source>, Vec<Source>)> {
    let page = chain.views[0].pagemap.page_size;
    let mut listed = vec![false; chain.views.len()];
    for (v, view) in chain.views.iter().enumerate().skip(1) {
        listed[v] = view.pagemap.present_bytes() > 0
            && view.images.block_hashes(&view.pagemap.pages_file).is_ok_and(|b| b.is_some());
    }
    let sps = task.threads.iter().map(|t| t.cpu.sp());
    let rseqs = task.threads.iter().filter_map(|t| t.rseq.as_ref().map(|r| (r.addr, r.len)));
    let mut keep: Vec<(u64, u64)> = eager_ranges(sps, rseqs, task.vmas.iter(), page);
    // Everything outside the deferrable areas stays eager too.
    let mut cursor = 0;
    for v in task.vmas.iter().filter(|v| deferrable(v)) {
        keep.push((cursor, v.start));
        cursor = v.end;
    }
    keep.push((cursor, u64::MAX));
    // Whole pages: the ranges around stack pointers end where the pointers
    // do, and a copy must be whole pages.
    let keep = merged(
        keep.into_iter()
            .map(|(s, e)| (s & !(page - 1), e.checked_next_multiple_of(page).unwrap_or(u64::MAX)))
            .collect(),
    );

    let (mut eager, mut deferred) = (Vec::new(), Vec::new());
    for s in sources {
        if !listed[s.view] {
            eager.push(s);
            continue;
        }
        let end = s.vaddr + s.len;
        let piece = |a: u64, b: u64| Source { vaddr: a, len: b - a, view: s.view, offset: s.offset + (a - s.vaddr) };
        let mut at = s.vaddr;
        let first = keep.partition_point(|&(_, ke)| ke <= s.vaddr);
        for &(ks, ke) in keep[first..].iter().take_while(|&&(ks, _)| ks < end) {
            let (ks, ke) = (ks.max(s.vaddr), ke.min(end));
            if ks > at {
                deferred.push(piece(at, ks));
            }
            eager.push(piece(ks, ke));
            at = ke;
        }
        if at < end {
            deferred.push(piece(at, end));
        }
    }
    Ok((eager, deferred))
}

/// The deferred pages of process `vpid` of the lazy images in `images`,
/// as the restore picks them; None if it has none.
pub fn for_process(images: &ImageDir, vpid: i32) -> Result<Option<LocalPages>> {
    let task: TaskImage = images.read_json(&crate::image::task_file(vpid))?;
    let chain = Chain::open(images.clone(), vpid)?;
    let (_, deferred) = split(&task, &chain, chain.sources()?)?;
    if deferred.is_empty() {
        return Ok(None);
    }
    LocalPages::open(&chain, &deferred).map(Some)
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
    checked: Vec<AtomicBool>,
}

impl PagesFile {
    /// Check block `b` against its hash, once.
    fn check(&self, b: usize) -> Result<()> {
        if self.checked[b].load(Ordering::Acquire) {
            return Ok(());
        }
        let block = &self.map[b * digest::BLOCK..((b + 1) * digest::BLOCK).min(self.map.len())];
        let got = digest::block_hash(block);
        if got != self.blocks[b] {
            let (expected, got) = (hash_hex(self.blocks[b]), hash_hex(got));
            return Err(ImageError::Checksum { path: self.path.clone(), expected, got }.into());
        }
        self.checked[b].store(true, Ordering::Release);
        Ok(())
    }
}

/// The deferred pages of one process, ready to be copied in.
pub struct LocalPages {
    files: Vec<PagesFile>,
    /// Task address -> tagged location.
    pub ranges: RangeSet,
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
                    let checked = blocks.iter().map(|_| AtomicBool::new(false)).collect();
                    files.push(PagesFile { path, map, blocks, checked });
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
        Ok(LocalPages { files, ranges: RangeSet::from_sorted(ranges) })
    }

    /// The bytes at tagged location `at`, `len` long, each block they
    /// touch checked against its hash the first time.
    pub fn bytes(&self, at: u64, len: u64) -> Result<&[u8]> {
        let (f, off) = locate(at);
        let f = &self.files[f];
        let end = off + len as usize;
        for b in off / digest::BLOCK..end.div_ceil(digest::BLOCK) {
            f.check(b)?;
        }
        Ok(&f.map[off..end])
    }

    /// Check every block the deferred pages lie in, on several threads:
    /// the restore does it before the task may run (a damaged image must
    /// fail the restore while the source still has the task, not kill the
    /// task later), beside its own work.
    pub fn check_all(&self) -> Result<()> {
        let mut work: Vec<(usize, usize)> = Vec::new();
        for (s, e, at) in self.ranges.iter() {
            let (f, off) = locate(at);
            let end = off + (e - s) as usize;
            work.extend((off / digest::BLOCK..end.div_ceil(digest::BLOCK)).map(|b| (f, b)));
        }
        work.sort_unstable();
        work.dedup();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..crate::image::workers().min(work.len()))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        while let Some(&(f, b)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                            self.files[f].check(b)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("check worker panicked"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        assert_eq!(merged(vec![(5, 9), (0, 2), (2, 4), (8, 12), (20, 20)]), vec![(0, 4), (5, 12)]);
    }
}
