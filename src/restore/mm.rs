//! Rebuild the dumped address space inside the stopped child by injected
//! syscalls, the many per-area ones queued and run in batches:
//!
//! 1. unregister the child's own rseq area (ferry's, inherited);
//! 2. map a scratch area in a hole of both layouts: a syscall instruction
//!    for all later injections, the batch loop, and room for syscall
//!    arguments and batch tables;
//! 3. unmap everything of the child's own except scratch and the vDSO;
//! 4. move [vvar], [vvar_vclock] and [vdso] to the dumped addresses;
//! 5. map every dumped area, copy its pages in from the pages image
//!    (process_vm_writev, several threads), set advice, names, protections;
//! 6. PR_SET_MM_MAP: code/data/brk/stack/arg/env bounds, auxv, exe file.

use super::plan::ProcessPlan as Plan;
use crate::image::task::{Vma, VmaKind};
use crate::image::{digest, ImageError};
use crate::proc::maps::Mapping;
use crate::ptrace::batch::{BatchArea, SyscallQueue};
use crate::ptrace::inject::{stack_scratch, Injector};
use crate::ptrace::remote::RemoteMem;
use anyhow::{bail, Context, Result};
use ferry_arch::{Backend, Native, Syscall};
use nix::sys::uio::RemoteIoVec;
use std::sync::atomic::{AtomicUsize, Ordering};
use tracing::debug;

/// The scratch area: page 0 holds the syscall instruction and the batch
/// loop, the rest data.
pub struct Scratch {
    pub base: u64,
    pub len: u64,
    page: u64,
}

impl Scratch {
    pub fn data(&self) -> u64 {
        self.base + self.page
    }

    /// Where queued syscalls run: the loop on page 0, its table over the
    /// data room (nothing else uses that while a queue is flushed).
    pub fn batch(&self) -> BatchArea {
        BatchArea { code: self.base + BATCH_CODE, table: self.data(), len: SCRATCH_DATA }
    }
}

/// Data room for syscall arguments (an auxv, a PR_SET_MM_MAP struct, a
/// siginfo) and for batch tables: 4,096 syscalls per stop.
const SCRATCH_DATA: u64 = 256 * 1024;
/// Offset of the batch loop on the scratch code page.
const BATCH_CODE: u64 = 64;
/// Most ranges one process_vm_writev takes (UIO_MAXIOV).
const MAX_IOV: usize = 1024;
const BLOCK: usize = digest::BLOCK;

const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_VMA: u64 = 0x53564d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// Find `len` bytes free in every one of `layouts`, at or above 4 GiB.
fn find_hole(layouts: &[Vec<(u64, u64)>], len: u64, page: u64) -> Option<u64> {
    let mut busy: Vec<(u64, u64)> = layouts.iter().flatten().copied().collect();
    busy.sort_unstable();
    let mut cursor = 1u64 << 32;
    for (s, e) in busy {
        if s >= cursor + len + page {
            return Some(cursor + page);
        }
        cursor = cursor.max(e);
    }
    // Above everything, but below 47 bits (the smallest user space of the four).
    let top = 1u64 << 47;
    (cursor + 2 * page + len <= top).then_some(cursor + page)
}

/// Injected mmap; s390x takes its six arguments in memory.
fn mmap(
    inj: &mut Injector,
    mem: &RemoteMem,
    arg_area: u64,
    args: [u64; 6],
    what: impl FnOnce() -> String,
) -> Result<u64> {
    if <Native as Backend>::MMAP_ARGS_IN_MEMORY {
        let bytes: Vec<u8> = args.iter().flat_map(|a| a.to_ne_bytes()).collect();
        mem.write(arg_area, &bytes)?;
        inj.call(Syscall::Mmap, &[arg_area], what)
    } else {
        inj.call(Syscall::Mmap, &args, what)
    }
}

fn prot_of(v: &Vma) -> u64 {
    let mut p = 0;
    if v.readable() {
        p |= libc::PROT_READ;
    }
    if v.writable() {
        p |= libc::PROT_WRITE;
    }
    if v.executable() {
        p |= libc::PROT_EXEC;
    }
    p as u64
}

fn is_vdso_kind(k: &VmaKind) -> bool {
    matches!(k, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock)
}

fn vdso_block(maps: &[Mapping]) -> Vec<&Mapping> {
    maps.iter().filter(|m| matches!(m.special(), Some("[vdso]" | "[vvar]" | "[vvar_vclock]"))).collect()
}

/// Steps 1-4: leave the child with nothing but scratch and a vDSO at the
/// dumped place. Returns the scratch area and an injector using it.
pub fn clear<'t>(inj: &mut Injector<'t>, mem: &RemoteMem, plan: &Plan, child_maps: &[Mapping]) -> Result<Scratch> {
    let pid = inj.tracee().pid;
    let page = crate::page_size();
    if let Some(rseq) = inj.tracee().rseq_config()? {
        inj.call(Syscall::Rseq, &[rseq.addr, u64::from(rseq.len), RSEQ_FLAG_UNREGISTER, u64::from(rseq.sig)], || {
            "unregistering the inherited rseq area".into()
        })?;
    }

    let dumped: Vec<(u64, u64)> = plan.task.vmas.iter().map(|v| (v.start, v.end)).collect();
    let mine: Vec<(u64, u64)> = child_maps.iter().map(|m| (m.start, m.end)).collect();
    // Whole pages: munmap and mmap of the range refuse a partial one (64K pages).
    let len = page + SCRATCH_DATA.next_multiple_of(page);
    let base = find_hole(&[dumped.clone(), mine.clone()], len, page)
        .context("no address range is free in both the dumped and the current layout")?;
    let sp = Native::sp(inj.base());
    let arg_area = stack_scratch(child_maps, sp, 64).context("no stack room in the child for mmap arguments")?;
    let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got =
        mmap(inj, mem, arg_area, [base, len, rwx, flags, u64::MAX, 0], || format!("mapping scratch at {base:#x}"))?;
    if got != base {
        bail!("task {pid}: scratch landed at {got:#x} instead of {base:#x}");
    }
    let mut code = <Native as Backend>::SYSCALL_INSN.to_vec();
    code.extend_from_slice(<Native as Backend>::TRAP_INSN);
    if let Some(batch) = <Native as Backend>::BATCH_LOOP {
        code.resize(BATCH_CODE as usize, 0);
        code.extend_from_slice(batch);
    }
    mem.write(base, &code)?;
    inj.set_insn(base);
    let scratch = Scratch { base, len, page };

    // Unmap everything but scratch and the vDSO block.
    let block = vdso_block(child_maps);
    let mut keep: Vec<(u64, u64)> = block.iter().map(|m| (m.start, m.end)).collect();
    keep.push((base, base + len));
    keep.sort_unstable();
    let top = child_maps.iter().filter(|m| m.special() != Some("[vsyscall]")).map(|m| m.end).max().unwrap_or(0);
    let mut cursor = 0u64;
    for (s, e) in keep.iter().copied().chain(std::iter::once((top.max(cursor), top.max(cursor)))) {
        if s > cursor {
            inj.call(Syscall::Munmap, &[cursor, s - cursor], || format!("unmapping {cursor:#x}-{s:#x}"))?;
        }
        cursor = cursor.max(e);
    }

    move_vdso(inj, &block, plan, &[dumped, vec![(base, base + len)]], page)?;
    Ok(scratch)
}

/// Move the child's vDSO block to where the dumped task had it.
fn move_vdso(inj: &mut Injector, block: &[&Mapping], plan: &Plan, avoid: &[Vec<(u64, u64)>], page: u64) -> Result<()> {
    let wanted: Vec<&Vma> = plan.task.vmas.iter().filter(|v| is_vdso_kind(&v.kind)).collect();
    let (Some(cur0), Some(want0)) = (block.iter().map(|m| m.start).min(), wanted.iter().map(|v| v.start).min()) else {
        return Ok(());
    };
    if cur0 == want0 {
        return Ok(());
    }
    let cur_end = block.iter().map(|m| m.end).max().unwrap();
    let span = cur_end - cur0;
    let mremap_all = |inj: &mut Injector, from: u64, to: u64| -> Result<()> {
        for m in block {
            let (old, new) = (m.start - cur0 + from, m.start - cur0 + to);
            inj.call(Syscall::Mremap, &[old, m.len(), m.len(), MREMAP_MAYMOVE | MREMAP_FIXED, new], || {
                format!("moving {} from {old:#x} to {new:#x}", m.path)
            })?;
        }
        Ok(())
    };
    let overlaps = want0 < cur_end && cur0 < want0 + span;
    let from = if overlaps {
        let mut layouts = avoid.to_vec();
        layouts.push(vec![(cur0, cur_end), (want0, want0 + span)]);
        let tmp = find_hole(&layouts, span, page).context("no room to move the vDSO through")?;
        mremap_all(inj, cur0, tmp)?;
        tmp
    } else {
        cur0
    };
    mremap_all(inj, from, want0)?;
    debug!(from = cur0, to = want0, "vDSO moved");
    Ok(())
}

/// Step 5: map, fill and protect every dumped area.
pub fn build(inj: &mut Injector, mem: &RemoteMem, plan: &Plan, scratch: &Scratch) -> Result<()> {
    // Which VMAs receive pages: they are mapped writable until filled.
    let mut filled = vec![false; plan.task.vmas.len()];
    for src in &plan.sources {
        let end = src.vaddr + src.len;
        for (i, v) in plan.task.vmas.iter().enumerate() {
            if v.start < end && src.vaddr < v.end {
                filled[i] = true;
            }
        }
    }
    let area = Some(scratch.batch());
    let mut q = SyscallQueue::default();
    for (i, v) in plan.task.vmas.iter().enumerate() {
        if is_vdso_kind(&v.kind) {
            continue;
        }
        let mut prot = prot_of(v);
        if filled[i] {
            prot |= libc::PROT_WRITE as u64;
        }
        let mut flags = libc::MAP_FIXED as u64;
        flags |= if v.shared() { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u64;
        if v.growsdown {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        if v.noreserve {
            flags |= libc::MAP_NORESERVE as u64;
        }
        if plan.vma_shmids.contains_key(&i) {
            // System V segments are attached below, whole, then trimmed.
            continue;
        }
        let (fd, off) = match &v.kind {
            VmaKind::File { offset, .. } | VmaKind::Object { offset, .. } => (plan.vma_fds[&i] as u64, *offset),
            _ => {
                flags |= libc::MAP_ANONYMOUS as u64;
                (u64::MAX, 0)
            }
        };
        let what = move || format!("mapping {:#x}-{:#x} {}", v.start, v.end, v.prot);
        let args = [v.start, v.len(), prot, flags, fd, off];
        if <Native as Backend>::MMAP_ARGS_IN_MEMORY {
            // Its arguments live in the data room the batch table uses.
            q.flush(inj, area)?;
            let got = mmap(inj, mem, scratch.data(), args, what)?;
            if got != v.start {
                bail!("mapping {:#x}-{:#x} landed at {got:#x}", v.start, v.end);
            }
        } else {
            q.push(Syscall::Mmap, &args, Some(v.start), what);
        }
        area_state(inj, &mut q, mem, v, scratch)?;
    }
    q.flush(inj, area)?;
    attach_segments(inj, plan, &filled)?;
    for (i, v) in plan.task.vmas.iter().enumerate() {
        if plan.vma_shmids.contains_key(&i) {
            area_state(inj, &mut q, mem, v, scratch)?;
        }
    }
    q.flush(inj, area)?;

    debug!("areas mapped");
    fill_pages(mem, plan)?;
    debug!("pages copied in");

    for (i, v) in plan.task.vmas.iter().enumerate() {
        if filled[i] && !v.writable() {
            q.push(Syscall::Mprotect, &[v.start, v.len(), prot_of(v)], None, move || {
                format!("mprotect {:#x}-{:#x} {}", v.start, v.end, v.prot)
            });
        }
        if v.locked {
            let flags = if v.lock_on_fault { MLOCK_ONFAULT } else { 0 };
            q.push(Syscall::Mlock2, &[v.start, v.len(), flags], None, move || {
                format!("mlock {:#x}-{:#x}", v.start, v.end)
            });
        }
        if v.sealed {
            q.push(Syscall::Mseal, &[v.start, v.len(), 0], None, move || format!("mseal {:#x}-{:#x}", v.start, v.end));
        }
    }
    q.flush(inj, area)
}

const MLOCK_ONFAULT: u64 = 1;

/// Advice and name of one mapped area: advice queued on `q`, a name set at
/// once (it needs the data room the queue's table uses).
fn area_state<'a>(
    inj: &mut Injector,
    q: &mut SyscallQueue<'a>,
    mem: &RemoteMem,
    v: &'a Vma,
    scratch: &Scratch,
) -> Result<()> {
    for a in &v.advice {
        q.push(Syscall::Madvise, &[v.start, v.len(), a.madvise() as u64], None, move || {
            format!("madvise {:?} on {:#x}-{:#x}", a, v.start, v.end)
        });
    }
    let label = v.name.as_deref().and_then(|n| n.strip_prefix("[anon:").or_else(|| n.strip_prefix("[anon_shmem:")));
    if let Some(name) = label.and_then(|n| n.strip_suffix(']')) {
        q.flush(inj, Some(scratch.batch()))?;
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(0);
        mem.write(scratch.data(), &bytes)?;
        inj.call(Syscall::Prctl, &[PR_SET_VMA, PR_SET_VMA_ANON_NAME, v.start, v.len(), scratch.data()], || {
            format!("naming {:#x}-{:#x} {name:?}", v.start, v.end)
        })?;
    }
    Ok(())
}

/// Attach every System V segment the process had: once per attach
/// (areas of one segment with one base address), whole, then unmap what
/// the process had unmapped of it and set each area's protection.
fn attach_segments(inj: &mut Injector, plan: &Plan, filled: &[bool]) -> Result<()> {
    let mut attaches: Vec<(i32, u64, u64, Vec<usize>)> = Vec::new();
    for (i, v) in plan.task.vmas.iter().enumerate() {
        let Some(&(shmid, size)) = plan.vma_shmids.get(&i) else { continue };
        let VmaKind::Object { offset, .. } = v.kind else { continue };
        let base = v.start - offset;
        match attaches.iter_mut().find(|a| a.0 == shmid && a.1 == base) {
            Some(a) => a.3.push(i),
            None => attaches.push((shmid, base, size, vec![i])),
        }
    }
    let page = crate::page_size();
    for (shmid, base, size, areas) in attaches {
        let vmas: Vec<&Vma> = areas.iter().map(|&i| &plan.task.vmas[i]).collect();
        let writable = vmas.iter().zip(&areas).any(|(v, &i)| v.writable() || filled[i]);
        let mut flags = 0u64;
        if !writable {
            flags |= libc::SHM_RDONLY as u64;
        }
        if vmas.iter().any(|v| v.executable()) {
            flags |= SHM_EXEC;
        }
        let got = inj.call(Syscall::Shmat, &[shmid as u64, base, flags], || {
            format!("attaching System V segment {shmid} at {base:#x}")
        })?;
        if got != base {
            bail!("System V segment {shmid} attached at {got:#x} instead of {base:#x}");
        }
        let end = base + size.next_multiple_of(page);
        let mut cursor = base;
        let mut covered: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
        covered.sort_unstable();
        for (s, e) in covered.into_iter().chain(std::iter::once((end, end))) {
            if s > cursor {
                inj.call(Syscall::Munmap, &[cursor, s - cursor], || format!("trimming segment {shmid}"))?;
            }
            cursor = cursor.max(e);
        }
        for v in vmas {
            inj.call(Syscall::Mprotect, &[v.start, v.len(), prot_of(v)], || {
                format!("mprotect {:#x}-{:#x} {}", v.start, v.end, v.prot)
            })?;
        }
    }
    Ok(())
}

const SHM_EXEC: u64 = 0o100000;

/// Copy the saved pages into the child from ferry, several blocks at once:
/// one copy, from the page cache of the mapped pages files (this image's
/// and its parents') straight into the child's memory, which `build` mapped
/// writable. Blocks are hashed as they are copied (while in the cache); a
/// mismatch with an inventory fails the restore before the task ever runs.
/// Where the inventory lists each block's hash, only the blocks read are
/// hashed (a parent whose pages later rounds replaced is not read at all);
/// otherwise every block of every pages file used.
fn fill_pages(mem: &RemoteMem, plan: &Plan) -> Result<()> {
    let chain = &plan.chain;
    let mut used = vec![false; chain.views.len()];
    for s in &plan.sources {
        used[s.view] = true;
    }
    // Map each pages file that provides pages.
    let mut maps: Vec<Option<memmap2::Mmap>> = Vec::new();
    for (v, view) in chain.views.iter().enumerate() {
        let name = &view.pagemap.pages_file;
        if !used[v] || view.pagemap.present_bytes() == 0 {
            maps.push(None);
            continue;
        }
        let file = view.images.open_raw(name)?;
        // SAFETY: read-only mapping of an image file nobody writes to.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", view.images.path(name).display()))?;
        maps.push(Some(map));
    }
    // A pagemap that points past its pages file (both checksummed, so an
    // image made wrong rather than damaged) is refused, not read past.
    for s in &plan.sources {
        let len = maps[s.view].as_ref().map_or(0, |m| m.len() as u64);
        if s.offset.checked_add(s.len).is_none_or(|end| end > len) {
            let view = &chain.views[s.view];
            bail!(
                "{}: pages at {:#x} ({} bytes at offset {}) lie beyond the end of {} ({len} bytes)",
                view.images.dir.display(),
                s.vaddr,
                s.len,
                s.offset,
                view.pagemap.pages_file
            );
        }
    }
    let expected: Vec<Option<Vec<u64>>> = chain
        .views
        .iter()
        .zip(&maps)
        .map(|(view, m)| match m {
            Some(_) => view.images.block_hashes(&view.pagemap.pages_file),
            None => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    // Work items: one block of one file, and the task ranges its bytes fill.
    let mut work: Vec<(usize, usize, Vec<Part>)> = Vec::new();
    for (v, map) in maps.iter().enumerate() {
        if let Some(map) = map {
            for b in 0..map.len().div_ceil(BLOCK) {
                work.push((v, b, Vec::new()));
            }
        }
    }
    let first_block: Vec<usize> = {
        let mut acc = 0;
        maps.iter()
            .map(|m| {
                let here = acc;
                acc += m.as_ref().map_or(0, |m| m.len().div_ceil(BLOCK));
                here
            })
            .collect()
    };
    for s in &plan.sources {
        let (mut off, mut addr, mut left) = (s.offset as usize, s.vaddr, s.len as usize);
        while left > 0 {
            let b = off / BLOCK;
            let n = left.min((b + 1) * BLOCK - off);
            work[first_block[s.view] + b].2.push(Part { off, addr, len: n });
            (off, addr, left) = (off + n, addr + n as u64, left - n);
        }
    }
    for (_, _, parts) in work.iter_mut() {
        parts.sort_unstable_by_key(|p| p.off);
    }
    // Blocks checked one by one need reading only where they give pages.
    work.retain(|(v, _, parts)| expected[*v].is_none() || !parts.is_empty());
    let hashes: Vec<std::sync::Mutex<Vec<u64>>> = maps
        .iter()
        .map(|m| std::sync::Mutex::new(vec![0; m.as_ref().map_or(0, |m| m.len().div_ceil(BLOCK))]))
        .collect();
    let next = AtomicUsize::new(0);
    let total = work.iter().flat_map(|w| &w.2).map(|p| p.len as u64).sum();
    let progress = crate::progress::Progress::new("restoring pages", Some(total));
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..crate::image::workers().min(work.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while let Some((v, b, parts)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let map = maps[*v].as_ref().unwrap();
                        copy_parts(mem, map, parts)?;
                        progress.inc(parts.iter().map(|p| p.len as u64).sum());
                        let block = &map[b * BLOCK..((b + 1) * BLOCK).min(map.len())];
                        let h = digest::block_hash(block);
                        hashes[*v].lock().unwrap()[*b] = h;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("copy worker panicked"))
    })?;
    for (v, view) in chain.views.iter().enumerate() {
        if maps[v].is_none() {
            continue;
        }
        let name = &view.pagemap.pages_file;
        let hashes = hashes[v].lock().unwrap();
        let (want, got) = match &expected[v] {
            Some(blocks) => match work.iter().find(|(w, b, _)| *w == v && hashes[*b] != blocks[*b]) {
                Some((_, b, _)) => (blocks[*b], hashes[*b]),
                None => continue,
            },
            None => {
                let want = &view.images.entry(name)?.xxh3;
                let got = crate::image::hash_hex(digest::combine(&hashes));
                if &got == want {
                    continue;
                }
                let path = view.images.path(name);
                return Err(ImageError::Checksum { path, expected: want.clone(), got }.into());
            }
        };
        let (expected, got) = (crate::image::hash_hex(want), crate::image::hash_hex(got));
        return Err(ImageError::Checksum { path: view.images.path(name), expected, got }.into());
    }
    Ok(())
}

/// Bytes at `off` of a pages file that belong at `addr` in the task.
struct Part {
    off: usize,
    addr: u64,
    len: usize,
}

/// Copy parts into the task: parts adjacent in the file go in one call.
fn copy_parts(mem: &RemoteMem, map: &[u8], parts: &[Part]) -> Result<()> {
    let mut i = 0;
    while i < parts.len() {
        let start = parts[i].off;
        let mut iovs = Vec::new();
        let mut end = start;
        while i < parts.len() && parts[i].off == end && iovs.len() < MAX_IOV {
            iovs.push(RemoteIoVec { base: parts[i].addr as usize, len: parts[i].len });
            end += parts[i].len;
            i += 1;
        }
        mem.writev(&iovs, &map[start..end])?;
    }
    Ok(())
}

/// Step 6: the mm fields, auxv and executable.
pub fn set_mm(inj: &mut Injector, mem: &RemoteMem, plan: &Plan, scratch: &Scratch) -> Result<()> {
    let mm = &plan.task.mm;
    let auxv: Vec<u8> = mm.auxv.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let auxv_addr = scratch.data() + 256;
    let fields = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ];
    let mut map: Vec<u8> = fields.iter().flat_map(|v| v.to_ne_bytes()).collect();
    map.extend_from_slice(&(auxv.len() as u32).to_ne_bytes());
    map.extend_from_slice(&(plan.exe_fd as u32).to_ne_bytes());
    mem.write(scratch.data(), &map)?;
    mem.write(auxv_addr, &auxv)?;
    inj.call(Syscall::Prctl, &[PR_SET_MM, PR_SET_MM_MAP, scratch.data(), map.len() as u64, 0], || {
        "prctl(PR_SET_MM_MAP)".into()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_avoid_every_layout() {
        let a = vec![(0x1_0000_0000, 0x1_0010_0000)];
        let b = vec![(0x1_0010_0000 + 0x1000, 0x1_0020_0000)];
        let h = find_hole(&[a.clone(), b.clone()], 0x10000, 0x1000).unwrap();
        for (s, e) in a.iter().chain(&b) {
            assert!(h + 0x10000 <= *s || h >= *e, "{h:#x} overlaps {s:#x}-{e:#x}");
        }
        assert!(h >= 1 << 32);
    }
}
