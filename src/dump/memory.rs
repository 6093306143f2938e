//! The address space: classify every mapping (what it is, how to recreate
//! it, whether ferry can).

use super::objects::ObjectTable;
use crate::image::task::{Advice, Vma, VmaKind};
use crate::objects::regular::file_id;
use crate::proc::maps::Mapping;
use crate::proc::pagemap;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

/// A mapping and what the image will say about it.
pub struct PlannedVma {
    pub map: Mapping,
    pub vma: Vma,
}

/// Classify the task's mappings; the first unsupported one is an error.
/// Memory objects (shared memory, memfd, System V segments) go into
/// `table`. `pid` is the process's PID in the tree's namespace.
pub fn plan(proc: &ProcDir, pid: i32, maps: &[Mapping], table: &mut ObjectTable) -> Result<Vec<PlannedVma>> {
    let mut out = Vec::new();
    for m in maps {
        let unsupported = |what: &str| -> anyhow::Error {
            anyhow::anyhow!("task {pid}: mapping {:#x}-{:#x} ({what}) is not supported yet", m.start, m.end)
        };
        let mut name = None;
        if m.path.starts_with("[anon_shmem:") {
            name = Some(m.path.clone());
        }
        let object = match table.mapping(proc, m) {
            Ok(o) => o,
            // Unmapped since maps was read (only while the task still runs).
            Err(e) if !proc.path(&format!("map_files/{:x}-{:x}", m.start, m.end)).exists() => {
                tracing::debug!("task {pid}: mapping {:#x}-{:#x} went away: {e:#}", m.start, m.end);
                continue;
            }
            Err(e) => return Err(e.context(format!("task {pid}: mapping {:#x}-{:#x} {}", m.start, m.end, m.path))),
        };
        let kind = if let Some((object, offset)) = object {
            VmaKind::Object { object, offset }
        } else {
            match m.special() {
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
                Some(n) => return Err(unsupported(n)),
                None if m.path.is_empty() => VmaKind::Anon,
                // (deleted files are memory objects: claimed above)
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
                lock_on_fault: m.has_flag("lf"),
                sealed: m.has_flag("sl"),
            },
        });
    }
    Ok(out)
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
        // A real program's address space is a realistic sample. Not this
        // test binary's own: its other test threads map and unmap while
        // smaps is read, and a read spanning such a change can show two
        // versions of one area.
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let proc = ProcDir::new(child.id() as i32);
        // Wait until sleep sleeps: exec and the loader's mapping are done.
        while !(proc.read_link("exe").is_ok_and(|e| e.ends_with("sleep")) && proc.stat().is_ok_and(|s| s.state == 'S'))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let maps = proc.smaps().unwrap();
        let planned = plan(&proc, proc.pid, &maps, &mut ObjectTable::default());
        child.kill().unwrap();
        child.wait().unwrap();
        let planned = planned.unwrap();
        check_layout(&planned).unwrap();
        assert!(planned.iter().any(|p| p.vma.kind == VmaKind::Vdso));
        assert!(planned.iter().any(|p| p.vma.name.as_deref() == Some("[stack]") && p.vma.growsdown));
        assert!(planned.iter().any(|p| matches!(&p.vma.kind, VmaKind::File { file, .. } if file.ino != 0)));
    }
}
