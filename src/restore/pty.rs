//! Pseudo-terminals whose master was outside the dumped tree (a
//! container's console, held by runc's console socket): restore makes a
//! new pair at the same index in the container's devpts, gives the tree
//! the slave and hands the master to the caller (CRIU's
//! `orphan_pts_master`, a NOTIFY with the descriptor attached).

use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Who receives a new master: the RPC caller (runc passes it on to the
/// container's console socket).
#[derive(Clone)]
pub struct HandOver(pub Arc<dyn Fn(BorrowedFd) -> Result<()> + Send + Sync>);

impl std::fmt::Debug for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandOver")
    }
}

/// The masters made so far, by the devpts mount (as the container sees
/// it) and index, and which went to the caller.
#[derive(Default)]
pub struct PtyMasters {
    made: HashMap<(PathBuf, u32), OwnedFd>,
    handed: HashSet<(PathBuf, u32)>,
}

impl PtyMasters {
    /// Keep `master`, made for pts `index` of the devpts at `devpts`.
    pub fn keep(&mut self, devpts: &Path, index: u32, master: OwnedFd) {
        self.made.insert((devpts.to_path_buf(), index), master);
    }

    /// The master of pts `index` under `devpts`, made with `open_ptmx`
    /// (the devpts's ptmx) if it does not exist yet; `hand` gets it the
    /// first time it is asked for.
    pub fn master(
        &mut self,
        devpts: &Path,
        index: u32,
        open_ptmx: impl Fn() -> std::io::Result<OwnedFd>,
        hand: Option<&HandOver>,
    ) -> Result<BorrowedFd<'_>> {
        let key = (devpts.to_path_buf(), index);
        if !self.made.contains_key(&key) {
            let master = at_index(index, open_ptmx)
                .with_context(|| format!("making pseudo-terminal {}/{index}", devpts.display()))?;
            self.made.insert(key.clone(), master);
        }
        let master = &self.made[&key];
        if !self.handed.contains(&key) {
            let hand = hand.context(
                "the task's terminal had its master outside the tree: ferry hands a new one to the caller \
                 over RPC (orphan_pts_master); a command-line restore has no one to give it to",
            )?;
            (hand.0)(master.as_fd())?;
            self.handed.insert(key);
        }
        Ok(master.as_fd())
    }
}

/// A new master whose slave is pts `index`, unlocked. A devpts hands out
/// the lowest free index: the ones below are held open until it comes.
pub fn at_index(index: u32, open_ptmx: impl Fn() -> std::io::Result<OwnedFd>) -> Result<OwnedFd> {
    let mut below = Vec::new();
    loop {
        let master = open_ptmx().context("opening ptmx")?;
        let mut n: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
            return Err(std::io::Error::last_os_error()).context("TIOCGPTN");
        }
        if n == index {
            let unlock: libc::c_int = 0;
            // SAFETY: TIOCSPTLCK reads one int.
            if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
                return Err(std::io::Error::last_os_error()).context("unlocking the pseudo-terminal (TIOCSPTLCK)");
            }
            return Ok(master);
        }
        if n > index {
            bail!("pts {index} is in use (the devpts gave {n})");
        }
        below.push(master);
    }
}

/// The slave of `master`, opened with `flags` (TIOCGPTPEER: the slave of
/// this very master, whatever mount the path would resolve through).
pub fn open_slave(master: BorrowedFd, flags: i32) -> Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening the pseudo-terminal's slave (TIOCGPTPEER)");
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
