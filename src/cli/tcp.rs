//! The options of TCP connections, the network lock and action scripts,
//! shared by dump, pre-dump, restore, migrate and receive (CRIU takes them
//! all on each command; each uses its own).

use crate::action_script::Scripts;
use crate::netlock::Method;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Default, Clone)]
pub struct TcpArgs {
    /// Take established TCP connections along (TCP repair): the peer keeps
    /// its connection, nothing lost or reset (dump, migrate)
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    #[arg(long = "no-tcp-established", hide = true)]
    pub no_tcp_established: bool,
    /// Let connections waiting to be accepted by a listener go (their
    /// clients see a reset) instead of refusing the dump
    #[arg(long = "skip-in-flight")]
    pub skip_in_flight: bool,
    #[arg(long = "no-skip-in-flight", hide = true)]
    pub no_skip_in_flight: bool,
    /// Restore established connections aborted (the program reads
    /// ECONNABORTED), sending nothing to their peers (restore)
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    #[arg(long = "no-tcp-close", hide = true)]
    pub no_tcp_close: bool,
    /// How the connections' packets are held from the freeze until the
    /// restored task runs: nftables (default where nft is installed),
    /// iptables, or skip
    #[arg(long = "network-lock", value_name = "METHOD")]
    pub network_lock: Option<Method>,
    /// Run FILE (with /bin/sh -c) at pre-dump, network-lock, post-dump,
    /// pre-restore, post-restore, network-unlock and post-resume, with
    /// CRTOOLS_SCRIPT_ACTION, CRTOOLS_IMAGE_DIR and CRTOOLS_INIT_PID set
    /// as CRIU does; a failing script stops the command (repeatable)
    #[arg(long = "action-script", value_name = "FILE", action = clap::ArgAction::Append)]
    pub action_script: Vec<PathBuf>,
}

impl TcpArgs {
    pub fn scripts(&self) -> Scripts {
        Scripts { paths: self.action_script.clone(), notify: Vec::new() }
    }

    pub fn lock(&self) -> Method {
        self.network_lock.unwrap_or_default()
    }
}
