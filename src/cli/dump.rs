//! `ferry dump` and `ferry pre-dump`.

use super::security::{KeyDefault, SecurityArgs};
use crate::image::inventory::ImageKind;
use crate::track;
use anyhow::{Context, Result};

/// `ferry page-server`: receive one dump's images over the network.
#[derive(Args, Debug)]
pub struct PageServerArgs {
    /// Address to listen on (this address only)
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub address: String,
    #[arg(long, value_name = "PORT")]
    pub port: u16,
    /// Where to store the images
    #[arg(short = 'D', long = "images-dir", value_name = "DIR", default_value = ".")]
    pub images_dir: PathBuf,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub status: super::criu::StatusFd,
}

pub fn run_page_server(a: PageServerArgs) -> Result<ExitCode> {
    let creds = a.security.credentials(KeyDefault::System)?;
    let ready = a.status.notify()?;
    let listen = format!("{}:{}", a.address, a.port);
    crate::lazy::upload::receive(&listen, &a.images_dir, &creds, || crate::action_script::ready(&ready))?;
    Ok(ExitCode::SUCCESS)
}
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
    /// Take flock and OFD locks along (without it, a task holding a lock is
    /// refused, as with CRIU)
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// Allow unix sockets whose peer is outside the tree (a client
    /// connected to a server being dumped, /dev/log): a stream or seqpacket
    /// connection is restored as one whose peer hung up, after the bytes
    /// it had sent; a datagram socket connects to its peer's name again.
    /// With inodes (`--ext-unix-sk=52411,52413`), only those sockets.
    #[arg(short = 'x', long = "ext-unix-sk", value_name = "INODE,...", num_args = 0..=1, default_missing_value = "",
          require_equals = true, action = clap::ArgAction::Append)]
    pub ext_unix_sk: Vec<String>,
    /// The most of a deleted file's content (open or mapped shared) the
    /// image keeps; a larger one is refused, naming it (as CRIU)
    #[arg(long = "ghost-limit", value_name = "SIZE", default_value = "1M", value_parser = super::criu::parse_size)]
    pub ghost_limit: u64,
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Leave the pages changed since the last round on this machine and
    /// serve them to `ferry lazy-pages` on the destination (post-copy), on
    /// --address (default all) and --port
    #[arg(long = "lazy-pages", conflicts_with = "page_server")]
    pub lazy_pages: bool,
    #[command(flatten)]
    pub net: NetArgs,
    /// How long to wait for the destination before giving the task back
    #[arg(long = "lazy-wait", value_name = "SECONDS", default_value_t = 600)]
    pub lazy_wait: u64,
    #[command(flatten)]
    pub tcp: super::tcp::TcpArgs,
    #[command(flatten)]
    pub status: super::criu::StatusFd,
    #[command(flatten)]
    pub criu: super::criu::CriuFlags,
    #[command(flatten)]
    pub container: super::container::ContainerArgs,
    #[command(flatten)]
    pub no_forms: super::criu::NoForms,
    #[command(flatten)]
    pub restore_only: super::criu::RestoreOnly,
}

/// Where pages go over the network (shared by dump and pre-dump).
#[derive(Args, Debug)]
pub struct NetArgs {
    /// Send the images to `ferry page-server` at --address:--port instead
    /// of keeping the page data here (only metadata stays in -D)
    #[arg(long = "page-server")]
    pub page_server: bool,
    /// The page server to send to, or (with --lazy-pages) the address to serve on
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

impl NetArgs {
    fn port(&self, what: &str) -> Result<u16> {
        self.port.ok_or_else(|| anyhow::anyhow!("{what} needs --port"))
    }

    /// Before the dump: reach the page server if asked, so that a missing
    /// or refusing server fails the command before the task is touched.
    fn page_server(&self) -> Result<Option<crate::net::Link>> {
        if !self.page_server {
            return Ok(None);
        }
        let port = self.port("--page-server")?;
        let address = self
            .address
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--page-server needs --address (the page server)"))?;
        let creds = self.security.credentials(KeyDefault::System)?;
        Ok(Some(crate::lazy::upload::connect(&format!("{address}:{port}"), &creds)?))
    }
}

/// After a successful dump: ship it to the page server, if connected.
fn upload(server: Option<crate::net::Link>, dir: &std::path::Path) -> Result<()> {
    let Some(link) = server else { return Ok(()) };
    let bytes = crate::lazy::upload::send(link, dir)
        .with_context(|| format!("sending the images to the page server (they stay complete in {})", dir.display()))?;
    tracing::info!(bytes, "images sent to the page server");
    Ok(())
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
    #[command(flatten)]
    pub net: NetArgs,
    /// Accepted as with dump (a pre-dump never touches the terminal)
    #[arg(short = 'j', long = "shell-job", hide = true)]
    pub shell_job: bool,
    /// Accepted as with dump (a pre-dump reads no files)
    #[arg(short = 'l', long = "file-locks", hide = true)]
    pub file_locks: bool,
    /// Accepted as with dump (a pre-dump keeps no files)
    #[arg(long = "ghost-limit", value_name = "SIZE", hide = true)]
    pub ghost_limit: Option<String>,
    /// Accepted as with dump (a pre-dump keeps no sockets)
    #[arg(short = 'x', long = "ext-unix-sk", num_args = 0..=1, default_missing_value = "", require_equals = true,
          hide = true, action = clap::ArgAction::Append)]
    pub ext_unix_sk: Vec<String>,
    /// A pre-dump always leaves the task running
    #[arg(short = 'R', long = "leave-running", hide = true)]
    pub leave_running: bool,
    /// Refused: lazy pages go with the final dump
    #[arg(long = "lazy-pages", hide = true)]
    pub lazy_pages: bool,
    #[command(flatten)]
    pub tcp: super::tcp::TcpArgs,
    #[command(flatten)]
    pub status: super::criu::StatusFd,
    #[command(flatten)]
    pub criu: super::criu::CriuFlags,
    #[command(flatten)]
    pub container: super::container::ContainerArgs,
    #[command(flatten)]
    pub no_forms: super::criu::NoForms,
    #[command(flatten)]
    pub restore_only: super::criu::RestoreOnly,
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
    run_notifying(a, None)
}

/// `ferry dump`, telling `notify` at each action-script point too.
pub fn run_notifying(a: DumpArgs, notify: Option<crate::action_script::Notify>) -> Result<ExitCode> {
    a.criu.refuse()?;
    let mut o = options(a.tree, a.images_dir, &a.chain);
    o.leave_running = a.leave_running;
    o.shell_job = a.shell_job;
    o.file_locks = a.file_locks;
    o.ext_unix_sk = crate::objects::ExtUnixSk::parse(&a.ext_unix_sk)?;
    o.ghost_limit = a.ghost_limit;
    o.tcp_established = a.tcp.tcp_established;
    o.skip_in_flight = a.tcp.skip_in_flight;
    o.network_lock = a.tcp.lock();
    o.scripts = a.tcp.scripts();
    o.scripts.notify.extend(notify);
    o.scripts.notify.extend(a.status.notify()?);
    o.container = a.container.dump_options()?;
    if a.lazy_pages {
        let port = a.net.port("--lazy-pages (where the destination fetches pages)")?;
        if a.leave_running {
            anyhow::bail!("--lazy-pages moves the task away: it cannot also --leave-running");
        }
        o.lazy = Some(crate::dump::LazyServe::Listen {
            address: a.net.address.clone().unwrap_or_else(|| "0.0.0.0".into()),
            port,
            key: a.net.security.auth_key.clone(),
            tls: a.net.security.tls()?,
            wait: std::time::Duration::from_secs(a.lazy_wait),
        });
    }
    let server = a.net.page_server()?;
    report(&crate::dump::dump(&o)?);
    upload(server, &o.dir)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_pre(a: PreDumpArgs) -> Result<ExitCode> {
    run_pre_notifying(a, None)
}

/// `ferry pre-dump`, telling `notify` at each action-script point too.
pub fn run_pre_notifying(a: PreDumpArgs, notify: Option<crate::action_script::Notify>) -> Result<ExitCode> {
    a.criu.refuse()?;
    if a.lazy_pages {
        anyhow::bail!("--lazy-pages goes with the final dump, not pre-dump");
    }
    let mut o = options(a.tree, a.images_dir, &a.chain);
    o.kind = ImageKind::PreDump;
    o.leave_running = true;
    // A pre-dump's images hold memory only: what the final dump refuses
    // without these options is not the pre-dump's to refuse.
    o.shell_job = true;
    o.file_locks = true;
    o.ext_unix_sk = crate::objects::ExtUnixSk::Any;
    o.tcp_established = true;
    o.skip_in_flight = true;
    o.scripts = a.tcp.scripts();
    o.scripts.notify.extend(notify);
    let server = a.net.page_server()?;
    report(&crate::dump::dump(&o)?);
    upload(server, &o.dir)?;
    Ok(ExitCode::SUCCESS)
}
