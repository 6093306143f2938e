//! The contents of a container's tmpfs mount, read through the task's root
//! (/proc/PID/root) while the tree is frozen. What is mounted over an
//! entry belongs to that other mount: the entry itself is kept (it is
//! where the other mount goes), not what it hides.

use crate::image::container::{tmpfs_data, tmpfs_index, MountEntry, TmpfsEntry, TmpfsNode};
use crate::image::ImageWriter;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Write tmpfs-ID.json and tmpfs-ID.img for mount `m` of task `pid`.
pub fn write(pid: i32, m: &MountEntry, writer: &mut ImageWriter) -> Result<()> {
    let top = PathBuf::from(format!("/proc/{pid}/root")).join(m.mountpoint.strip_prefix("/").unwrap_or(&m.mountpoint));
    let meta = std::fs::symlink_metadata(&top).with_context(|| format!("stat {}", top.display()))?;
    let dev = meta.dev();
    if (libc::major(dev), libc::minor(dev)) != m.dev {
        bail!("tmpfs at {}: another mount hides it", m.mountpoint.display());
    }
    let mut entries = Vec::new();
    let mut data = writer.raw(&tmpfs_data(m.id))?;
    let mut offset = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = top.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = rel.join(&name);
            let full = top.join(&path);
            let meta = std::fs::symlink_metadata(&full).with_context(|| format!("stat {}", full.display()))?;
            let t = meta.file_type();
            let covered = meta.dev() != dev;
            let node = if t.is_dir() {
                if !covered {
                    stack.push(path.clone());
                }
                TmpfsNode::Dir
            } else if covered {
                // A file something is bind-mounted over: an empty one.
                TmpfsNode::File { offset, len: 0 }
            } else if t.is_file() {
                let bytes = std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
                data.write(&bytes)?;
                let node = TmpfsNode::File { offset, len: bytes.len() as u64 };
                offset += bytes.len() as u64;
                node
            } else if t.is_symlink() {
                TmpfsNode::Symlink { target: std::fs::read_link(&full)? }
            } else if t.is_char_device() || t.is_block_device() || t.is_fifo() {
                TmpfsNode::Node { rdev: meta.rdev() }
            } else {
                bail!("{}: unix socket files in a tmpfs are not supported yet", in_container(m, &path).display());
            };
            entries.push(TmpfsEntry {
                path,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                node,
            });
        }
    }
    data.finish(writer)?;
    // The mount's own root directory: its mode and owner ("mode=755").
    entries.insert(
        0,
        TmpfsEntry {
            path: PathBuf::new(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            node: TmpfsNode::Dir,
        },
    );
    writer.write_json(&tmpfs_index(m.id), &entries)?;
    Ok(())
}

fn in_container(m: &MountEntry, rel: &Path) -> PathBuf {
    m.mountpoint.join(rel)
}
