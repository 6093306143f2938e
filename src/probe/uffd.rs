//! userfaultfd features and PAGEMAP_SCAN. Debian 12's headers predate
//! WP_ASYNC and PAGEMAP_SCAN, so the ABI is spelled out here.

use super::{no, yes, Outcome};
use std::os::fd::{FromRawFd, OwnedFd};

use crate::uffd::{feature, Uffd, API as UFFD_API};

/// A new userfaultfd of our own, or why there is none.
pub fn open() -> Result<OwnedFd, String> {
    // SAFETY: userfaultfd(2) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOSYS) => " (kernel without CONFIG_USERFAULTFD)",
            Some(libc::EPERM) => " (vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE)",
            _ => "",
        };
        return Err(format!("userfaultfd: {e}{hint}"));
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The features this kernel's userfaultfd offers.
pub fn features() -> Result<u64, String> {
    Uffd::from_fd(open()?).api(0).map_err(|e| format!("{e:#}"))
}

fn feature(bit: u64, name: &str, what: &str) -> Outcome {
    match features() {
        Ok(f) if f & bit != 0 => yes(format!("{name}: {what}")),
        Ok(f) => no(format!("{name} missing (features {f:#x})")),
        Err(e) => no(e),
    }
}

pub fn basic() -> Outcome {
    match features() {
        Ok(f) => yes(format!("userfaultfd API {UFFD_API:#x}, missing-page faults (features {f:#x})")),
        Err(e) => no(e),
    }
}

pub fn wp() -> Outcome {
    feature(feature::PAGEFAULT_FLAG_WP, "UFFD_FEATURE_PAGEFAULT_FLAG_WP", "write-protect faults")
}

pub fn wp_async() -> Outcome {
    match features() {
        Ok(f) if f & feature::WP_ASYNC != 0 && f & feature::WP_UNPOPULATED != 0 => {
            yes("UFFD_FEATURE_WP_ASYNC and WP_UNPOPULATED: dirty tracking without faults")
        }
        Ok(f) if f & feature::WP_ASYNC != 0 => yes("UFFD_FEATURE_WP_ASYNC (without WP_UNPOPULATED)"),
        Ok(f) => no(format!("UFFD_FEATURE_WP_ASYNC missing (features {f:#x}; needs 6.7+ and uffd-wp)")),
        Err(e) => no(e),
    }
}

pub fn events() -> Outcome {
    let want = [
        (feature::EVENT_FORK, "fork"),
        (feature::EVENT_REMAP, "remap"),
        (feature::EVENT_REMOVE, "remove"),
        (feature::EVENT_UNMAP, "unmap"),
    ];
    match features() {
        Ok(f) => {
            let missing: Vec<&str> = want.iter().filter(|(b, _)| f & b == 0).map(|(_, n)| *n).collect();
            if missing.is_empty() {
                yes("non-cooperative events: fork remap remove unmap")
            } else {
                no(format!("missing events: {}", missing.join(" ")))
            }
        }
        Err(e) => no(e),
    }
}

pub fn pagemap_scan() -> Outcome {
    let page = crate::page_size();
    let buf = vec![1u8; 2 * page as usize];
    let start = (buf.as_ptr() as u64).div_ceil(page) * page;
    let f = match std::fs::File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => return no(format!("/proc/self/pagemap: {e}")),
    };
    match crate::proc::pagemap::scan(&f, start, start + page, 0, crate::proc::pagemap::category::PRESENT) {
        Ok(r) if !r.is_empty() => yes("PAGEMAP_SCAN ioctl on /proc/PID/pagemap"),
        Ok(_) => no("PAGEMAP_SCAN found no region for a present page"),
        Err(e) => no(format!("PAGEMAP_SCAN: {} (needs 6.7+)", e.desc())),
    }
}
