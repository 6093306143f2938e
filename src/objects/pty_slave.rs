//! A pseudo-terminal slave whose master is outside the tree
//! (`--orphan-pts-master`): a container's console, whose master runc's
//! console socket holds. Restore makes a new pair at the same index in
//! the container's devpts (see [`crate::restore::pty`]) with the dumped
//! line settings and window size, and hands the master to the caller.

use super::{FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct PtySlave;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// As the tree saw it: /dev/pts/N.
    pub path: PathBuf,
    pub index: u32,
    pub rdev: u64,
    pub termios: Termios,
    /// rows, columns, x and y pixels.
    pub winsize: [u16; 4],
}

/// The line settings (struct termios, field by field: its layout differs
/// between architectures).
#[derive(Serialize, Deserialize)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
}

/// Under `--orphan-pts-master` (and not `--shell-job`, which takes the
/// terminal as ferry's own, see objects::tty): a character device whose
/// number `fits`.
pub(super) fn claims_orphan(fd: &FdProbe, fits: impl Fn(u64) -> bool) -> bool {
    fd.policy.orphan_pts_master && !fd.policy.shell_job && fd.meta.file_type().is_char_device() && fits(fd.meta.rdev())
}

/// A slave of pts `index` of the container's devpts at `devpts` (the pair
/// made first if need be, its master handed to the caller), opened with
/// the dumped `flags`.
pub(super) fn open_orphan(ctx: &OpenContext, devpts: &Path, index: u32, flags: u32) -> Result<OwnedFd> {
    let ptmx = devpts.join("ptmx");
    let open_ptmx = || crate::restore::paths::open(&ptmx, libc::O_RDWR | libc::O_NOCTTY).map(OwnedFd::from);
    let mut masters = ctx.ptys.borrow_mut();
    let master = masters.master(devpts, index, open_ptmx, ctx.pty_hand_over)?;
    crate::restore::pty::open_slave(master, super::regular::reopen_flags(flags) | libc::O_NOCTTY)
}

/// /dev/pts/N: majors 136-143.
fn is_pts(rdev: u64) -> bool {
    (136..=143).contains(&nix::sys::stat::major(rdev))
}

fn read_settings(fd: &std::fs::File) -> Result<(Termios, [u16; 4])> {
    // SAFETY: zeroed plain-data structs the ioctls fill.
    let (mut t, mut w): (libc::termios, libc::winsize) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: TCGETS and TIOCGWINSZ write the structs passed.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TCGETS");
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCGWINSZ");
    }
    let termios = Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc.to_vec(),
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
    };
    Ok((termios, [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel]))
}

fn write_settings(fd: &OwnedFd, s: &State) -> Result<()> {
    // SAFETY: a zeroed plain-data struct, filled below.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    t.c_iflag = s.termios.iflag;
    t.c_oflag = s.termios.oflag;
    t.c_cflag = s.termios.cflag;
    t.c_lflag = s.termios.lflag;
    t.c_line = s.termios.line;
    for (to, from) in t.c_cc.iter_mut().zip(&s.termios.cc) {
        *to = *from;
    }
    t.c_ispeed = s.termios.ispeed;
    t.c_ospeed = s.termios.ospeed;
    let [ws_row, ws_col, ws_xpixel, ws_ypixel] = s.winsize;
    let w = libc::winsize { ws_row, ws_col, ws_xpixel, ws_ypixel };
    // SAFETY: TCSETS and TIOCSWINSZ read the structs passed.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS, &t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the line (TCSETS)");
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the window size (TIOCSWINSZ)");
    }
    Ok(())
}

impl FileKind for PtySlave {
    const NAME: &'static str = "pty-slave";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        claims_orphan(fd, is_pts)
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        let path = PathBuf::from(&fd.link);
        let index = path
            .strip_prefix("/dev/pts")
            .ok()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{}: terminal {} is not /dev/pts/N", fd.what(), fd.link))?;
        // Another open of the same terminal, to read its settings.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(fd.path())
            .with_context(|| format!("{}: opening {}", fd.what(), fd.link))?;
        let (termios, winsize) = read_settings(&f).with_context(|| format!("{}: {}", fd.what(), fd.link))?;
        Ok(State { path, index, rdev: fd.meta.rdev(), termios, winsize })
    }

    fn open(file: &FileObject, s: &State, ctx: &OpenContext) -> Result<OwnedFd> {
        let devpts = s.path.parent().unwrap_or(Path::new("/dev/pts"));
        let slave = open_orphan(ctx, devpts, s.index, file.flags)?;
        write_settings(&slave, s)?;
        let rdev = slave_rdev(&slave)?;
        if rdev != s.rdev {
            bail!("the new terminal is device {rdev:#x}, the dumped one was {:#x}", s.rdev);
        }
        Ok(slave)
    }

    fn describe(s: &State) -> String {
        format!("terminal {} (its master outside the tree)", s.path.display())
    }

    fn tty_rdev(s: &State) -> Option<u64> {
        Some(s.rdev)
    }
}

fn slave_rdev(fd: &OwnedFd) -> Result<u64> {
    let st = nix::sys::stat::fstat(fd).context("fstat of the new terminal")?;
    Ok(st.st_rdev)
}
