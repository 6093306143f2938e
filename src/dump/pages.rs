//! Pages: find those worth saving with pagemap, decide for each whether it
//! is copied, unchanged since the parent image, or left for lazy transfer,
//! and copy the chosen ones into the pages file.

use super::memory::{zero_pfn, PlannedVma};
use crate::image::chain::{pageids_file, MemoryView};
use crate::image::digest::BLOCK;
use crate::image::pagemap::{PageExtent, PageFlags, PagemapImage};
use crate::image::task::VmaKind;
use crate::image::ImageWriter;
use crate::proc::pagemap::{self, PageEntry};
use crate::proc::ProcDir;
use crate::ptrace::remote::RemoteMem;
use crate::track::{frame_id, Method, Written};
use anyhow::{Context, Result};
use nix::sys::uio::RemoteIoVec;
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A page identity that never matches: "do not trust this page's history".
pub const UNKNOWN_ID: u64 = u64::MAX;

/// One page the task has.
#[derive(Clone, Copy, Debug)]
struct Page {
    addr: u64,
    entry: PageEntry,
    readable: bool,
    /// Index of its VMA in the planned list.
    vma: usize,
    /// Private anonymous memory: the only kind a userfaultfd can fill
    /// lazily (MISSING mode does not cover private file mappings).
    anon: bool,
}

/// What happens to a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Copy,
    InParent,
    Lazy,
}

/// How this round decides which pages to copy.
pub struct Selection<'a> {
    pub method: Method,
    /// The previous round's view of memory, for incremental images.
    pub parent: Option<&'a MemoryView>,
    /// uffd-wp: for each planned VMA, the pages written since the last
    /// round (None: not tracked, all of it counts as written).
    pub written: Option<Written>,
    /// Lazy dump: pages outside these ranges (sorted, merged: see
    /// `track::merged`) are left for the page server.
    pub eager: Option<Vec<(u64, u64)>>,
    /// The task runs while pages are copied (pre-dump): pages that vanish
    /// meanwhile are stored as zeros with an unknown identity.
    pub running: bool,
    /// Write each page's identity (pageids-PID.img) for a later round to
    /// compare against: pointless when they are frame numbers of a task
    /// that ends with this dump (the frames go with it).
    pub keep_ids: bool,
}

pub struct MemoryDump {
    pub pagemap: PagemapImage,
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub pages_in_parent: u64,
    pub pages_lazy: u64,
}

/// The pages a task has, read from pagemap while it is frozen.
pub struct Collected {
    pages: Vec<Page>,
    scanned: u64,
}

impl Collected {
    pub fn len(&self) -> usize {
        self.pages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

/// Read pagemap for every planned area (the task must be frozen); areas
/// `early` already holds are taken from it.
pub fn collect(proc: &ProcDir, planned: &[PlannedVma], early: EarlyPageTables) -> Result<Collected> {
    let (scanned, pages) = collect_pages(proc, planned, crate::page_size(), early)?;
    Ok(Collected { pages, scanned })
}

/// One process's page-table entries, read on another thread while the
/// frozen task is inspected (smaps walks the same page tables, and the
/// two reads together were half the freeze of a 1 GiB task), keyed by
/// area; for a final dump tracked with uffd-wp, also each area's pages
/// written since the last round (a read-only scan then: nothing is
/// protected again). An area missing here is read again later.
#[derive(Default)]
pub struct EarlyPageTables {
    entries: std::collections::HashMap<(u64, u64), Vec<PageEntry>>,
    written: std::collections::HashMap<(u64, u64), AreaWritten>,
}

/// One area's written ranges (None: the area is not tracked).
type AreaWritten = Option<Vec<(u64, u64)>>;

impl EarlyPageTables {
    /// Start reading the private areas of the frozen processes (those the
    /// dump may keep pages of), each with whether to scan for written
    /// pages; join the handle for their tables, in the given order.
    pub fn start(pids: Vec<(i32, bool)>) -> std::thread::JoinHandle<Vec<EarlyPageTables>> {
        std::thread::spawn(move || pids.into_iter().map(|(pid, w)| Self::read(&ProcDir::new(pid), w)).collect())
    }

    fn read(proc: &ProcDir, scan_written: bool) -> EarlyPageTables {
        let page = crate::page_size();
        let mut out = EarlyPageTables::default();
        let (Ok(maps), Ok(pm)) = (proc.maps(), File::open(proc.path("pagemap"))) else {
            return out;
        };
        // Not the kernel's own areas, shared ones (saved with their object)
        // or reservations without access (rarely holding pages, sometimes
        // terabytes: left to `collect`).
        let wanted =
            |m: &&crate::proc::maps::Mapping| !m.shared && (m.read || m.write || m.exec) && !m.is_kernel_area();
        for m in maps.iter().filter(wanted) {
            // Failures are left to the later reads, which report them in context.
            if let Ok(entries) = pagemap::read_range(&pm, m.start, m.end, page) {
                out.entries.insert((m.start, m.end), entries);
            }
            if scan_written {
                if let Ok(w) = crate::track::uffd_wp::written(&pm, m.start, m.end, false) {
                    out.written.insert((m.start, m.end), w);
                }
            }
        }
        out
    }

    /// The written pages of area `start..end`, if scanned.
    pub fn take_written(&mut self, start: u64, end: u64) -> Option<AreaWritten> {
        self.written.remove(&(start, end))
    }
}

/// Select, copy, and write pages-PID.img (and pageids-PID.img if kept).
pub fn write(
    mem: &RemoteMem,
    c: &Collected,
    sel: &Selection,
    writer: &mut ImageWriter,
    pid: i32,
) -> Result<MemoryDump> {
    let page = crate::page_size();
    let pages = &c.pages;
    let ids: Vec<AtomicU64> = if sel.method.ids_are_hashes() {
        hash_pages(mem, pages, page, sel.running)?
    } else {
        pages
            .iter()
            .map(|p| {
                AtomicU64::new(if p.entry.present() || p.entry.swapped_data() { frame_id(p.entry) } else { UNKNOWN_ID })
            })
            .collect()
    };
    let mut walk = FateWalk::new(sel);
    let mut fates: Vec<Fate> = pages.iter().zip(&ids).map(|(p, id)| walk.fate(p, id.load(Ordering::Relaxed))).collect();
    rewrite_early_pages(pages, &mut fates, sel, page);

    // Runs of contiguous pages with the same fate; copied ones feed the file.
    let mut entries: Vec<PageExtent> = Vec::new();
    let mut copy: Vec<usize> = Vec::new();
    for (i, (p, f)) in pages.iter().zip(&fates).enumerate() {
        let flags = match f {
            Fate::Copy => PageFlags::Present,
            Fate::InParent => PageFlags::InParent,
            Fate::Lazy => PageFlags::Lazy,
        };
        match entries.last_mut() {
            Some(e) if e.flags == flags && e.vaddr + e.nr_pages * page == p.addr => e.nr_pages += 1,
            _ => entries.push(PageExtent { vaddr: p.addr, nr_pages: 1, flags }),
        }
        if *f == Fate::Copy {
            copy.push(i);
        }
    }
    let pages_name = crate::image::pages_file(pid);
    let mut raw = writer.raw(&pages_name)?;
    copy_pages(mem, pages, &copy, &ids, page, sel, &mut raw)?;
    raw.finish(writer)?;
    if sel.keep_ids {
        let id_bytes: Vec<u8> = ids.iter().flat_map(|v| v.load(Ordering::Relaxed).to_le_bytes()).collect();
        let mut raw = writer.raw(&pageids_file(pid))?;
        raw.write(&id_bytes)?;
        raw.finish(writer)?;
    }
    let count = |want: Fate| fates.iter().filter(|f| **f == want).count() as u64;
    Ok(MemoryDump {
        pagemap: PagemapImage { pages_file: pages_name, page_size: page, entries },
        pages_scanned: c.scanned,
        pages_written: copy.len() as u64,
        pages_in_parent: count(Fate::InParent),
        pages_lazy: count(Fate::Lazy),
    })
}

/// A lazy restore places some pages before the task runs (around the
/// stack pointers, the rseq areas, locked and file-backed memory), and
/// reading one from a parent image means checking the whole 4 MiB block
/// it sits in (0.5 ms each here; a 1 GiB task's few such pages sat in
/// three blocks): inside the downtime. When those pages are unchanged
/// since the parent but fit in one block, a lazy dump copies them again
/// (microseconds at the source), so the restore reads only this image's
/// own small pages file. More than a block stays in the parent: copying
/// it would cost the freeze more than checking it costs the restore.
fn rewrite_early_pages(pages: &[Page], fates: &mut [Fate], sel: &Selection, page: u64) {
    let Some(eager) = sel.eager.as_deref() else { return };
    let mut cursor = crate::track::RangeCursor::new(eager);
    let early: Vec<usize> = (0..pages.len())
        .filter(|&i| fates[i] == Fate::InParent && (!pages[i].anon || cursor.contains(pages[i].addr)))
        .collect();
    if early.len() as u64 * page <= BLOCK as u64 {
        early.into_iter().for_each(|i| fates[i] = Fate::Copy);
    }
}

/// Each page's fate, pages asked in address order (as `collect` lists
/// them): every lookup is a cursor that only moves forward.
struct FateWalk<'a> {
    sel: &'a Selection<'a>,
    /// The area of the pages asked last, and its written ranges.
    vma: Option<usize>,
    written: Option<crate::track::RangeCursor<'a>>,
    parent: Option<crate::image::chain::IdCursor<'a>>,
    eager: Option<crate::track::RangeCursor<'a>>,
}

impl<'a> FateWalk<'a> {
    fn new(sel: &'a Selection<'a>) -> FateWalk<'a> {
        let eager = sel.eager.as_deref().map(crate::track::RangeCursor::new);
        FateWalk { sel, vma: None, written: None, parent: sel.parent.map(|v| v.ids()), eager }
    }

    fn fate(&mut self, p: &Page, id: u64) -> Fate {
        let sel = self.sel;
        if self.vma != Some(p.vma) {
            self.vma = Some(p.vma);
            self.written = match (sel.method, &sel.written) {
                (Method::UffdWp, Some(w)) => w[p.vma].as_deref().map(crate::track::RangeCursor::new),
                _ => None,
            };
        }
        let written = match (sel.method, &sel.written) {
            (Method::UffdWp, Some(_)) => self.written.as_mut().is_none_or(|c| c.contains(p.addr)),
            (Method::UffdWp, None) => true,
            (Method::SoftDirty, _) => p.entry.soft_dirty() || !(p.entry.present() || p.entry.swapped_data()),
            (Method::Hashing, _) => false,
        };
        // Asked for every page, so the cursor sees each address in order.
        let parent_id = self.parent.as_mut().and_then(|c| c.id_at(p.addr));
        if !written && id != UNKNOWN_ID && parent_id == Some(id) {
            Fate::InParent
        } else if p.anon && self.eager.as_mut().is_some_and(|c| !c.contains(p.addr)) {
            Fate::Lazy
        } else {
            Fate::Copy
        }
    }
}

/// Every page whose contents only the image can bring back, with its
/// pagemap entry; returns (pages scanned, pages).
fn collect_pages(
    proc: &ProcDir,
    planned: &[PlannedVma],
    page: u64,
    mut early: EarlyPageTables,
) -> Result<(u64, Vec<Page>)> {
    let zero = zero_pfn();
    let pm_path = proc.path("pagemap");
    let pm = File::open(&pm_path).with_context(|| format!("opening {}", pm_path.display()))?;
    let mut out = Vec::new();
    let mut scanned = 0;
    for (vi, pv) in planned.iter().enumerate() {
        let m = &pv.map;
        let keep: fn(PageEntry, Option<u64>) -> bool = match &pv.vma.kind {
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock => continue,
            // Shared memory is saved with its object (objects.json), once.
            VmaKind::File { .. } | VmaKind::Object { .. } if m.shared => continue,
            // Private file pages never written still come from the file.
            VmaKind::File { .. } | VmaKind::Object { .. } => {
                |e, zero| e.swapped_data() || (e.present() && !e.file_or_shared() && Some(e.pfn()) != zero)
            }
            VmaKind::Anon => |e, zero| e.swapped_data() || (e.present() && Some(e.pfn()) != zero),
        };
        let entries = match early.entries.remove(&(m.start, m.end)) {
            Some(e) => e,
            None => pagemap::read_range(&pm, m.start, m.end, page)
                .with_context(|| format!("task {}: pagemap of {:#x}-{:#x}", proc.pid, m.start, m.end))?,
        };
        scanned += entries.len() as u64;
        for (i, e) in entries.into_iter().enumerate() {
            if keep(e, zero) {
                let anon = pv.vma.kind == VmaKind::Anon;
                out.push(Page { addr: m.start + i as u64 * page, entry: e, readable: m.read, vma: vi, anon });
            }
        }
    }
    Ok((scanned, out))
}

/// Read the pages at `idx` (in order) into `buf`, page after page: one
/// process_vm_readv per readable stretch, /proc/PID/mem for the rest.
/// When `running`, a page that cannot be read (unmapped meanwhile) is
/// zeroed and reported in the returned list instead of failing.
fn read_pages(
    mem: &RemoteMem,
    pages: &[Page],
    idx: &[usize],
    page: u64,
    buf: &mut [u8],
    running: bool,
) -> Result<Vec<usize>> {
    let ps = page as usize;
    let mut iovs: Vec<RemoteIoVec> = Vec::new();
    let mut from = 0usize;
    let mut lost = Vec::new();
    let flush =
        |iovs: &mut Vec<RemoteIoVec>, from: usize, to: usize, buf: &mut [u8], lost: &mut Vec<usize>| -> Result<()> {
            if iovs.is_empty() {
                return Ok(());
            }
            if let Err(e) = mem.readv(iovs, &mut buf[from..to]) {
                if !running {
                    return Err(e);
                }
                // Page by page, to save what can still be read.
                let mut at = from;
                for v in iovs.iter() {
                    for k in 0..v.len / ps {
                        let dst = &mut buf[at + k * ps..at + (k + 1) * ps];
                        if mem.readv(&[RemoteIoVec { base: v.base + k * ps, len: ps }], dst).is_err() {
                            dst.fill(0);
                            lost.push((at + k * ps) / ps);
                        }
                    }
                    at += v.len;
                }
            }
            iovs.clear();
            Ok(())
        };
    for (k, &i) in idx.iter().enumerate() {
        let p = pages[i];
        let at = k * ps;
        if p.readable {
            match iovs.last_mut() {
                Some(v) if (v.base + v.len) as u64 == p.addr => v.len += ps,
                _ => iovs.push(RemoteIoVec { base: p.addr as usize, len: ps }),
            }
        } else {
            flush(&mut iovs, from, at, buf, &mut lost)?;
            if let Err(e) = mem.read_forced(p.addr, &mut buf[at..at + ps]) {
                if !running {
                    return Err(e);
                }
                buf[at..at + ps].fill(0);
                lost.push(k);
            }
            from = at + ps;
        }
    }
    flush(&mut iovs, from, idx.len() * ps, buf, &mut lost)?;
    Ok(lost.into_iter().map(|k| idx[k]).collect())
}

/// Content hashes of every page (the `hashing` tracker), read in blocks on
/// several threads.
fn hash_pages(mem: &RemoteMem, pages: &[Page], page: u64, running: bool) -> Result<Vec<AtomicU64>> {
    let ids: Vec<AtomicU64> = pages.iter().map(|_| AtomicU64::new(UNKNOWN_ID)).collect();
    let per_block = BLOCK / page as usize;
    let chunks: Vec<Vec<usize>> =
        (0..pages.len()).collect::<Vec<_>>().chunks(per_block).map(<[usize]>::to_vec).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..crate::image::workers().min(chunks.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = vec![0u8; BLOCK];
                    while let Some(idx) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let lost = read_pages(mem, pages, idx, page, &mut buf, running)?;
                        for (k, &i) in idx.iter().enumerate() {
                            let data = &buf[k * page as usize..(k + 1) * page as usize];
                            let id = if lost.contains(&i) { UNKNOWN_ID } else { xxhash_rust::xxh3::xxh3_64(data) };
                            ids[i].store(id, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("hash worker panicked"))
    })?;
    Ok(ids)
}

/// Copy the chosen pages into the pages file, block by block on several
/// threads. For hashing images, the identity becomes the hash of what was
/// actually copied (the task may have changed the page since it was hashed).
fn copy_pages(
    mem: &RemoteMem,
    pages: &[Page],
    copy: &[usize],
    ids: &[AtomicU64],
    page: u64,
    sel: &Selection,
    out: &mut crate::image::RawImage,
) -> Result<()> {
    let ps = page as usize;
    let total = copy.len() as u64 * page;
    let blocks = total.div_ceil(BLOCK as u64);
    let done = AtomicU64::new(0);
    let lost_all = Mutex::new(Vec::new());
    let progress = crate::progress::Progress::new("dumping pages", Some(total));
    out.fill_parallel(total, |offset, block| {
        let first = (offset / page) as usize;
        let idx = &copy[first..first + block.len() / ps];
        let lost = read_pages(mem, pages, idx, page, block, sel.running)?;
        if sel.method.ids_are_hashes() {
            for (k, &i) in idx.iter().enumerate() {
                ids[i].store(xxhash_rust::xxh3::xxh3_64(&block[k * ps..(k + 1) * ps]), Ordering::Relaxed);
            }
        }
        lost_all.lock().unwrap().extend(lost);
        progress.inc(block.len() as u64);
        if done.fetch_add(1, Ordering::Relaxed) + 1 == blocks.div_ceil(2) {
            crate::testhook::stage("memory");
        }
        Ok(())
    })?;
    if blocks == 0 {
        crate::testhook::stage("memory");
    }
    for i in lost_all.into_inner().unwrap() {
        ids[i].store(UNKNOWN_ID, Ordering::Relaxed);
    }
    Ok(())
}
