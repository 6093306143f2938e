//! Reading and writing another task's memory.

use anyhow::{bail, Context, Result};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::IoSliceMut;
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
        let want: usize = remote.iter().map(|r| r.len).sum();
        debug_assert_eq!(want, local.len());
        let mut done = 0usize;
        let mut idx = 0usize;
        let mut skip = 0usize;
        while done < want {
            // Re-slice the remote list after a partial transfer.
            let mut iovs: Vec<RemoteIoVec> = remote[idx..].to_vec();
            iovs[0].base += skip;
            iovs[0].len -= skip;
            iovs.truncate(1024);
            let mut slices = [IoSliceMut::new(&mut local[done..])];
            let n = process_vm_readv(Pid::from_raw(self.pid), &mut slices, &iovs)
                .with_context(|| format!("task {}: reading memory at {:#x}", self.pid, iovs[0].base))?;
            if n == 0 {
                bail!("task {}: memory at {:#x} is not readable", self.pid, iovs[0].base);
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

    /// Write through /proc/PID/mem (also into read-only pages).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(data, addr)
            .with_context(|| format!("task {}: writing {} bytes at {addr:#x}", self.pid, data.len()))
    }
}
