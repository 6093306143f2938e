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

/// Told at each point after the scripts ran, with the tree's root: CRIU's
/// RPC notifications (`notify_scripts`), which wait for the caller's
/// answer; an error stops ferry as a failing script does.
pub type Notify = std::sync::Arc<dyn Fn(Action, Option<i32>) -> Result<()> + Send + Sync>;

/// The scripts given, in order, and who else is told.
#[derive(Clone, Default)]
pub struct Scripts {
    pub paths: Vec<PathBuf>,
    pub notify: Option<Notify>,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripts").field("paths", &self.paths).field("notify", &self.notify.is_some()).finish()
    }
}

impl Scripts {
    /// Run every script for `action`, then notify; the first that fails is
    /// the error. `init_pid` is the tree's root as ferry sees it
    /// (CRTOOLS_INIT_PID).
    pub fn run(&self, action: Action, images: &Path, init_pid: Option<i32>) -> Result<()> {
        self.run_scripts(action, images, init_pid)?;
        match &self.notify {
            Some(notify) => notify(action, init_pid),
            None => Ok(()),
        }
    }

    fn run_scripts(&self, action: Action, images: &Path, init_pid: Option<i32>) -> Result<()> {
        for script in &self.paths {
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
