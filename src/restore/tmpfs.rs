//! The contents of a container's tmpfs mount, written back into a new
//! tmpfs: what [`crate::dump::tmpfs`] read.

use crate::image::container::{TmpfsEntry, TmpfsNode};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Recreate a tmpfs's entries under `top` (parents come first).
pub fn fill(top: &Path, entries: &[TmpfsEntry], data: &[u8]) -> Result<()> {
    use std::os::unix::fs::{lchown, symlink};
    // Each entry goes into a directory made here before it: never through
    // a link or outside the mount, whatever the image says.
    let mut dirs: std::collections::HashSet<&Path> = std::collections::HashSet::from([Path::new("")]);
    for e in entries {
        let inside = e.path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        let parent = e.path.parent().unwrap_or(Path::new(""));
        let mount_root = e.path.as_os_str().is_empty();
        if !(mount_root || inside && dirs.contains(parent)) {
            bail!("tmpfs entry {}: not a path inside the mount, below a directory of it", e.path.display());
        }
        if matches!(e.node, TmpfsNode::Dir) {
            dirs.insert(&e.path);
        }
        let path = top.join(&e.path);
        let done = || format!("{}", path.display());
        match &e.node {
            TmpfsNode::Dir => {
                if !e.path.as_os_str().is_empty() {
                    std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(done)?;
                }
            }
            TmpfsNode::File { offset, len } => {
                let bytes = usize::try_from(*offset)
                    .ok()
                    .and_then(|o| data.get(o..o + *len as usize))
                    .with_context(|| format!("{}: contents beyond the image's data", done()))?;
                std::fs::write(&path, bytes).with_context(done)?;
            }
            TmpfsNode::Symlink { target } => symlink(target, &path).with_context(done)?,
            TmpfsNode::Node { rdev } => {
                let kind = nix::sys::stat::SFlag::from_bits_truncate(e.mode & libc::S_IFMT);
                let perm = nix::sys::stat::Mode::from_bits_truncate(e.mode & 0o7777);
                nix::sys::stat::mknod(&path, kind, perm, *rdev).with_context(done)?;
            }
        }
        lchown(&path, Some(e.uid), Some(e.gid)).with_context(done)?;
        if !matches!(e.node, TmpfsNode::Symlink { .. }) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode & 0o7777)).with_context(done)?;
        }
    }
    // Times last, deepest first: creating an entry touches its directory.
    for e in entries.iter().rev() {
        let path = top.join(&e.path);
        let t = nix::sys::time::TimeSpec::new(e.mtime.0, e.mtime.1);
        nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
            .with_context(|| format!("{}: times", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn entry(path: &str, node: TmpfsNode) -> TmpfsEntry {
        TmpfsEntry { path: PathBuf::from(path), mode: 0o40755, uid: 0, gid: 0, mtime: (0, 0), node }
    }

    #[test]
    fn entries_stay_inside_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let link = entry("l", TmpfsNode::Symlink { target: "/etc".into() });
        let through = entry("l/x", TmpfsNode::File { offset: 0, len: 0 });
        let err = fill(dir.path(), &[entry("", TmpfsNode::Dir), link, through], b"").unwrap_err();
        assert!(err.to_string().contains("tmpfs entry l/x: not a path inside the mount"), "{err}");
        for bad in ["../x", "/etc/x", "a/../../x"] {
            let err = fill(dir.path(), &[entry(bad, TmpfsNode::Dir)], b"").unwrap_err();
            assert!(err.to_string().contains("not a path inside the mount"), "{bad}: {err}");
        }
        let ok = [
            entry("", TmpfsNode::Dir),
            entry("d", TmpfsNode::Dir),
            entry("d/f", TmpfsNode::File { offset: 0, len: 2 }),
        ];
        fill(dir.path(), &ok, b"hi").unwrap();
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"hi");
    }
}
