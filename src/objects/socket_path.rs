//! A unix socket's path taken over on restore. The file there (the dumped
//! socket's own, left behind or still held by a frozen source on this
//! machine) is not removed but moved aside under a hard link, so that a
//! restore that fails puts it back: the source, if it runs on, keeps its
//! address. A restore that succeeds drops the old file.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct TakenPath {
    path: PathBuf,
    backup: PathBuf,
    done: bool,
}

impl TakenPath {
    /// Move the file at `path` aside; the path is free afterwards.
    pub fn take(path: &Path) -> Result<TakenPath> {
        let name = path.file_name().context("a socket path without a file name")?;
        let backup = path.with_file_name(format!(".{}.ferry-{}", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&backup);
        std::fs::hard_link(path, &backup)
            .with_context(|| format!("keeping the old {} as {}", path.display(), backup.display()))?;
        if let Err(e) = std::fs::remove_file(path) {
            let _ = std::fs::remove_file(&backup);
            return Err(e).with_context(|| format!("removing the old {}", path.display()));
        }
        Ok(TakenPath { path: path.to_path_buf(), backup, done: false })
    }

    /// The restore succeeded: the old file goes.
    pub fn commit(mut self) {
        self.done = true;
        let _ = std::fs::remove_file(&self.backup);
    }
}

impl Drop for TakenPath {
    /// The restore failed: the old file comes back (over the new one).
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::rename(&self.backup, &self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_restore_puts_the_old_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "old").unwrap();
        let taken = TakenPath::take(&p).unwrap();
        assert!(!p.exists());
        std::fs::write(&p, "new").unwrap();
        drop(taken);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let taken = TakenPath::take(&p).unwrap();
        std::fs::write(&p, "new").unwrap();
        taken.commit();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
