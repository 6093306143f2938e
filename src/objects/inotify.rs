//! inotify: each watch by path and mask, at its watch descriptor (fdinfo's
//! `inotify wd:... mask:... f_handle:...` lines). The path comes from the
//! file handle (open_by_handle_at on a mount of the same filesystem). The
//! kernel hands out watch descriptors in rising order, so restore adds
//! each watch, and while it gets a lower number than the program had,
//! removes it and adds it again; the IN_IGNORED events that leaves are read
//! away before the program runs. Events queued at dump time are not kept
//! (dump says how many bytes of them are dropped).

use super::{new_fd, FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub struct Inotify;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub watches: Vec<Watch>,
}

#[derive(Serialize, Deserialize)]
pub struct Watch {
    pub wd: i32,
    pub path: PathBuf,
    pub mask: u32,
}

/// One watch line's fields by name.
fn fields(line: &str) -> std::collections::HashMap<&str, &str> {
    line.split_whitespace().filter_map(|w| w.split_once(':')).collect()
}

/// The path of the inode behind a file handle, on the filesystem whose
/// kernel device number is `sdev`.
fn path_of(sdev: u64, handle_type: i32, handle: &[u8]) -> Result<PathBuf> {
    // The kernel's dev_t is MAJOR << 20 | MINOR.
    let dev = libc::makedev((sdev >> 20) as u32, (sdev & 0xfffff) as u32);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .find(|m| std::fs::metadata(m).is_ok_and(|meta| meta.dev() == dev))
        .with_context(|| format!("no mount of device {:#x} here", dev))?;
    let mount_fd = std::fs::File::open(mount).with_context(|| format!("opening {mount}"))?;
    // struct file_handle: u32 handle_bytes, i32 handle_type, bytes.
    let mut fh = Vec::with_capacity(8 + handle.len());
    fh.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&handle_type.to_ne_bytes());
    fh.extend_from_slice(handle);
    // SAFETY: open_by_handle_at reads the handle buffer built above.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount_fd.as_raw_fd(), fh.as_ptr(), libc::O_PATH | libc::O_CLOEXEC)
    };
    let fd = new_fd(fd as i32, "open_by_handle_at")?;
    Ok(std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?)
}

impl FileKind for Inotify {
    const NAME: &'static str = "inotify";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.link == "anon_inode:inotify"
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        let mut watches = Vec::new();
        for line in fd.fdinfo.lines().filter(|l| l.starts_with("inotify ")) {
            let f = fields(line);
            let hex = |k: &str| -> Result<u64> {
                let v = f.get(k).with_context(|| format!("{}: no {k} in {line:?}", fd.what()))?;
                u64::from_str_radix(v, 16).with_context(|| format!("{}: {k} {v:?}", fd.what()))
            };
            let handle_hex = f.get("f_handle").copied().unwrap_or_default();
            let handle: Vec<u8> = (0..handle_hex.len() / 2)
                .map(|i| u8::from_str_radix(&handle_hex[2 * i..2 * i + 2], 16))
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}: f_handle {handle_hex:?}", fd.what()))?;
            let (wd, ino) = (hex("wd")?, hex("ino")?);
            let path = path_of(hex("sdev")?, hex("fhandle-type")? as i32, &handle)
                .with_context(|| format!("{}: the path of inotify watch {wd} (inode {ino})", fd.what()))?;
            watches.push(Watch { wd: wd as i32, path, mask: hex("mask")? as u32 });
        }
        watches.sort_by_key(|w| w.wd);
        if let Some(copy) = fd.copy()? {
            let queued = super::readable(&copy).unwrap_or(0);
            if queued > 0 {
                reg.warn(format!("{}: {queued} bytes of inotify events not yet read are dropped", fd.what()));
            }
        }
        Ok(State { watches })
    }

    fn open(_: &FileObject, s: &State, _: &OpenContext) -> Result<OwnedFd> {
        // SAFETY: inotify_init1 takes no pointers.
        let fd = new_fd(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) }, "inotify_init1")?;
        for w in &s.watches {
            let path = std::ffi::CString::new(w.path.as_os_str().as_encoded_bytes()).context("a path with a NUL")?;
            loop {
                // SAFETY: a valid C string.
                let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), w.mask) };
                if wd < 0 {
                    bail!("watching {}: {}", w.path.display(), std::io::Error::last_os_error());
                }
                if wd == w.wd {
                    break;
                }
                if wd > w.wd {
                    bail!("watching {}: got watch {wd}, the program had {}", w.path.display(), w.wd);
                }
                // SAFETY: removes the watch just added.
                unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
            }
        }
        // Read away the IN_IGNORED events the removals queued.
        let mut buf = [0u8; 4096];
        while nix::unistd::read(&fd, &mut buf).is_ok_and(|n| n > 0) {}
        Ok(fd)
    }

    fn describe(s: &State) -> String {
        let w: Vec<String> =
            s.watches.iter().map(|w| format!("{} {} ({:#x})", w.wd, w.path.display(), w.mask)).collect();
        format!("inotify watching {}", if w.is_empty() { "nothing".into() } else { w.join(", ") })
    }
}
