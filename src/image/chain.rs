//! Pre-dump chains: an image whose pagemap says `in-parent` for pages that
//! did not change since its parent image (`inventory.parent`, a path
//! relative to the image directory). Each image lists every page the task
//! had at that moment, with a per-page identity (frame number or content
//! hash) in `pageids-PID.img`, so the next round can tell "unchanged" from
//! "moved here" or "replaced".

use super::pagemap::{PageFlags, PagemapImage};
use super::{pagemap_file, ImageDir, ImageError};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn pageids_file(pid: i32) -> String {
    format!("pageids-{pid}.img")
}

/// One image's view of the task's memory.
pub struct MemoryView {
    pub images: ImageDir,
    pub pagemap: PagemapImage,
    /// One identity per listed page, in pagemap order.
    pub ids: Vec<u64>,
    /// For each entry: index of its first page in `ids`, and (for present
    /// entries) its offset in the pages file.
    index: Vec<(usize, Option<u64>)>,
}

impl MemoryView {
    /// Process `pid`'s memory as this image recorded it.
    pub fn load(images: ImageDir, pid: i32) -> Result<MemoryView> {
        let pagemap: PagemapImage = images.read_json(&pagemap_file(pid))?;
        MemoryView::with_pagemap(images, pid, pagemap)
    }

    /// The same, with the pagemap already read.
    pub fn with_pagemap(images: ImageDir, pid: i32, pagemap: PagemapImage) -> Result<MemoryView> {
        let raw = images.read_verified(&pageids_file(pid))?;
        let ids: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
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
        if page != ids.len() {
            return Err(ImageError::Invalid {
                path: images.path(&pageids_file(pid)),
                reason: format!("{} page identities for {page} listed pages", ids.len()),
            }
            .into());
        }
        Ok(MemoryView { images, pagemap, ids, index })
    }

    /// The entry covering `addr`, if any.
    fn entry_at(&self, addr: u64) -> Option<usize> {
        let i = self.pagemap.entries.partition_point(|e| e.vaddr <= addr).checked_sub(1)?;
        let e = &self.pagemap.entries[i];
        (addr < e.vaddr + e.nr_pages * self.pagemap.page_size).then_some(i)
    }

    /// The identity this image recorded for the page at `addr`.
    pub fn id_at(&self, addr: u64) -> Option<u64> {
        let i = self.entry_at(addr)?;
        let e = &self.pagemap.entries[i];
        Some(self.ids[self.index[i].0 + ((addr - e.vaddr) / self.pagemap.page_size) as usize])
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
        let view = MemoryView::load(first, pid)?;
        Chain::from_view(view, pid)
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
                bail!("{}: parent image is of task {}, not {pid}", dir.display(), parent.inventory.root_pid);
            }
            views.push(MemoryView::load(parent, pid)?);
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
