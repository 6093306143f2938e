//! A request's log: CRIU's `log_level` (the scale ferry's -v uses) and
//! `log_file`, a name in the work directory (`work_dir_fd`, else the
//! images directory). The first request that names them sets up the log
//! of the whole session; runc reads that file when a dump fails.

use super::criu::CriuOpts;
use anyhow::{bail, Result};
use std::path::Path;

/// Set up the log for `opts` unless it is set up already (by the command
/// line, or an earlier request of the session).
pub fn start(opts: &CriuOpts, peer: i32, images: &Path) -> Result<()> {
    if crate::cli::logging::is_set() {
        return Ok(());
    }
    let level = opts.log_level.unwrap_or(crate::cli::logging::DEFAULT_LEVEL.into()).clamp(0, 4) as u8;
    let file = match opts.log_file.as_deref().filter(|f| !f.is_empty()) {
        None => None,
        Some(name) if name.contains('/') => {
            bail!("log_file {name:?}: a file name in the work directory, not a path (as CRIU takes it)")
        }
        Some(name) => Some(match opts.work_dir_fd {
            Some(fd) => super::peer::dir_of(peer, fd, "work_dir_fd")?.0.join(name),
            None => images.join(name),
        }),
    };
    crate::cli::logging::init(level, file.as_deref())
}
