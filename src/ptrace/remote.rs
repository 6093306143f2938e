//! Reading and writing another task's memory.

use anyhow::{bail, Context, Result};
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;

/// A task's memory: process_vm_readv for bulk reads, /proc/PID/mem for
/// what that cannot reach (PROT_NONE areas, writes to read-only code pages:
/// the kernel allows both to a tracer).
pub struct RemoteMem {
    pid: i32,
    mem: File,
}

impl RemoteMem {
    pub fn open(pid: i32) -> Result<RemoteMem> {
        let path = format!("/proc/{pid}/mem");
        let mem = OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("opening {path}"))?;
        Ok(RemoteMem { pid, mem })
    }

    /// Fill `local` from the remote ranges, in order. Fails on a short read.
    pub fn readv(&self, remote: &[RemoteIoVec], local: &mut [u8]) -> Result<()> {
        let pid = Pid::from_raw(self.pid);
        transfer(self.pid, "reading", remote, local.len(), |done, iovs| {
            process_vm_readv(pid, &mut [IoSliceMut::new(&mut local[done..])], iovs)
        })
    }

    /// Copy `local` into the remote ranges, in order. Fails on a short write.
    pub fn writev(&self, remote: &[RemoteIoVec], local: &[u8]) -> Result<()> {
        let pid = Pid::from_raw(self.pid);
        transfer(self.pid, "writing", remote, local.len(), |done, iovs| {
            process_vm_writev(pid, &[IoSlice::new(&local[done..])], iovs)
        })
    }

    /// Read through /proc/PID/mem: works on areas without PROT_READ.
    pub fn read_forced(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_exact_at(buf, addr)
            .with_context(|| format!("task {}: reading {} bytes at {addr:#x}", self.pid, buf.len()))
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        self.readv(&[RemoteIoVec { base: addr as usize, len }], buf).or_else(|_| self.read_forced(addr, buf))
    }

    pub fn read_u64s(&self, addr: u64, n: usize) -> Result<Vec<u64>> {
        let mut buf = vec![0u8; n * 8];
        self.read(addr, &mut buf)?;
        Ok(buf.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect())
    }

    /// One C `int` (native byte order: on big-endian machines the low half
    /// of a u64 read is not where an int lies).
    pub fn read_i32(&self, addr: u64) -> Result<i32> {
        let mut buf = [0u8; 4];
        self.read(addr, &mut buf)?;
        Ok(i32::from_ne_bytes(buf))
    }

    /// Write through /proc/PID/mem (also into read-only pages).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(data, addr)
            .with_context(|| format!("task {}: writing {} bytes at {addr:#x}", self.pid, data.len()))
    }
}

/// Drive process_vm_readv/writev over `remote` until `len` bytes moved:
/// the kernel may stop early (at most 1024 ranges per call, or a partial page).
fn transfer(
    pid: i32,
    what: &str,
    remote: &[RemoteIoVec],
    len: usize,
    mut call: impl FnMut(usize, &[RemoteIoVec]) -> nix::Result<usize>,
) -> Result<()> {
    debug_assert_eq!(remote.iter().map(|r| r.len).sum::<usize>(), len);
    let (mut done, mut idx, mut skip) = (0usize, 0usize, 0usize);
    while done < len {
        let mut iovs: Vec<RemoteIoVec> = remote[idx..remote.len().min(idx + 1024)].to_vec();
        iovs[0].base += skip;
        iovs[0].len -= skip;
        let n = call(done, &iovs).with_context(|| format!("task {pid}: {what} memory at {:#x}", iovs[0].base))?;
        if n == 0 {
            bail!("task {pid}: {what} memory at {:#x}: no access", iovs[0].base);
        }
        done += n;
        let mut left = n;
        while left > 0 {
            let avail = remote[idx].len - skip;
            if left >= avail {
                left -= avail;
                idx += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
    }
    Ok(())
}
