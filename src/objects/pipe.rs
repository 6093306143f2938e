//! Pipes and FIFOs: one kernel pipe behind each end's file description.
//! Dump copies the bytes in flight without taking them (tee(2) into a
//! scratch pipe: the task, or a ferry killed midway, loses nothing) and
//! notes the buffer size. Restore creates the pipe once (a FIFO: opens its
//! path read-write), sets the size, writes the bytes back, and gives every
//! description its own open of it, so each keeps its own status flags. An
//! end no process of the tree holds is closed once all are open, as it was
//! (a reader then sees the data, then end of file).
//!
//! A pipe that processes outside the tree also hold (a shell job's stdout
//! piped to a logger) cannot be re-created: the caller hands a description
//! of it in with `--inherit-fd fd[N]:pipe:[INODE]`, as with CRIU.

use super::regular::{file_id, reopen};
use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use crate::image::task::FileId;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

pub struct Pipe;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// The pipe's inode (`pipe:[INODE]`), or the FIFO's.
    pub ino: u64,
    /// A FIFO: the path it is opened by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fifo: Option<FileId>,
    /// Buffer size in bytes (F_GETPIPE_SZ).
    pub size: u32,
    /// Bytes in flight at dump time (in the image with the pipe's first
    /// description).
    pub queued: u32,
    /// A process outside the tree that held the pipe too, and the fd of
    /// the tree's it was found by: restore needs it handed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<Outside>,
}

#[derive(Serialize, Deserialize)]
pub struct Outside {
    /// "task P fd N" (the tree's).
    pub fd: String,
    /// "PID (comm)" of the outsider.
    pub holder: String,
}

const F_SETPIPE_SZ: i32 = 1031;
const F_GETPIPE_SZ: i32 = 1032;

fn fcntl(fd: &impl AsRawFd, cmd: i32, arg: i32, what: &str) -> Result<i32> {
    // SAFETY: fcntl with an int argument on an fd we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    if r < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

fn new_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A new description of the pipe behind `fd` (its /proc link reopened),
/// for reading or writing as `flags` say.
fn reopen_end(fd: &OwnedFd, flags: u32) -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(flags as i32 & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags as i32 & libc::O_ACCMODE != libc::O_RDONLY)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .context("opening a new end of the pipe")?;
    Ok(f.into())
}

/// Copy the bytes queued in the pipe `src` (a read end of ferry's) without
/// taking them.
fn peek(fd: &FdProbe, src: &File, size: u32) -> Result<Vec<u8>> {
    let queued = super::readable(src).with_context(|| fd.what())?;
    if queued == 0 {
        return Ok(Vec::new());
    }
    let (r, w) = new_pipe()?;
    // As many slots as the pipe has: tee copies buffer by buffer.
    fcntl(&w, F_SETPIPE_SZ, size as i32, "sizing the scratch pipe")?;
    // SAFETY: tee between two pipes we hold; no memory is passed.
    let n = unsafe { libc::tee(src.as_raw_fd(), w.as_raw_fd(), queued as usize, libc::SPLICE_F_NONBLOCK) };
    if n < 0 {
        bail!("{}: tee: {}", fd.what(), std::io::Error::last_os_error());
    }
    if n as i32 != queued {
        bail!("{}: {queued} bytes in flight, but only {n} could be copied", fd.what());
    }
    drop(w);
    let mut data = Vec::with_capacity(n as usize);
    File::from(r).read_to_end(&mut data).or_else(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    if data.len() != n as usize {
        bail!("{}: copied {n} bytes in flight, read back {}", fd.what(), data.len());
    }
    Ok(data)
}

fn describe_path(s: &State) -> String {
    s.fifo.as_ref().map(|f| f.path.display().to_string()).unwrap_or_else(|| format!("pipe:[{}]", s.ino))
}

impl FileKind for Pipe {
    const NAME: &'static str = "pipe";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.meta.file_type().is_fifo()
    }

    fn dump(fd: &FdProbe, reg: &mut dyn Registry) -> Result<State> {
        use std::os::unix::fs::MetadataExt;
        let ino = fd.meta.ino();
        let anonymous = fd.link.starts_with("pipe:[");
        let fifo = if anonymous {
            None
        } else {
            if fd.link.ends_with(" (deleted)") {
                bail!("{}: {}: a FIFO whose path was removed is not supported yet", fd.what(), fd.link);
            }
            Some(file_id(Path::new(&fd.link), &fd.meta))
        };
        // A read end of ferry's own (never waiting for a writer), to read
        // the size and copy what is in flight.
        let src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(fd.path())
            .with_context(|| format!("{}: opening its pipe", fd.what()))?;
        let size = fcntl(&src, F_GETPIPE_SZ, 0, &format!("{}: F_GETPIPE_SZ", fd.what()))? as u32;
        let mut queued = 0;
        let mut outside = None;
        if reg.first_sight(("pipe", ino)) {
            let data = peek(fd, &src, size)?;
            queued = data.len() as u32;
            reg.data(data);
            // A FIFO can be opened again by path; a pipe only where it is.
            if anonymous {
                outside = super::held_outside(&fd.link, reg).map(|holder| Outside { fd: fd.what(), holder });
                if let Some(o) = &outside {
                    reg.warn(format!(
                        "{}: {} is also held by {} outside the tree: restore needs --inherit-fd fd[N]:{}",
                        fd.what(),
                        fd.link,
                        o.holder,
                        fd.link
                    ));
                }
            }
        }
        Ok(State { ino, fifo, size, queued, outside })
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        let key = format!("pipe:[{}]", s.ino);
        if let Some(&fd) = ctx.inherited.get(&key) {
            // SAFETY: F_DUPFD_CLOEXEC of an fd the caller handed in.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                bail!("--inherit-fd fd[{fd}]:{key}: {}", std::io::Error::last_os_error());
            }
            // SAFETY: a new fd of ours.
            return Ok(unsafe { OwnedFd::from_raw_fd(dup) });
        }
        let mut kept = ctx.kept.borrow_mut();
        let ends = match kept.entry(("pipe", s.ino)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if let Some(o) = &s.outside {
                    bail!(
                        "{} cannot be re-created: hand an end of it to ferry as fd N with --inherit-fd fd[N]:{key}",
                        o.fd
                    );
                }
                v.insert(create(file, s, ctx)?)
            }
        };
        reopen_end(&ends[0], file.flags)
    }

    fn describe(s: &State) -> String {
        let what = match &s.fifo {
            Some(f) => format!("FIFO {}", f.path.display()),
            None => format!("pipe:[{}]", s.ino),
        };
        let outside = s.outside.as_ref().map(|o| format!(", also held by {} outside the tree", o.holder));
        let queued = if s.queued > 0 { format!(", {} bytes in flight", s.queued) } else { String::new() };
        format!("{what}, {}-byte buffer{queued}{}", s.size, outside.unwrap_or_default())
    }
}

/// The pipe itself, sized and holding its bytes again: fds ferry keeps
/// until every description of it is open.
fn create(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<Vec<OwnedFd>> {
    let (holder, write_end): (Vec<OwnedFd>, OwnedFd) = match &s.fifo {
        None => {
            let (r, w) = new_pipe()?;
            let w2 = w.try_clone()?;
            (vec![r, w], w2)
        }
        Some(id) => {
            // Read-write: neither side waits for the other.
            let f = reopen(
                id,
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                &format!("FIFO {}", id.path.display()),
                false,
            )?;
            if !f.metadata()?.file_type().is_fifo() {
                bail!("{} is no longer a FIFO", id.path.display());
            }
            let f: OwnedFd = f.into();
            let w = f.try_clone()?;
            (vec![f], w)
        }
    };
    let now = fcntl(&write_end, F_GETPIPE_SZ, 0, "F_GETPIPE_SZ")? as u32;
    if now != s.size {
        fcntl(&write_end, F_SETPIPE_SZ, s.size as i32, &format!("setting the buffer to {} bytes", s.size))?;
    }
    let data = ctx.data(file)?;
    if data.len() != s.queued as usize {
        bail!("{} bytes in flight in the image, {} expected", data.len(), s.queued);
    }
    // A FIFO that some other process still holds open kept its bytes (a
    // migration within one machine: the frozen source holds it): they
    // are the same bytes, and writing them again would double them.
    let held = super::readable(&write_end)?;
    if s.fifo.is_some() && held > 0 {
        tracing::warn!(
            "FIFO {}: still holds {held} bytes (it is open elsewhere): keeping them, not the image's {}",
            describe_path(s),
            data.len()
        );
        return Ok(holder);
    }
    let mut at = 0;
    while at < data.len() {
        let n = nix::unistd::write(&write_end, &data[at..]).context("writing the bytes in flight back")?;
        at += n;
    }
    Ok(holder)
}
