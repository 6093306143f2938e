//! container.json: the namespaces a tree lives in when its root is a
//! container's init (its own mount and PID namespaces): the mounts to
//! rebuild, the UTS names, and which of the IPC and network namespaces are
//! new ones. A tree that shares ferry's mount namespace has no such file.
//!
//! tmpfs-ID.json / tmpfs-ID.img: the contents of one tmpfs mount: every
//! entry (directories first, so parents come before children) and the
//! bytes of its regular files back to back.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const CONTAINER: &str = "container.json";

pub fn tmpfs_index(id: u32) -> String {
    format!("tmpfs-{id}.json")
}
pub fn tmpfs_data(id: u32) -> String {
    format!("tmpfs-{id}.img")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    /// The mount namespace, parents before their children; the first is
    /// the root ("/").
    pub mounts: Vec<MountEntry>,
    /// A UTS namespace of its own, with these names.
    pub uts: Option<UtsNames>,
    /// An IPC namespace of its own (it had no SysV objects or queues).
    pub ipc: bool,
    /// A network namespace of its own: a new empty one, or one the
    /// restore is handed.
    pub net: Option<NetNs>,
    /// A cgroup namespace of its own, rooted at the root's cgroups.
    #[serde(default)]
    pub cgroup: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UtsNames {
    pub hostname: String,
    pub domainname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NetNs {
    /// Created new and empty (`--empty-ns net`: the caller sets it up),
    /// its loopback up if it was.
    Empty { lo_up: bool },
    /// One from outside, named by a key (`--external net[INODE]:KEY`):
    /// the restore joins the one handed in as `--inherit-fd fd[N]:KEY`.
    External { key: String },
}

/// One mount, as /proc/PID/mountinfo showed it from inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// The kernel's mount ID at dump time (only to name parents).
    pub id: u32,
    pub parent: u32,
    /// Where it is mounted, as the container sees it.
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The per-mount flags (MS_RDONLY, MS_NOSUID, ...).
    pub flags: u64,
    /// The filesystem's own options ("mode=755,size=65536k").
    pub options: String,
    /// Its st_dev at dump time (major, minor).
    pub dev: (u32, u32),
    pub kind: MountKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MountKind {
    /// The container's root: restored from `--root`.
    Root,
    /// A mount from outside, named by a key (`--external mnt[PATH]:KEY`):
    /// the restore binds what it is told the key is now.
    External { key: String },
    /// A bind of part of another mount of the container.
    Bind { of: u32, path: PathBuf },
    /// A new instance of a filesystem that has no contents of its own to
    /// keep: proc, sysfs, devpts, mqueue.
    Fresh,
    /// A tmpfs, with its contents in tmpfs-ID.*.
    Tmpfs,
}

/// One entry of a tmpfs, by its path inside the mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsEntry {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub node: TmpfsNode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum TmpfsNode {
    Dir,
    /// Its bytes are at `offset` in tmpfs-ID.img.
    File {
        offset: u64,
        len: u64,
    },
    Symlink {
        target: PathBuf,
    },
    /// A device, fifo or socket node (mknod with `mode` and `rdev`).
    Node {
        rdev: u64,
    },
}
