//! The address space: classify every mapping, find the pages worth saving
//! with pagemap, and copy them into the pages file.

use super::files::file_id;
use crate::image::pagemap::{PageExtent, PageFlags, PagemapImage};
use crate::image::task::{Advice, Vma, VmaKind};
use crate::image::RawImage;
use crate::proc::maps::Mapping;
use crate::proc::pagemap::{self, PageEntry};
use crate::proc::ProcDir;
use crate::ptrace::remote::RemoteMem;
use anyhow::{bail, Context, Result};
use nix::sys::uio::RemoteIoVec;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A mapping and what the image will say about it.
pub struct PlannedVma {
    pub map: Mapping,
    pub vma: Vma,
}

/// Classify the task's mappings; the first unsupported one is an error.
pub fn plan(proc: &ProcDir, maps: &[Mapping]) -> Result<Vec<PlannedVma>> {
    let pid = proc.pid;
    let mut out = Vec::new();
    for m in maps {
        let unsupported = |what: &str| -> anyhow::Error {
            anyhow::anyhow!("task {pid}: mapping {:#x}-{:#x} ({what}) is not supported yet", m.start, m.end)
        };
        let mut name = None;
        let kind = match m.special() {
            Some("[vsyscall]") => continue,
            Some("[vdso]") => VmaKind::Vdso,
            Some("[vvar]") => VmaKind::Vvar,
            Some("[vvar_vclock]") => VmaKind::VvarVclock,
            Some(n @ ("[heap]" | "[stack]")) => {
                name = Some(n.to_string());
                VmaKind::Anon
            }
            Some(n) if n.starts_with("[anon:") => {
                name = Some(n.to_string());
                VmaKind::Anon
            }
            Some(n) if n.starts_with("[anon_shmem:") => {
                name = Some(n.to_string());
                VmaKind::SharedAnon
            }
            Some(n) => return Err(unsupported(n)),
            None if m.path.is_empty() && m.shared => VmaKind::SharedAnon,
            None if m.path.is_empty() => VmaKind::Anon,
            None if m.shared && m.path == "/dev/zero (deleted)" => VmaKind::SharedAnon,
            None if m.path.starts_with("/SYSV") => return Err(unsupported("System V shared memory")),
            None if m.path.starts_with("/memfd:") => return Err(unsupported(&format!("memfd {}", m.path))),
            None if m.is_deleted() => {
                return Err(unsupported(&format!("{}: mappings of deleted files", m.path)));
            }
            None => {
                let mf = proc.path(&format!("map_files/{:x}-{:x}", m.start, m.end));
                let meta = match std::fs::metadata(&mf) {
                    Ok(meta) => meta,
                    // Unmapped since smaps was read (only while the task still runs).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("task {pid}: stat {}", mf.display())),
                };
                if !meta.file_type().is_file() {
                    let what = if meta.file_type().is_char_device() { "device" } else { "special file" };
                    return Err(unsupported(&format!("{what} {}", m.path)));
                }
                VmaKind::File { file: file_id(&PathBuf::from(&m.path), &meta), offset: m.offset }
            }
        };
        if (m.has_flag("io") || m.has_flag("pf"))
            && !matches!(kind, VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso)
        {
            return Err(unsupported("I/O memory"));
        }
        let advice = Advice::FROM_VMFLAGS.iter().filter(|(f, _)| m.has_flag(f)).map(|(_, a)| *a).collect();
        out.push(PlannedVma {
            map: m.clone(),
            vma: Vma {
                start: m.start,
                end: m.end,
                prot: m.prot_string(),
                kind,
                name,
                growsdown: m.has_flag("gd"),
                noreserve: m.has_flag("nr"),
                may_write: m.has_flag("mw"),
                advice,
                locked: m.has_flag("lo"),
                sealed: m.has_flag("sl"),
            },
        });
    }
    Ok(out)
}

/// A run of pages to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    vaddr: u64,
    pages: u64,
    /// Readable by process_vm_readv; otherwise read through /proc/PID/mem.
    readable: bool,
}

/// The page frame of the shared zero page, if pagemap shows frame numbers
/// (CAP_SYS_ADMIN): pages mapped to it read as zeros and need no copy.
pub fn zero_pfn() -> Option<u64> {
    let page = crate::page_size() as usize;
    // SAFETY: a fresh private anonymous mapping, read once and unmapped.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), page, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::read_volatile(p as *const u8);
        let f = File::open("/proc/self/pagemap").ok();
        let e = f.and_then(|f| pagemap::read_range(&f, p as u64, p as u64 + page as u64, page as u64).ok());
        libc::munmap(p, page);
        e.map(|e| e[0].pfn()).filter(|&pfn| pfn != 0)
    }
}

/// Which pages of `pv` hold data that only the image can bring back.
fn runs_for(
    proc: &ProcDir,
    pagemap_file: &File,
    pv: &PlannedVma,
    page: u64,
    zero_pfn: Option<u64>,
) -> Result<(u64, Vec<Run>)> {
    let m = &pv.map;
    let readable = m.read;
    let keep: Box<dyn Fn(PageEntry) -> bool> = match &pv.vma.kind {
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock => return Ok((0, Vec::new())),
        VmaKind::File { .. } if m.shared => return Ok((0, Vec::new())),
        VmaKind::SharedAnon => return shared_anon_runs(proc, m, page),
        // Private file pages that were never written still come from the file.
        VmaKind::File { .. } => Box::new(move |e: PageEntry| {
            e.swapped() || (e.present() && !e.file_or_shared() && Some(e.pfn()) != zero_pfn)
        }),
        VmaKind::Anon => Box::new(move |e: PageEntry| e.swapped() || (e.present() && Some(e.pfn()) != zero_pfn)),
    };
    let entries = pagemap::read_range(pagemap_file, m.start, m.end, page)
        .with_context(|| format!("task {}: pagemap of {:#x}-{:#x}", proc.pid, m.start, m.end))?;
    let mut runs: Vec<Run> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if !keep(*e) {
            continue;
        }
        let addr = m.start + i as u64 * page;
        match runs.last_mut() {
            Some(r) if r.vaddr + r.pages * page == addr => r.pages += 1,
            _ => runs.push(Run { vaddr: addr, pages: 1, readable }),
        }
    }
    Ok((entries.len() as u64, runs))
}

/// Shared anonymous memory lives in a shmem file: ask it where its data is,
/// which also finds pages this task has not mapped in its page tables.
fn shared_anon_runs(proc: &ProcDir, m: &Mapping, page: u64) -> Result<(u64, Vec<Run>)> {
    use nix::unistd::{lseek, Whence};
    let path = proc.path(&format!("map_files/{:x}-{:x}", m.start, m.end));
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let len = m.len();
    let base = m.offset;
    let mut runs = Vec::new();
    let mut pos = base;
    while pos < base + len {
        let data = match lseek(&f, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e).with_context(|| format!("SEEK_DATA in {}", path.display())),
        };
        if data >= base + len {
            break;
        }
        let hole = lseek(&f, data as i64, Whence::SeekHole).map(|h| h as u64).unwrap_or(base + len).min(base + len);
        let start = data / page * page;
        let end = hole.div_ceil(page) * page;
        runs.push(Run { vaddr: m.start + (start - base), pages: (end - start) / page, readable: m.read });
        pos = end;
    }
    Ok((len / page, runs))
}

pub struct MemoryDump {
    pub pagemap: PagemapImage,
    pub pages_scanned: u64,
    pub pages_written: u64,
}

/// Scan every planned VMA and copy its pages into `out`.
pub fn dump_pages(
    proc: &ProcDir,
    mem: &RemoteMem,
    planned: &[PlannedVma],
    out: &mut RawImage,
    pages_file: &str,
) -> Result<MemoryDump> {
    let page = crate::page_size();
    let zero = zero_pfn();
    let pm_path = proc.path("pagemap");
    let pm = File::open(&pm_path).with_context(|| format!("opening {}", pm_path.display()))?;
    let mut runs = Vec::new();
    let mut scanned = 0;
    for pv in planned {
        let (n, r) = runs_for(proc, &pm, pv, page, zero)?;
        scanned += n;
        runs.extend(r);
    }
    let total: u64 = runs.iter().map(|r| r.pages).sum();
    copy_runs(mem, &runs, page, out)?;
    let entries =
        runs.iter().map(|r| PageExtent { vaddr: r.vaddr, nr_pages: r.pages, flags: PageFlags::Present }).collect();
    Ok(MemoryDump {
        pagemap: PagemapImage { pages_file: pages_file.to_string(), page_size: page, entries },
        pages_scanned: scanned,
        pages_written: total,
    })
}

/// Copy every run into the pages file, block by block on several threads.
fn copy_runs(mem: &RemoteMem, runs: &[Run], page: u64, out: &mut RawImage) -> Result<()> {
    // File offset where each run starts.
    let mut starts = Vec::with_capacity(runs.len());
    let mut total = 0u64;
    for r in runs {
        starts.push(total);
        total += r.pages * page;
    }
    let blocks_done = AtomicU64::new(0);
    let blocks = total.div_ceil(crate::image::digest::BLOCK as u64);
    out.fill_parallel(total, |offset, block| {
        fill_block(mem, runs, &starts, page, offset, block)?;
        if blocks_done.fetch_add(1, Ordering::Relaxed) + 1 == blocks.div_ceil(2) {
            crate::testhook::stage("memory");
        }
        Ok(())
    })
}

/// Fill `block` with the file bytes at `offset`: readable memory in one
/// process_vm_readv per stretch, the rest through /proc/PID/mem.
fn fill_block(mem: &RemoteMem, runs: &[Run], starts: &[u64], page: u64, offset: u64, block: &mut [u8]) -> Result<()> {
    let mut i = starts.partition_point(|&s| s <= offset) - 1;
    let mut pos = 0usize;
    let mut iovs: Vec<RemoteIoVec> = Vec::new();
    let mut iov_from = 0usize;
    while pos < block.len() {
        let r = runs[i];
        let into_run = offset + pos as u64 - starts[i];
        let n = ((r.pages * page - into_run) as usize).min(block.len() - pos);
        let addr = r.vaddr + into_run;
        if r.readable {
            iovs.push(RemoteIoVec { base: addr as usize, len: n });
        } else {
            if !iovs.is_empty() {
                mem.readv(&iovs, &mut block[iov_from..pos])?;
                iovs.clear();
            }
            mem.read_forced(addr, &mut block[pos..pos + n])?;
            iov_from = pos + n;
        }
        pos += n;
        i += 1;
    }
    if !iovs.is_empty() {
        mem.readv(&iovs, &mut block[iov_from..])?;
    }
    Ok(())
}

/// Fail early, with the culprit named, if two mappings overlap or the
/// layout is otherwise impossible to rebuild.
pub fn check_layout(planned: &[PlannedVma]) -> Result<()> {
    for w in planned.windows(2) {
        if w[0].vma.end > w[1].vma.start {
            bail!(
                "mappings {:#x}-{:#x} and {:#x}-{:#x} overlap",
                w[0].vma.start,
                w[0].vma.end,
                w[1].vma.start,
                w[1].vma.end
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_layout_plans() {
        // The test binary's own address space is a realistic sample.
        let proc = ProcDir::current();
        let maps = proc.smaps().unwrap();
        let planned = plan(&proc, &maps).unwrap();
        check_layout(&planned).unwrap();
        assert!(planned.iter().any(|p| p.vma.kind == VmaKind::Vdso));
        assert!(planned.iter().any(|p| p.vma.name.as_deref() == Some("[stack]") && p.vma.growsdown));
        assert!(planned.iter().any(|p| matches!(&p.vma.kind, VmaKind::File { file, .. } if file.ino != 0)));
    }

    #[test]
    fn file_mapped_pages_are_not_copied_until_written() {
        let proc = ProcDir::current();
        let page = crate::page_size();
        let pm = File::open("/proc/self/pagemap").unwrap();
        // Our own executable's text: present file pages, none of them private copies.
        let maps = proc.smaps().unwrap();
        let text = maps.iter().find(|m| m.exec && m.is_file() && !m.shared).unwrap();
        let planned = plan(&proc, std::slice::from_ref(text)).unwrap();
        let (_, runs) = runs_for(&proc, &pm, &planned[0], page, zero_pfn()).unwrap();
        assert!(runs.is_empty(), "{runs:?}");
    }
}
