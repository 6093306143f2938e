//! A cwd that was deleted while a process was in it. Restore makes an
//! empty directory where it was (with its mode and owner), the processes
//! chdir into it while they are set up, and ferry removes it once they
//! all have: their cwd is a deleted directory again, under its old name.
//! If something else now sits at that path, a sibling name is used (the
//! kernel then shows that name with " (deleted)").

use crate::image::task::DeletedDir;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Directories made for deleted cwds, by the path each stands for;
/// removed when this is dropped (after the processes' chdir, or when the
/// restore fails).
#[derive(Default)]
pub struct DeletedCwds {
    made: HashMap<PathBuf, PathBuf>,
}

impl DeletedCwds {
    /// The directory to chdir into for a cwd deleted at `path` (one for
    /// every process that had it).
    pub fn make(&mut self, path: &Path, d: &DeletedDir) -> Result<PathBuf> {
        if let Some(p) = self.made.get(path) {
            return Ok(p.clone());
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            bail!(
                "its cwd {} was deleted, and its parent {} is gone too: nowhere to make it again",
                path.display(),
                parent.display()
            );
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let candidates =
            std::iter::once(path.to_path_buf()).chain((0..100).map(|i| parent.join(format!("{name}.ferry-{i}"))));
        for dir in candidates {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    self.made.insert(path.to_path_buf(), dir.clone());
                    std::os::unix::fs::chown(&dir, Some(d.uid), Some(d.gid))
                        .with_context(|| format!("chown {}", dir.display()))?;
                    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(d.mode))
                        .with_context(|| format!("chmod {}", dir.display()))?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("making {} for a deleted cwd", dir.display())),
            }
        }
        bail!("no free name near {} for its deleted cwd", path.display())
    }
}

impl Drop for DeletedCwds {
    fn drop(&mut self) {
        for dir in self.made.values() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
