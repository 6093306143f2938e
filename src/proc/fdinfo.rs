//! /proc/PID/fdinfo/FD.

use super::key_values;
use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FdInfo {
    pub pos: u64,
    /// open(2) flags including O_CLOEXEC, as the kernel reports them.
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
    /// Locks set through this description (`lock:` lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<FdLock>,
}

/// One `lock:` line of fdinfo, as /proc/locks writes it:
/// `1: FLOCK  ADVISORY  WRITE 1234 00:2e:5678 0 EOF`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FdLock {
    /// FLOCK, OFDLCK, POSIX, LEASE...
    pub kind: String,
    pub write: bool,
    pub start: u64,
    /// Last byte, None for "to the end of file".
    pub end: Option<u64>,
}

impl FdLock {
    fn parse(text: &str) -> Option<FdLock> {
        let w: Vec<&str> = text.split_whitespace().collect();
        // id: kind ADVISORY|MANDATORY access pid dev:ino start end
        let (kind, access, start, end) = (w.get(1)?, w.get(3)?, w.get(6)?, w.get(7)?);
        Some(FdLock {
            kind: kind.to_string(),
            write: *access == "WRITE",
            start: start.parse().ok()?,
            end: if *end == "EOF" { None } else { Some(end.parse().ok()?) },
        })
    }
}

impl FdInfo {
    pub fn parse(text: &str) -> Result<FdInfo> {
        let kv = key_values(text);
        let get = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        Ok(FdInfo {
            pos: get("pos").context("no pos field")?.parse().context("bad pos")?,
            flags: u32::from_str_radix(get("flags").context("no flags field")?, 8).context("bad flags")?,
            mnt_id: get("mnt_id").map(str::parse).transpose().context("bad mnt_id")?.unwrap_or(0),
            ino: get("ino").map(str::parse).transpose().context("bad ino")?.unwrap_or(0),
            locks: kv
                .iter()
                .filter(|(k, _)| *k == "lock")
                .map(|(_, v)| FdLock::parse(v).with_context(|| format!("bad lock line {v:?}")))
                .collect::<Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_snapshot() {
        let text = "pos:\t1234\nflags:\t02100002\nmnt_id:\t27\nino:\t525123\n";
        insta::assert_yaml_snapshot!(FdInfo::parse(text).unwrap());
    }

    #[test]
    fn own_flock_shows() {
        use std::os::fd::AsRawFd;
        let f = tempfile::tempfile().unwrap();
        // SAFETY: flock on our own file.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd())).unwrap();
        let info = FdInfo::parse(&text).unwrap();
        assert_eq!(info.locks, [FdLock { kind: "FLOCK".into(), write: true, start: 0, end: None }]);
    }

    #[test]
    fn own_fd_parses() {
        use std::io::{Seek, SeekFrom};
        use std::os::fd::AsRawFd;
        let mut f = tempfile::tempfile().unwrap();
        f.seek(SeekFrom::Start(77)).unwrap();
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd())).unwrap();
        let info = FdInfo::parse(&text).unwrap();
        assert_eq!(info.pos, 77);
        assert_ne!(info.flags & libc::O_RDWR as u32, 0);
    }
}
