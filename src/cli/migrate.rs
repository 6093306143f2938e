//! `ferry migrate` and `ferry receive`.

use super::security::{KeyDefault, SecurityArgs};
use crate::migrate::{dest, source};
use crate::track;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// PID of the task to move
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Destination, where `ferry receive` listens (port 2727 if not given)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub to: String,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Stop pre-copy once a round finds at most this many dirty pages
    #[arg(long, value_name = "PAGES", default_value_t = 2048)]
    pub converge_pages: u64,
    /// Stop pre-copy when a round is not smaller than this fraction of the one before
    #[arg(long, value_name = "FRACTION", default_value_t = 0.9)]
    pub min_shrink: f64,
    /// Stop pre-copy after this many rounds
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_rounds: u32,
    /// How to find changed pages
    #[arg(long = "dirty-tracker", value_enum, default_value_t = track::Choice::Auto)]
    pub dirty_tracker: track::Choice,
    /// The task is a shell job (see `ferry dump --shell-job`)
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Take flock and OFD locks along (see `ferry dump --file-locks`)
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// Unix sockets whose peer is outside the tree (see `ferry dump --ext-unix-sk`)
    #[arg(short = 'x', long = "ext-unix-sk", value_name = "INODE,...", num_args = 0..=1, default_missing_value = "",
          require_equals = true, action = clap::ArgAction::Append)]
    pub ext_unix_sk: Vec<String>,
    /// The most of a deleted file's content taken along (see `ferry dump --ghost-limit`)
    #[arg(long = "ghost-limit", value_name = "SIZE", default_value = "1M", value_parser = super::criu::parse_size)]
    pub ghost_limit: u64,
    /// How long to keep trying to reach the destination after a cut
    #[arg(long = "reconnect-timeout", value_name = "SECONDS", default_value_t = 60)]
    pub reconnect_timeout: u64,
    #[command(flatten)]
    pub tcp: super::tcp::TcpArgs,
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// Address and port to listen on, this address only (port 2727 if not given)
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub listen: String,
    /// Where to keep the images that arrive
    #[arg(short = 'D', long = "images-dir", value_name = "DIR", default_value = ".")]
    pub images_dir: PathBuf,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The task is a shell job: it joins our session and terminal
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Write the restored task's PID to FILE
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// How long to wait for the source to come back after a cut, before
    /// killing the restored task (its remaining pages are lost)
    #[arg(long = "reconnect-timeout", value_name = "SECONDS", default_value_t = 60)]
    pub reconnect_timeout: u64,
    #[command(flatten)]
    pub tcp: super::tcp::TcpArgs,
}

/// `work_dir`: -W, where each round's images are staged before they are
/// sent (default /dev/shm).
pub fn run_migrate(a: MigrateArgs, work_dir: Option<PathBuf>) -> Result<ExitCode> {
    source::run(&source::MigrateOptions {
        pid: a.tree,
        to: with_default_port(&a.to),
        creds: a.security.credentials(KeyDefault::System)?,
        converge_pages: a.converge_pages,
        shrink: a.min_shrink,
        max_rounds: a.max_rounds.max(1),
        tracker: a.dirty_tracker,
        work_dir: work_dir.unwrap_or_else(|| PathBuf::from("/dev/shm")),
        shell_job: a.shell_job,
        file_locks: a.file_locks,
        ext_unix_sk: crate::objects::ExtUnixSk::parse(&a.ext_unix_sk)?,
        ghost_limit: a.ghost_limit,
        reconnect: Duration::from_secs(a.reconnect_timeout),
        tcp_established: a.tcp.tcp_established,
        skip_in_flight: a.tcp.skip_in_flight,
        network_lock: a.tcp.lock(),
        scripts: a.tcp.scripts(),
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_receive(a: ReceiveArgs) -> Result<ExitCode> {
    dest::run(&dest::ReceiveOptions {
        listen: with_default_port(&a.listen),
        dir: a.images_dir,
        creds: a.security.credentials(KeyDefault::System)?,
        shell_job: a.shell_job,
        pidfile: a.pidfile,
        reconnect: Duration::from_secs(a.reconnect_timeout),
        tcp_close: a.tcp.tcp_close,
        scripts: a.tcp.scripts(),
        network_lock: a.tcp.lock(),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Port of `ferry receive` when none is given.
pub const DEFAULT_PORT: u16 = 2727;

/// "host" -> "host:2727", "::1" / "[::1]" -> "[::1]:2727"; with a port, as is.
fn with_default_port(target: &str) -> String {
    if target.starts_with('[') {
        // "[v6]" or "[v6]:port"
        return if target.ends_with(']') { format!("{target}:{DEFAULT_PORT}") } else { target.to_string() };
    }
    if target.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{target}]:{DEFAULT_PORT}");
    }
    if target.contains(':') {
        return target.to_string();
    }
    format!("{target}:{DEFAULT_PORT}")
}

#[cfg(test)]
mod tests {
    use super::with_default_port;

    #[test]
    fn port_defaults_only_when_missing() {
        let got: Vec<String> = ["dst", "dst:7000", "10.0.0.2", "10.0.0.2:7000", "::1", "[::1]", "[::1]:7000"]
            .map(with_default_port)
            .into();
        assert_eq!(
            got,
            ["dst:2727", "dst:7000", "10.0.0.2:2727", "10.0.0.2:7000", "[::1]:2727", "[::1]:2727", "[::1]:7000"]
        );
    }
}
