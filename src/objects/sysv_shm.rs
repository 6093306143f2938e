//! System V shared memory segments (shmget/shmat). A segment is dumped
//! when the tree's attaches are all it has (nobody outside uses it), and
//! restored under its old id (kernel.shm_next_id), key, size, owner and
//! mode, with its data; processes attach it again at their addresses
//! (`shmat`, injected), and a segment that was marked for removal
//! (IPC_RMID) is marked again once they have.
//!
//! A segment not marked for removal outlives the dumped tree (PostgreSQL
//! keeps one so that a second postmaster can see the first). When restore
//! finds that very segment still there (same id, key, size, owner and
//! change time, attached by nobody) it takes it again and puts the dumped
//! data in; any other segment under the id is refused.

use super::{ContentSource, CreatedMemory, Identified, MemoryKey, MemoryKind, NewMemory};
use crate::image::objects::MemoryObject;
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const SHM_DEST: u32 = 0o1000;
const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

pub struct SysvShm;

#[derive(Clone, Serialize, Deserialize)]
pub struct State {
    pub key: i32,
    pub shmid: i32,
    /// Permission bits (the low 9 of shm_perm.mode).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Marked for removal (IPC_RMID): it goes when the last process detaches.
    pub removed: bool,
    /// Creation or last IPC_SET (unix time): with the rest, tells the
    /// tree's own segment, left behind, from another one.
    #[serde(default)]
    pub ctime: i64,
}

/// One line of /proc/sysvipc/shm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub key: i32,
    pub shmid: i32,
    pub perms: u32,
    pub size: u64,
    pub nattch: u64,
    pub uid: u32,
    pub gid: u32,
    pub ctime: i64,
}

/// Parse /proc/sysvipc/shm (header line, then one segment per line).
pub fn parse_segments(text: &str) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        let num = |i: usize| -> Result<i64> { f[i].parse().with_context(|| format!("bad field {i} in {line:?}")) };
        out.push(Segment {
            key: num(0)? as i32,
            shmid: num(1)? as i32,
            perms: u32::from_str_radix(f[2], 8).with_context(|| format!("bad perms in {line:?}"))?,
            size: num(3)? as u64,
            nattch: num(6)? as u64,
            uid: num(7)? as u32,
            gid: num(8)? as u32,
            ctime: num(13)?,
        });
    }
    Ok(out)
}

pub fn segment(shmid: i32) -> Result<Option<Segment>> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").context("reading /proc/sysvipc/shm")?;
    Ok(parse_segments(&text)?.into_iter().find(|s| s.shmid == shmid))
}

/// The segment attached read-only in ferry, to read its data.
struct Attached {
    addr: *mut libc::c_void,
    size: u64,
}

/// A segment's data, attached only when it is read (an attach of ferry's
/// own would count against the users check).
struct Source {
    shmid: i32,
    size: u64,
    attached: std::cell::OnceCell<Attached>,
}

impl Source {
    fn attached(&self) -> Result<&Attached> {
        if let Some(a) = self.attached.get() {
            return Ok(a);
        }
        let a = Attached::new(self.shmid, self.size)?;
        Ok(self.attached.get_or_init(|| a))
    }
}

impl ContentSource for Source {
    fn extents(&self) -> Result<Vec<(u64, u64)>> {
        self.attached()?.extents()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.attached()?.read_at(offset, buf)
    }
}

impl Attached {
    fn new(shmid: i32, size: u64) -> Result<Attached> {
        // SAFETY: shmat at an address of the kernel's choosing, read-only.
        let addr = unsafe { libc::shmat(shmid, std::ptr::null(), libc::SHM_RDONLY) };
        if addr as isize == -1 {
            bail!("System V segment {shmid}: shmat: {}", std::io::Error::last_os_error());
        }
        Ok(Attached { addr, size })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the segment is mapped read-only for `size` bytes until drop.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.size as usize) }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: detaching what `new` attached.
        unsafe { libc::shmdt(self.addr) };
    }
}

impl Attached {
    /// Non-zero pages. Reading the segment populates pages never written
    /// (shm files cannot be asked where their data is), so a sparse
    /// segment costs its size in memory while it is dumped.
    fn extents(&self) -> Result<Vec<(u64, u64)>> {
        let page = crate::page_size() as usize;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, p) in self.bytes().chunks(page).enumerate() {
            if p.iter().all(|&b| b == 0) {
                continue;
            }
            let off = (i * page) as u64;
            match out.last_mut() {
                Some(e) if e.0 + e.1 == off => e.1 += page as u64,
                _ => out.push((off, page as u64)),
            }
        }
        Ok(out)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let b = self.bytes();
        let start = offset as usize;
        let n = buf.len().min(b.len().saturating_sub(start));
        buf[..n].copy_from_slice(&b[start..start + n]);
        buf[n..].fill(0);
        Ok(())
    }
}

impl MemoryKind for SysvShm {
    const NAME: &'static str = "sysv-shm";
    type State = State;

    fn claims_mapping(m: &Mapping) -> bool {
        m.path.starts_with("/SYSV")
    }

    fn identify(_: &ProcDir, m: &Mapping) -> Result<Identified> {
        // maps shows the segment id as the inode number.
        let shmid = m.inode as i32;
        Ok((
            MemoryKey::SysV { shmid },
            Box::new(move || {
                let seg = segment(shmid)?.with_context(|| format!("System V segment {shmid} is gone"))?;
                let state = State {
                    key: seg.key,
                    shmid,
                    mode: seg.perms & 0o777,
                    uid: seg.uid,
                    gid: seg.gid,
                    removed: seg.perms & SHM_DEST != 0,
                    ctime: seg.ctime,
                };
                Ok(NewMemory {
                    kind: Self::NAME,
                    size: seg.size,
                    state: serde_json::to_value(state)?,
                    contents: Box::new(Source { shmid, size: seg.size, attached: Default::default() }),
                })
            }),
        ))
    }

    fn create(obj: &MemoryObject, s: &State) -> Result<CreatedMemory> {
        if let Some(seg) = segment(s.shmid)? {
            if left_behind(&seg, obj, s) {
                clear(s.shmid, seg.size)?;
                return Ok(CreatedMemory { fd: None, shmid: Some(s.shmid), reused: true });
            }
            bail!(
                "System V segment {} exists already (key {:#x}, {} bytes, {} attaches): the tree's segment \
                 cannot get its id back",
                s.shmid,
                seg.key,
                seg.size,
                seg.nattch
            );
        }
        std::fs::write(SHM_NEXT_ID, s.shmid.to_string()).with_context(|| format!("writing {SHM_NEXT_ID}"))?;
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
        // SAFETY: plain shmget.
        let id = unsafe { libc::shmget(s.key, obj.size as usize, flags) };
        let err = std::io::Error::last_os_error();
        let _ = std::fs::write(SHM_NEXT_ID, "-1");
        if id < 0 {
            bail!("System V segment {} (key {:#x}): shmget: {err}", s.shmid, s.key);
        }
        if id != s.shmid {
            // SAFETY: removing the segment just made.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            bail!("System V segment {}: the kernel gave id {id} instead", s.shmid);
        }
        // SAFETY: IPC_STAT then IPC_SET on the segment just made.
        unsafe {
            let mut ds: libc::shmid_ds = std::mem::zeroed();
            if libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0 {
                ds.shm_perm.uid = s.uid;
                ds.shm_perm.gid = s.gid;
                ds.shm_perm.mode = s.mode as _;
                libc::shmctl(id, libc::IPC_SET, &mut ds);
            }
        }
        Ok(CreatedMemory { fd: None, shmid: Some(id), reused: false })
    }

    fn finish(_: &MemoryObject, s: &State, created: &CreatedMemory) -> Result<()> {
        if let (true, Some(id)) = (s.removed, created.shmid) {
            // SAFETY: plain shmctl.
            if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } != 0 {
                bail!("System V segment {id}: IPC_RMID: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn check_users(s: &State, mappings: u64) -> Result<()> {
        // Every area attached to the segment counts as one attach.
        let seg = segment(s.shmid)?.with_context(|| format!("System V segment {} is gone", s.shmid))?;
        if seg.nattch > mappings {
            bail!(
                "System V segment {} (key {:#x}) is attached {} times, {} of them by the tree: processes outside \
                 the tree use it, and they would not share it with the restored tree",
                s.shmid,
                s.key,
                seg.nattch,
                mappings
            );
        }
        Ok(())
    }

    fn describe(s: &State) -> String {
        format!(
            "System V segment {} key {:#x} mode {:03o}{}",
            s.shmid,
            s.key,
            s.mode,
            if s.removed { ", removed" } else { "" }
        )
    }
}

/// The dumped tree's own segment, still there and used by nobody.
fn left_behind(seg: &Segment, obj: &MemoryObject, s: &State) -> bool {
    s.ctime != 0
        && !s.removed
        && seg.nattch == 0
        && seg.key == s.key
        && seg.size == obj.size
        && seg.ctime == s.ctime
        && seg.uid == s.uid
        && seg.gid == s.gid
        && seg.perms & 0o777 == s.mode
}

/// Zero a segment taken again: the image holds only its non-zero pages.
fn clear(shmid: i32, size: u64) -> Result<()> {
    // SAFETY: attach at an address of the kernel's choosing, zero `size`
    // bytes of it, detach.
    unsafe {
        let addr = libc::shmat(shmid, std::ptr::null(), 0);
        if addr as isize == -1 {
            bail!("System V segment {shmid}: shmat: {}", std::io::Error::last_os_error());
        }
        std::ptr::write_bytes(addr as *mut u8, 0, size as usize);
        libc::shmdt(addr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_lines() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n         0          3  1600                 65536  4242  4242      2     0     0     0     0 1700000000          0 1700000000                  8192                     0\n";
        let s = parse_segments(text).unwrap();
        assert_eq!(
            s,
            vec![Segment {
                key: 0,
                shmid: 3,
                perms: 0o1600,
                size: 65536,
                nattch: 2,
                uid: 0,
                gid: 0,
                ctime: 1700000000
            }]
        );
    }
}
