//! `ferry dump`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// PID of the task to checkpoint
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Directory to write the images to (created if missing)
    #[arg(short = 'D', long = "images-dir", value_name = "DIR", default_value = ".")]
    pub images_dir: PathBuf,
    /// Let the task run on after the dump instead of killing it
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// Allow a task attached to a terminal, or in a session or process group
    /// it does not lead (a job started from a shell)
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
}

pub fn run(a: DumpArgs) -> Result<ExitCode> {
    let stats = crate::dump::dump(&crate::dump::DumpOptions {
        pid: a.tree,
        dir: a.images_dir,
        leave_running: a.leave_running,
        shell_job: a.shell_job,
    })?;
    tracing::info!(
        frozen_ms = stats.frozen_us / 1000,
        total_ms = stats.total_us / 1000,
        bytes = stats.bytes_written,
        "dump complete"
    );
    Ok(ExitCode::SUCCESS)
}
