//! userfaultfd features and PAGEMAP_SCAN. Debian 12's headers predate
//! WP_ASYNC and PAGEMAP_SCAN, so the ABI is spelled out here.

use super::{no, yes, Outcome};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const UFFD_API: u64 = 0xaa;
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

#[repr(C)]
#[derive(Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

nix::ioctl_readwrite!(uffdio_api, 0xaa, 0x3f, UffdioApi);

/// struct pm_scan_arg (linux/fs.h, 6.7+).
#[repr(C)]
#[derive(Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

nix::ioctl_readwrite!(pagemap_scan_ioctl, b'f', 16, PmScanArg);

pub const PAGE_IS_PRESENT: u64 = 1 << 1;

/// A new userfaultfd, or why there is none.
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
    let fd = open()?;
    let mut api = UffdioApi { api: UFFD_API, ..Default::default() };
    // SAFETY: UFFDIO_API on a fresh userfaultfd with a valid struct.
    unsafe { uffdio_api(fd.as_raw_fd(), &mut api) }.map_err(|e| format!("UFFDIO_API: {}", e.desc()))?;
    Ok(api.features)
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
    feature(FEATURE_PAGEFAULT_FLAG_WP, "UFFD_FEATURE_PAGEFAULT_FLAG_WP", "write-protect faults")
}

pub fn wp_async() -> Outcome {
    match features() {
        Ok(f) if f & FEATURE_WP_ASYNC != 0 && f & FEATURE_WP_UNPOPULATED != 0 => {
            yes("UFFD_FEATURE_WP_ASYNC and WP_UNPOPULATED: dirty tracking without faults")
        }
        Ok(f) if f & FEATURE_WP_ASYNC != 0 => yes("UFFD_FEATURE_WP_ASYNC (without WP_UNPOPULATED)"),
        Ok(f) => no(format!("UFFD_FEATURE_WP_ASYNC missing (features {f:#x}; needs 6.7+ and uffd-wp)")),
        Err(e) => no(e),
    }
}

pub fn events() -> Outcome {
    let want = [
        (FEATURE_EVENT_FORK, "fork"),
        (FEATURE_EVENT_REMAP, "remap"),
        (FEATURE_EVENT_REMOVE, "remove"),
        (FEATURE_EVENT_UNMAP, "unmap"),
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
    let mut regions = [0u64; 3 * 4];
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end: start + page,
        vec: regions.as_mut_ptr() as u64,
        vec_len: 4,
        category_mask: PAGE_IS_PRESENT,
        return_mask: PAGE_IS_PRESENT,
        ..Default::default()
    };
    let f = match std::fs::File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => return no(format!("/proc/self/pagemap: {e}")),
    };
    // SAFETY: the ioctl reads `arg` and writes at most vec_len regions.
    match unsafe { pagemap_scan_ioctl(f.as_raw_fd(), &mut arg) } {
        Ok(n) if n >= 1 => yes("PAGEMAP_SCAN ioctl on /proc/PID/pagemap"),
        Ok(n) => no(format!("PAGEMAP_SCAN returned {n} regions for a present page")),
        Err(e) => no(format!("PAGEMAP_SCAN: {} (needs 6.7+)", e.desc())),
    }
}
