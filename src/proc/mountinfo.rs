//! /proc/PID/mountinfo: the mounts of a task's mount namespace, as seen
//! from its root (proc(5)).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// st_dev of the filesystem (major, minor).
    pub dev: (u32, u32),
    /// The directory of the filesystem mounted here ("/" unless a bind).
    pub root: PathBuf,
    pub mountpoint: PathBuf,
    /// Per-mount options ("rw,nosuid,relatime").
    pub mount_options: String,
    /// Optional fields: "shared:N", "master:N", ...
    pub propagation: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

impl MountInfo {
    /// The per-mount options as MS_* flags (what mount(2) takes).
    pub fn flags(&self) -> u64 {
        // No atime option shown is strictatime (a new mount would get relatime).
        let opts: Vec<&str> = self.mount_options.split(',').collect();
        let strict = if opts.iter().any(|o| matches!(*o, "relatime" | "noatime")) { 0 } else { libc::MS_STRICTATIME };
        strict
            | self
                .mount_options
                .split(',')
                .map(|o| match o {
                    "ro" => libc::MS_RDONLY,
                    "nosuid" => libc::MS_NOSUID,
                    "nodev" => libc::MS_NODEV,
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    "strictatime" => libc::MS_STRICTATIME,
                    "nosymfollow" => libc::MS_NOSYMFOLLOW,
                    _ => 0,
                })
                .fold(0, |a, f| a | f)
    }
}

/// Octal escapes (`\040` for a space) as the kernel writes them.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Result<MountInfo> {
    let (left, right) = line.split_once(" - ").context("no ' - ' separator")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 3 {
        bail!("too few fields");
    }
    let (major, minor) = l[2].split_once(':').context("bad major:minor")?;
    Ok(MountInfo {
        id: l[0].parse().context("bad mount ID")?,
        parent: l[1].parse().context("bad parent ID")?,
        dev: (major.parse()?, minor.parse()?),
        root: PathBuf::from(unescape(l[3])),
        mountpoint: PathBuf::from(unescape(l[4])),
        mount_options: l[5].to_string(),
        propagation: l[6..].iter().map(|s| s.to_string()).collect(),
        fstype: r[0].to_string(),
        source: unescape(r[1]),
        super_options: r[2..].join(" "),
    })
}

pub fn parse(text: &str) -> Result<Vec<MountInfo>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(n, l)| parse_line(l).with_context(|| format!("mountinfo line {}: {l:?}", n + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_container_view() {
        let text = "71 46 254:0 /tmp/rc/b/rootfs / rw,relatime - ext4 /dev/vda rw,discard\n\
                    52 72 0:42 /null /proc/keys rw,nosuid shared:3 - tmpfs tmpfs rw,size=65536k,mode=755\n\
                    90 71 0:50 / /mnt/with\\040space ro,nosuid,nodev,noexec master:2 - tmpfs none rw\n";
        let m = parse(text).unwrap();
        assert_eq!(m[0].root, PathBuf::from("/tmp/rc/b/rootfs"));
        assert_eq!(m[0].mountpoint, PathBuf::from("/"));
        assert_eq!(m[0].flags(), libc::MS_RELATIME);
        assert_eq!(m[1].dev, (0, 42));
        assert_eq!(m[1].propagation, vec!["shared:3"]);
        assert_eq!(m[1].super_options, "rw,size=65536k,mode=755");
        assert_eq!(m[2].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(
            m[2].flags(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_STRICTATIME
        );
        assert!(parse("71 46 254:0 / / rw\n").is_err());
    }
}
