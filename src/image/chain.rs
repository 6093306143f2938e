//! Pre-dump chains: an image whose pagemap says `in-parent` for pages that
//! did not change since its parent image (`inventory.parent`, a path
//! relative to the image directory). Each image lists every page the task
//! had at that moment, with a per-page identity (frame number or content
//! hash) in `pageids-PID.img`, so the next round can tell "unchanged" from
//! "moved here" or "replaced".

use super::inventory::ImageKind;
use super::pagemap::{PageFlags, PagemapImage};
use super::{ImageDir, ImageError};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn pageids_file(pid: i32) -> String {
    format!("pageids-{pid}.img")
}

/// One image's view of the task's memory.
pub struct MemoryView {
    pub images: ImageDir,
    pub pagemap: PagemapImage,
    /// One identity per listed page, in pagemap order; read only for a
    /// dump that compares against this image (a restore has no use for
    /// them).
    ids: Option<Vec<u64>>,
    /// For each entry: index of its first page in `ids`, and (for present
    /// entries) its offset in the pages file.
    index: Vec<(usize, Option<u64>)>,
}

impl MemoryView {
    /// Process `pid`'s memory as this image recorded it, with the page
    /// identities: for a dump whose parent this is. A final dump of a task
    /// that ended with it records none (its frames went with the task):
    /// none of its pages then counts as unchanged.
    pub fn load(images: ImageDir, pid: i32) -> Result<MemoryView> {
        let pagemap = images.read_pagemap(pid)?;
        let mut view = MemoryView::with_pagemap(images, pagemap)?;
        if view.images.entry(&pageids_file(pid)).is_err() && view.images.inventory.kind != ImageKind::PreDump {
            return Ok(view);
        }
        let raw = view.images.read_verified(&pageids_file(pid))?;
        let ids: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let listed: u64 = view.pagemap.entries.iter().map(|e| e.nr_pages).sum();
        if listed != ids.len() as u64 {
            return Err(ImageError::Invalid {
                path: view.images.path(&pageids_file(pid)),
                reason: format!("{} page identities for {listed} listed pages", ids.len()),
            }
            .into());
        }
        view.ids = Some(ids);
        Ok(view)
    }

    /// Where this image's pages are, from its pagemap (no identities).
    pub fn with_pagemap(images: ImageDir, pagemap: PagemapImage) -> Result<MemoryView> {
        let mut index = Vec::with_capacity(pagemap.entries.len());
        let (mut page, mut off) = (0usize, 0u64);
        for e in &pagemap.entries {
            let present = (e.flags == PageFlags::Present).then_some(off);
            index.push((page, present));
            page += e.nr_pages as usize;
            if e.flags == PageFlags::Present {
                off += e.nr_pages * pagemap.page_size;
            }
        }
        Ok(MemoryView { images, pagemap, ids: None, index })
    }

    /// Each extent, with its offset in the pages file (meaningful for
    /// present ones).
    pub fn entries_with_offsets(&self) -> impl Iterator<Item = (&super::pagemap::PageExtent, u64)> {
        self.pagemap.entries.iter().zip(&self.index).map(|(e, &(_, off))| (e, off.unwrap_or(0)))
    }

    /// The entry covering `addr`, if any.
    fn entry_at(&self, addr: u64) -> Option<usize> {
        let i = self.pagemap.entries.partition_point(|e| e.vaddr <= addr).checked_sub(1)?;
        let e = &self.pagemap.entries[i];
        (addr < e.vaddr + e.nr_pages * self.pagemap.page_size).then_some(i)
    }

    /// The identities this image recorded, asked page by page in address
    /// order (none unless read by [`MemoryView::load`]).
    pub fn ids(&self) -> IdCursor<'_> {
        IdCursor { view: self, next: 0 }
    }
}

/// A walk through a view's page identities that only moves forward.
pub struct IdCursor<'a> {
    view: &'a MemoryView,
    next: usize,
}

impl IdCursor<'_> {
    /// The identity of the page at `addr`, no lower than the one asked
    /// before.
    pub fn id_at(&mut self, addr: u64) -> Option<u64> {
        let v = self.view;
        let page = v.pagemap.page_size;
        let entries = &v.pagemap.entries;
        while entries.get(self.next).is_some_and(|e| e.vaddr + e.nr_pages * page <= addr) {
            self.next += 1;
        }
        let e = entries.get(self.next).filter(|e| e.vaddr <= addr)?;
        Some(v.ids.as_ref()?[v.index[self.next].0 + ((addr - e.vaddr) / page) as usize])
    }
}

/// Where one run of pages is read from: `view` in the chain, at `offset`
/// of its pages file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub vaddr: u64,
    pub len: u64,
    pub view: usize,
    pub offset: u64,
}

/// An image and all its parents, newest first.
pub struct Chain {
    pub views: Vec<MemoryView>,
}

impl Chain {
    /// Follow `parent` links from `first` (the images of the final dump)
    /// for process `pid`.
    pub fn open(first: ImageDir, pid: i32) -> Result<Chain> {
        let pagemap = first.read_pagemap(pid)?;
        Chain::from_view(MemoryView::with_pagemap(first, pagemap)?, pid)
    }

    /// The same, from the newest image's view.
    pub fn from_view(view: MemoryView, pid: i32) -> Result<Chain> {
        let mut views = vec![view];
        let mut seen: Vec<PathBuf> = Vec::new();
        while let Some(rel) = views.last().unwrap().images.inventory.parent.clone() {
            let here = views.last().unwrap().images.dir.clone();
            let dir = here.join(&rel);
            let canon = dir.canonicalize().with_context(|| format!("{}: parent image {rel}", here.display()))?;
            if seen.contains(&canon) || views.len() > 1000 {
                bail!("{}: the chain of parent images loops back to {}", here.display(), dir.display());
            }
            seen.push(canon);
            super::trust::check_images_dir(&dir)?;
            let parent = ImageDir::open(&dir).with_context(|| format!("{}: parent image", here.display()))?;
            if !parent.inventory.tasks.contains(&pid) {
                // The task began after that round (a child the tree forked
                // since): its pages are all in the newer images; an
                // in-parent page would be reported missing by `locate`.
                break;
            }
            let pagemap = parent.read_pagemap(pid)?;
            views.push(MemoryView::with_pagemap(parent, pagemap)?);
        }
        Ok(Chain { views })
    }

    /// Sources of every page the newest image lists as present or in-parent
    /// (lazy pages are left to the lazy-pages daemon), in address order.
    pub fn sources(&self) -> Result<Vec<Source>> {
        let top = &self.views[0];
        let page = top.pagemap.page_size;
        let mut out = Vec::new();
        for (i, e) in top.pagemap.entries.iter().enumerate() {
            let len = e.nr_pages * page;
            match e.flags {
                PageFlags::Present => {
                    out.push(Source { vaddr: e.vaddr, len, view: 0, offset: top.index[i].1.unwrap() })
                }
                PageFlags::InParent => self.locate(1, e.vaddr, e.vaddr + len, &mut out)?,
                PageFlags::Lazy => {}
            }
        }
        Ok(out)
    }

    /// Sources of `[start, end)`, which the newest image marks in-parent.
    pub fn resolve(&self, start: u64, end: u64, out: &mut Vec<Source>) -> Result<()> {
        self.locate(1, start, end, out)
    }

    fn locate(&self, view: usize, start: u64, end: u64, out: &mut Vec<Source>) -> Result<()> {
        let missing = |at: u64| -> anyhow::Error {
            let child = &self.views[view - 1].images.dir;
            match self.views.get(view) {
                Some(v) => anyhow::anyhow!(
                    "{}: pages at {at:#x} are marked in-parent, but the parent {} does not have them",
                    child.display(),
                    v.images.dir.display()
                ),
                None => {
                    anyhow::anyhow!("{}: pages at {at:#x} are marked in-parent, but it has no parent", child.display())
                }
            }
        };
        let v = self.views.get(view).ok_or_else(|| missing(start))?;
        let page = v.pagemap.page_size;
        let mut at = start;
        while at < end {
            let i = v.entry_at(at).ok_or_else(|| missing(at))?;
            let e = &v.pagemap.entries[i];
            let stop = (e.vaddr + e.nr_pages * page).min(end);
            match e.flags {
                PageFlags::Present => {
                    out.push(Source { vaddr: at, len: stop - at, view, offset: v.index[i].1.unwrap() + (at - e.vaddr) })
                }
                PageFlags::InParent => self.locate(view + 1, at, stop, out)?,
                PageFlags::Lazy => return Err(missing(at)),
            }
            at = stop;
        }
        Ok(())
    }

    pub fn dir(&self, view: usize) -> &Path {
        &self.views[view].images.dir
    }
}
