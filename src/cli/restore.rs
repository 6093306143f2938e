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
    #[arg(short = 'd', long = "restore-detached", alias = "daemon")]
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
    /// Use ferry's fd N for an object the tree shared with processes
    /// outside it, e.g. `fd[3]:pipe:[52411]` (a pipe to a logger); ferry
    /// show names such objects
    #[arg(long = "inherit-fd", value_name = "fd[N]:OBJECT", action = clap::ArgAction::Append)]
    pub inherit_fd: Vec<String>,
    /// Accepted as with CRIU: the locks an image holds are always taken
    #[arg(short = 'l', long = "file-locks", hide = true)]
    pub file_locks: bool,
    /// Accepted as with CRIU: the limit is the dump's
    #[arg(long = "ghost-limit", value_name = "SIZE", hide = true)]
    pub ghost_limit: Option<String>,
    /// Accepted as with CRIU: what the dump allowed is restored
    #[arg(short = 'x', long = "ext-unix-sk", num_args = 0..=1, default_missing_value = "", require_equals = true,
          hide = true, action = clap::ArgAction::Append)]
    pub ext_unix_sk: Vec<String>,
    #[command(flatten)]
    pub tcp: super::tcp::TcpArgs,
    /// Taken as CRIU takes it: a restore has no ready point to report
    #[command(flatten)]
    pub status: super::criu::StatusFd,
    #[command(flatten)]
    pub criu: super::criu::CriuFlags,
    #[command(flatten)]
    pub container: super::container::ContainerArgs,
    #[command(flatten)]
    pub no_forms: super::criu::NoForms,
    #[command(flatten)]
    pub dump_only: DumpOnly,
}

/// Dump's options, which CRIU takes on restore too, without effect there.
#[derive(Args, Debug, Default)]
pub struct DumpOnly {
    #[arg(short = 't', long = "tree", hide = true)]
    pub tree: Option<i32>,
    #[arg(short = 'R', long = "leave-running", hide = true)]
    pub leave_running: bool,
    #[arg(long = "track-mem", hide = true)]
    pub track_mem: bool,
    #[arg(long = "prev-images-dir", hide = true)]
    pub prev_images_dir: Option<PathBuf>,
    #[arg(long = "page-server", hide = true)]
    pub page_server: bool,
    #[arg(long, hide = true)]
    pub address: Option<String>,
    #[arg(long, hide = true)]
    pub port: Option<u16>,
    #[arg(long, hide = true)]
    pub tls: bool,
    #[arg(long = "tls-cacert", hide = true)]
    pub tls_cacert: Option<PathBuf>,
    #[arg(long = "tls-cert", hide = true)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long = "tls-key", hide = true)]
    pub tls_key: Option<PathBuf>,
    #[arg(long = "tls-no-cn-verify", hide = true)]
    pub tls_no_cn_verify: bool,
}

pub fn run(a: RestoreArgs) -> Result<ExitCode> {
    crate::restore::run(&options(a)?)
}

/// What the options ask of the restore.
pub fn options(a: RestoreArgs) -> Result<crate::restore::RestoreOptions> {
    a.criu.refuse()?;
    Ok(crate::restore::RestoreOptions {
        dir: a.images_dir,
        detached: a.detached,
        shell_job: a.shell_job,
        pidfile: a.pidfile,
        pid_wait: std::time::Duration::from_secs(a.pid_wait),
        lazy: a.lazy_pages.then_some(crate::restore::LazyRestore::Daemon),
        inherited: crate::restore::parse_inherit_fds(&a.inherit_fd)?,
        tcp_close: a.tcp.tcp_close,
        scripts: a.tcp.scripts(),
        network_lock: a.tcp.lock(),
        container: a.container.restore_options()?,
    })
}
