//! epoll: each file it watches with its events and data (fdinfo's `tfd:`
//! lines). The kernel keys a watch by (file, fd number), and a program
//! changes or removes one by that number (EPOLL_CTL_MOD/DEL), so restore
//! must add each watch under the number the process had, not ferry's. It
//! does so in a forked helper whose fd table it can rearrange freely: the
//! epoll and the watched descriptions are moved above every number in
//! use, each watched one is dup'ed to its number, added, and closed again.
//! The helper shares the descriptions with ferry, so the watches stay.
//!
//! A watch whose fd the process closed (the description still open
//! elsewhere: the kernel keeps the watch) is refused by name: its number
//! no longer says which file it is.

use super::{new_fd, FdProbe, FileKind, OpenContext, OpenFiles, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Context, Result};
use ferry_arch::hex;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

pub struct Epoll;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// The process (in the tree) whose fd numbers `watches` use.
    pub owner: i32,
    pub watches: Vec<Watch>,
}

#[derive(Serialize, Deserialize)]
pub struct Watch {
    pub fd: i32,
    #[serde(with = "hex::u32")]
    pub events: u32,
    #[serde(with = "hex::u64")]
    pub data: u64,
}

/// One `tfd:` line: (fd, events, data, inode).
fn parse_watch(line: &str) -> Option<(i32, u32, u64, u64)> {
    let mut fields = std::collections::HashMap::new();
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        let (key, value) = match w.split_once(':') {
            Some((k, "")) => (k, words.next()?),
            Some((k, v)) => (k, v),
            None => continue,
        };
        fields.insert(key, value);
    }
    Some((
        fields.get("tfd")?.parse().ok()?,
        u32::from_str_radix(fields.get("events")?, 16).ok()?,
        u64::from_str_radix(fields.get("data")?, 16).ok()?,
        u64::from_str_radix(fields.get("ino")?, 16).ok()?,
    ))
}

impl FileKind for Epoll {
    const NAME: &'static str = "epoll";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.link == "anon_inode:[eventpoll]"
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        let mut watches = Vec::new();
        for line in fd.fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
            let (tfd, events, data, ino) =
                parse_watch(line).with_context(|| format!("{}: fdinfo line {line:?}", fd.what()))?;
            let now = std::fs::metadata(fd.proc.path(&format!("fd/{tfd}"))).map(|m| m.ino()).ok();
            if now != Some(ino) {
                bail!(
                    "{}: the epoll watches fd {tfd} (inode {ino}), which the process has closed since it \
                     added it (the file is open elsewhere); ferry cannot tell which file that watch is",
                    fd.what()
                );
            }
            watches.push(Watch { fd: tfd, events, data });
        }
        Ok(State { owner: fd.pid, watches })
    }

    fn open(_: &FileObject, _: &State, _: &OpenContext) -> Result<OwnedFd> {
        // SAFETY: epoll_create1 takes no pointers.
        new_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll_create1")
    }

    fn link(_: &FileObject, s: &State, fd: &OwnedFd, files: &OpenFiles) -> Result<()> {
        if s.watches.is_empty() {
            return Ok(());
        }
        let mut sources = Vec::new();
        for w in &s.watches {
            sources.push(files.of(s.owner, w.fd).with_context(|| format!("watch of fd {}", w.fd))?.as_raw_fd());
        }
        add_watches(fd.as_raw_fd(), &s.watches, &sources)
    }

    fn describe(s: &State) -> String {
        let w: Vec<String> = s.watches.iter().map(|w| format!("fd {} ({:#x})", w.fd, w.events)).collect();
        if w.is_empty() {
            "epoll watching nothing".into()
        } else {
            format!("epoll watching {}", w.join(", "))
        }
    }
}

/// In a forked helper: add each watch to `epfd` under its own fd number,
/// the description being ferry's `sources[i]`.
fn add_watches(epfd: RawFd, watches: &[Watch], sources: &[RawFd]) -> Result<()> {
    let top = watches.iter().map(|w| w.fd).chain(sources.iter().copied()).chain([epfd]).max().unwrap_or(0) + 1;
    // The helper reports a failure as (step, errno): step 0 moving fds,
    // 1 dup3, 2 + i adding watch i.
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    let report = report_w.as_raw_fd();
    let mut high = vec![0; sources.len()];
    // SAFETY: the child only makes raw syscalls (rlimits, fcntl, dup3,
    // epoll_ctl, close, write) on its own fd table and memory already
    // allocated before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; every pointer is to the child's own memory.
        unsafe {
            let fail = |step: i32| -> ! {
                let what = [step, *libc::__errno_location()];
                libc::write(report, what.as_ptr().cast(), 8);
                libc::_exit(1)
            };
            let mut lim: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            // Everything needed above every number a watch uses.
            let ep = libc::fcntl(epfd, libc::F_DUPFD, top);
            if ep < 0 {
                fail(0);
            }
            for (h, &src) in high.iter_mut().zip(sources) {
                *h = libc::fcntl(src, libc::F_DUPFD, top);
                if *h < 0 {
                    fail(0);
                }
            }
            for (i, (w, &h)) in watches.iter().zip(high.iter()).enumerate() {
                if libc::dup3(h, w.fd, 0) < 0 {
                    fail(1);
                }
                let mut ev = libc::epoll_event { events: w.events, u64: w.data };
                if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, w.fd, &mut ev) != 0 {
                    fail(2 + i as i32);
                }
                libc::close(w.fd);
            }
            libc::_exit(0);
        }
    }
    drop(report_w);
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let mut what = [0u8; 8];
    if nix::unistd::read(&report_r, &mut what).ok() != Some(8) {
        bail!("the helper adding the watches failed (status {status:#x})");
    }
    let step = i32::from_ne_bytes(what[..4].try_into().expect("4 bytes"));
    let errno = std::io::Error::from_raw_os_error(i32::from_ne_bytes(what[4..].try_into().expect("4 bytes")));
    match step {
        0 => bail!("moving fds out of the way: {errno}"),
        1 => bail!("dup3: {errno}"),
        n => bail!("EPOLL_CTL_ADD of fd {}: {errno}", watches.get(n as usize - 2).map_or(-1, |w| w.fd)),
    }
}
