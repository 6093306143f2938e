//! Where the image's paths resolve: ferry's own root, or a container's
//! mount tree being rebuilt (see [`super::container`]), where "/" is the
//! container's root and an absolute symlink stays inside it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

/// The kernel's struct open_how (openat2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

static ROOT: Mutex<Option<RawFd>> = Mutex::new(None);

/// While it lives, paths resolve in the tree under `root`.
pub struct InRoot(());

impl InRoot {
    pub fn set(root: &OwnedFd) -> InRoot {
        *ROOT.lock().unwrap() = Some(root.as_raw_fd());
        InRoot(())
    }
}

impl Drop for InRoot {
    fn drop(&mut self) {
        *ROOT.lock().unwrap() = None;
    }
}

/// open(2) of an image's path with `flags` (O_CLOEXEC added).
pub fn open(path: &Path, flags: i32) -> io::Result<File> {
    let root = *ROOT.lock().unwrap();
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let flags = flags | libc::O_CLOEXEC;
    let fd = match root {
        None => {
            // SAFETY: a NUL-terminated path; the fd is ours if it succeeds.
            unsafe { libc::open(c.as_ptr(), flags) }
        }
        Some(dir) => {
            let how = OpenHow { flags: flags as u64, mode: 0, resolve: libc::RESOLVE_IN_ROOT };
            // SAFETY: openat2 reads `how` (its size given) and the path.
            let fd = unsafe { libc::syscall(libc::SYS_openat2, dir, c.as_ptr(), &how, std::mem::size_of::<OpenHow>()) };
            fd as i32
        }
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
