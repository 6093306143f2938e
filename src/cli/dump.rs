//! `ferry dump` and `ferry pre-dump`.

use crate::image::inventory::ImageKind;
use crate::track;
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
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Leave the pages changed since the last round on this machine and
    /// serve them to `ferry lazy-pages` on the destination (post-copy)
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// Port to serve lazy pages on
    #[arg(long, value_name = "PORT", requires = "lazy_pages")]
    pub port: Option<u16>,
    /// Address to serve lazy pages on
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0", requires = "lazy_pages")]
    pub address: String,
    /// Shared key file for the page connection; by default a fresh key is
    /// written next to the images (lazy-pages.key) and travels with them
    #[arg(long = "auth-key", value_name = "FILE")]
    pub auth_key: Option<PathBuf>,
    /// How long to wait for the destination before giving the task back
    #[arg(long = "lazy-wait", value_name = "SECONDS", default_value_t = 600)]
    pub lazy_wait: u64,
}

/// Options shared by dump and pre-dump for iterative (incremental) rounds.
#[derive(Args, Debug)]
pub struct ChainArgs {
    /// The previous round's images, relative to the images directory (e.g. ../1):
    /// only pages changed since then are written
    #[arg(long = "prev-images-dir", value_name = "DIR")]
    pub prev_images_dir: Option<PathBuf>,
    /// Track memory changes for a following round (implied by pre-dump and
    /// by --prev-images-dir)
    #[arg(long = "track-mem")]
    pub track_mem: bool,
    /// How to find changed pages: the best available (auto), uffd-wp, soft-dirty or hashing
    #[arg(long = "dirty-tracker", value_enum, default_value_t = track::Choice::Auto)]
    pub dirty_tracker: track::Choice,
    /// Drop dirty tracking if no further round comes within SECONDS
    #[arg(long = "track-timeout", value_name = "SECONDS", default_value_t = 1800)]
    pub track_timeout: u64,
}

#[derive(Args, Debug)]
pub struct PreDumpArgs {
    /// PID of the task
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Directory to write the images to (created if missing)
    #[arg(short = 'D', long = "images-dir", value_name = "DIR", default_value = ".")]
    pub images_dir: PathBuf,
    #[command(flatten)]
    pub chain: ChainArgs,
}

fn options(pid: i32, dir: PathBuf, chain: &ChainArgs) -> crate::dump::DumpOptions {
    let mut o = crate::dump::DumpOptions::new(pid, dir);
    o.prev = chain.prev_images_dir.clone();
    o.track_mem = chain.track_mem;
    o.tracker = chain.dirty_tracker;
    o.track_idle = std::time::Duration::from_secs(chain.track_timeout);
    o
}

fn report(stats: &crate::image::stats::DumpStats) {
    tracing::info!(
        frozen_ms = stats.frozen_us / 1000,
        total_ms = stats.total_us / 1000,
        copied = stats.pages_written,
        in_parent = stats.pages_in_parent,
        "done"
    );
}

pub fn run(a: DumpArgs) -> Result<ExitCode> {
    let mut o = options(a.tree, a.images_dir, &a.chain);
    o.leave_running = a.leave_running;
    o.shell_job = a.shell_job;
    if a.lazy_pages {
        let port =
            a.port.ok_or_else(|| anyhow::anyhow!("--lazy-pages needs --port (where the destination fetches pages)"))?;
        if a.leave_running {
            anyhow::bail!("--lazy-pages moves the task away: it cannot also --leave-running");
        }
        o.lazy = Some(crate::dump::LazyServe::Listen {
            address: a.address,
            port,
            key: a.auth_key,
            wait: std::time::Duration::from_secs(a.lazy_wait),
        });
    }
    report(&crate::dump::dump(&o)?);
    Ok(ExitCode::SUCCESS)
}

pub fn run_pre(a: PreDumpArgs) -> Result<ExitCode> {
    let mut o = options(a.tree, a.images_dir, &a.chain);
    o.kind = ImageKind::PreDump;
    o.leave_running = true;
    o.shell_job = true;
    report(&crate::dump::dump(&o)?);
    Ok(ExitCode::SUCCESS)
}
