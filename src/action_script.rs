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
    /// A lazy dump's page server listens: the destination may start.
    StatusReady,
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
            Action::StatusReady => "status-ready",
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
    pub notify: Vec<Notify>,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripts").field("paths", &self.paths).field("notify", &self.notify.len()).finish()
    }
}

impl Scripts {
    /// Run every script for `action`, then notify; the first that fails is
    /// the error. `init_pid` is the tree's root as ferry sees it
    /// (CRTOOLS_INIT_PID).
    pub fn run(&self, action: Action, images: &Path, init_pid: Option<i32>) -> Result<()> {
        self.run_scripts(action, images, init_pid)?;
        self.notify.iter().try_for_each(|notify| notify(action, init_pid))
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

/// CRIU's `--status-fd N`: one zero byte written to descriptor `fd` (then
/// closed) when ferry is ready for its peer (a lazy dump's page server
/// listens, the page server listens, the lazy-pages daemon waits for the
/// restore), so a script can start the other side then.
pub fn status_fd(fd: i32) -> Result<Notify> {
    use std::os::fd::FromRawFd;
    if !crate::handed_fd::is_open(fd) {
        bail!("--status-fd {fd}: no such open descriptor");
    }
    // SAFETY: the descriptor was handed to ferry for this one use; ferry
    // owns it from here on (closed after the byte, as CRIU does).
    let file = std::sync::Mutex::new(Some(unsafe { std::fs::File::from_raw_fd(fd) }));
    Ok(std::sync::Arc::new(move |action, _| {
        if action != Action::StatusReady {
            return Ok(());
        }
        use std::io::Write;
        match file.lock().expect("status fd lock").take() {
            Some(mut f) => f.write_all(&[0]).with_context(|| format!("writing to --status-fd {fd}")),
            None => Ok(()),
        }
    }))
}

/// Tell `notify` that ferry is ready (see [`status_fd`]).
pub fn ready(notify: &[Notify]) -> Result<()> {
    notify.iter().try_for_each(|n| n(Action::StatusReady, None))
}
