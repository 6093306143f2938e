//! What ferry trusts: an image directory is as powerful as root (it names
//! credentials, files to open and code to run), so a restore takes one
//! only if nobody but root (or ferry's own user) could have written it, as
//! sshd's StrictModes does for a user's keys.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const GROUP_OR_OTHER_WRITE: u32 = 0o022;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// Root or ferry's own user: the only owners whose files ferry acts on.
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Refuse `dir` if a user other than root (or ours) owns or may write it
/// or a file in it, or may rename it away (a parent directory writable by
/// others without the sticky bit).
pub fn check_images_dir(dir: &Path) -> Result<()> {
    // A directory that is not there is refused by the reader, which says so.
    let Ok(meta) = std::fs::metadata(dir) else { return Ok(()) };
    check_one(dir, &meta, "images directory")?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        // A socket or FIFO a daemon made there is not read as image data.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_file() {
            check_one(&path, &meta, "image file")?;
        }
    }
    let full = dir.canonicalize().with_context(|| format!("{}", dir.display()))?;
    for parent in full.ancestors().skip(1) {
        let meta = std::fs::metadata(parent).with_context(|| format!("{}", parent.display()))?;
        let mode = meta.mode();
        let open = mode & OTHER_WRITE != 0 && mode & STICKY == 0;
        if open || !trusted_owner(meta.uid()) && mode & 0o200 != 0 {
            bail!(
                "{}: refusing the images in {}: its parent directory {} can be changed by other users (owner uid {}, mode {:04o})",
                dir.display(),
                dir.display(),
                parent.display(),
                meta.uid(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

fn check_one(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<()> {
    let mode = meta.mode() & 0o7777;
    if !trusted_owner(meta.uid()) {
        bail!(
            "{}: refusing this {what}: it belongs to uid {}, and images are trusted like root (chown it to root)",
            path.display(),
            meta.uid()
        );
    }
    if mode & GROUP_OR_OTHER_WRITE != 0 {
        bail!(
            "{}: refusing this {what}: it is writable by other users (mode {mode:04o}), and images are trusted like root (chmod go-w)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writable_by_others_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("inventory.json"), b"{}").unwrap();
        std::fs::set_permissions(d.path().join("inventory.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
        check_images_dir(d.path()).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_images_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("writable by other users (mode 0777)"), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(d.path().join("inventory.json"), std::fs::Permissions::from_mode(0o620)).unwrap();
        let e = check_images_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("image file") && e.contains("0620"), "{e}");
        std::fs::set_permissions(d.path().join("inventory.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let inner = d.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o757)).unwrap();
        let e = check_images_dir(&inner).unwrap_err().to_string();
        assert!(e.contains("parent directory"), "{e}");
    }
}
