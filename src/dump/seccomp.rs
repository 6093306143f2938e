//! A stopped thread's seccomp filters (mode 2), read with ptrace as the
//! kernel keeps them: PTRACE_SECCOMP_GET_FILTER gives filter N's program
//! (0 is the newest), PTRACE_GET_SECCOMP_METADATA its flags. Restore
//! installs them again, oldest first (restore::finish). Strict mode (1)
//! allows nothing ferry's restore needs and is refused.

use crate::image::task::SeccompFilter;
use anyhow::{bail, Result};

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_GET_SECCOMP_METADATA: libc::c_uint = 0x420d;

/// struct seccomp_metadata.
#[repr(C)]
struct Metadata {
    filter_off: u64,
    flags: u64,
}

/// The filters of thread `tid` (ferry's TID, ptrace-stopped by ferry),
/// oldest first; `mode` is its /proc status `Seccomp:`.
pub fn filters(tid: i32, vtid: i32, mode: u32) -> Result<Vec<SeccompFilter>> {
    match mode {
        0 => return Ok(Vec::new()),
        2 => {}
        m => bail!("task {vtid} runs under seccomp mode {m} (strict): it cannot be restored"),
    }
    let mut out = Vec::new();
    for index in 0u64.. {
        // SAFETY: with a null buffer the kernel only returns the length.
        let len = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, std::ptr::null_mut::<u64>()) };
        if len < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) && index > 0 {
                break;
            }
            bail!("task {vtid}: reading its seccomp filter {index} (PTRACE_SECCOMP_GET_FILTER): {e}");
        }
        let mut program = vec![0u64; len as usize];
        // SAFETY: the buffer holds `len` struct sock_filter (8 bytes each).
        let got = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, program.as_mut_ptr()) };
        if got != len {
            bail!("task {vtid}: its seccomp filter {index} changed while read");
        }
        let mut meta = Metadata { filter_off: index, flags: 0 };
        // SAFETY: the kernel reads filter_off and writes the struct (its size given).
        let r = unsafe {
            libc::ptrace(PTRACE_GET_SECCOMP_METADATA, tid, std::mem::size_of::<Metadata>(), &mut meta as *mut Metadata)
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            bail!("task {vtid}: reading its seccomp filter {index}'s flags (PTRACE_GET_SECCOMP_METADATA): {e}");
        }
        out.push(SeccompFilter { flags: meta.flags, program });
    }
    out.reverse();
    Ok(out)
}
