//! `ferry restore`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Directory holding the images
    #[arg(short = 'D', long = "images-dir", value_name = "DIR", default_value = ".")]
    pub images_dir: PathBuf,
    /// Exit once the task runs instead of waiting for it (ferry then is not its parent)
    #[arg(short = 'd', long = "restore-detached")]
    pub detached: bool,
    /// Restore a task dumped with --shell-job: it joins ferry's session and
    /// process group and gets ferry's terminal
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Write the restored task's PID to FILE
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// How long to wait for the task's PID to become free (e.g. while the
    /// dumped task is still being reaped)
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub pid_wait: u64,
    /// The image comes from a lazy dump: hand the pages it lacks to
    /// `ferry lazy-pages` (running with the same -D)
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
}

pub fn run(a: RestoreArgs) -> Result<ExitCode> {
    crate::restore::run(&crate::restore::RestoreOptions {
        dir: a.images_dir,
        detached: a.detached,
        shell_job: a.shell_job,
        pidfile: a.pidfile,
        pid_wait: std::time::Duration::from_secs(a.pid_wait),
        lazy: a.lazy_pages.then_some(crate::restore::LazyRestore::Daemon),
    })
}
