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
