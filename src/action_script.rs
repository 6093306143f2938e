//! `--action-script FILE`: programs run at CRIU's points of a dump and a
//! restore, with CRIU's environment, so an operator moves a service
//! address or a load balancer at the right moment. A script that fails
//! stops what ferry was doing, as a failure of ferry's own would.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    PreDump,
    PostDump,
    NetworkLock,
    NetworkUnlock,
    PreRestore,
    PostRestore,
    PostResume,
}

impl Action {
    /// CRTOOLS_SCRIPT_ACTION's value.
    pub fn name(self) -> &'static str {
        match self {
            Action::PreDump => "pre-dump",
            Action::PostDump => "post-dump",
            Action::NetworkLock => "network-lock",
            Action::NetworkUnlock => "network-unlock",
            Action::PreRestore => "pre-restore",
            Action::PostRestore => "post-restore",
            Action::PostResume => "post-resume",
        }
    }
}

/// The scripts given, in order.
#[derive(Clone, Debug, Default)]
pub struct Scripts(pub Vec<PathBuf>);

impl Scripts {
    /// Run every script for `action`; the first that fails is the error.
    /// `init_pid` is the tree's root as ferry sees it (CRTOOLS_INIT_PID).
    pub fn run(&self, action: Action, images: &Path, init_pid: Option<i32>) -> Result<()> {
        for script in &self.0 {
            tracing::debug!(script = %script.display(), action = action.name(), "action script");
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(script).env("CRTOOLS_SCRIPT_ACTION", action.name()).env("CRTOOLS_IMAGE_DIR", images);
            if let Some(pid) = init_pid {
                cmd.env("CRTOOLS_INIT_PID", pid.to_string());
            }
            let status = cmd
                .stdin(std::process::Stdio::null())
                .status()
                .with_context(|| format!("running action script {}", script.display()))?;
            if !status.success() {
                bail!("action script {} failed at {} ({status})", script.display(), action.name());
            }
        }
        Ok(())
    }
}
