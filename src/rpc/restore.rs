//! RESTORE requests: `criu_opts` turned into `ferry restore`'s command
//! line (as [`super::dump`] does for dumps); the tree is restored detached
//! and the answer carries its root's PID.

use super::channel::Channel;
use super::criu::{CriuOpts, CriuReqType, CriuResp, CriuRestoreResp};
use crate::cli::Command;
use anyhow::{bail, Result};
use std::sync::Arc;

/// The answer to a RESTORE request on `channel`.
pub fn answer(opts: &CriuOpts, channel: &Arc<Channel>) -> CriuResp {
    let done = run(opts, channel);
    CriuResp {
        r#type: CriuReqType::Restore as i32,
        success: done.is_ok(),
        restore: done.as_ref().ok().map(|&pid| CriuRestoreResp { pid }),
        cr_errmsg: done.err().map(|e| format!("{e:#}")),
        ..Default::default()
    }
}

fn run(opts: &CriuOpts, channel: &Arc<Channel>) -> Result<i32> {
    let opts = &super::config::apply(opts.clone())?;
    let peer = channel.peer()?;
    let (dir, _held) = super::peer::images_dir(opts, peer)?;
    super::log::start(opts, peer, &dir)?;
    let argv = restore_argv(opts, &dir)?;
    tracing::debug!(?argv, "RESTORE as a command line");
    let Command::Restore(args) = super::dump::parse(&argv)?.command else {
        bail!("internal: RESTORE did not become a restore command");
    };
    let mut options = crate::cli::restore::options(args)?;
    options.scripts.notify.extend(super::dump::notifier(opts, channel));
    if opts.orphan_pts_master == Some(true) {
        let channel = channel.clone();
        let hand = move |fd: std::os::fd::BorrowedFd| channel.notify_fd("orphan-pts-master", fd);
        options.container.orphan_pts_master = Some(crate::restore::pty::HandOver(Arc::new(hand)));
    }
    let restored = crate::restore::restore(&options)?;
    let pid = restored.pid;
    tracing::info!(pid, "tree restored");
    // Done: a lazy-pages daemon may start its background transfers.
    drop(restored);
    Ok(pid)
}

/// `ferry restore`'s arguments for `opts`; refuses any option set that
/// has none. The descriptors of `inherit_fd` are ferry's own: the caller
/// hands them down when it starts `swrk` (as runc does).
fn restore_argv(opts: &CriuOpts, dir: &std::path::Path) -> Result<Vec<String>> {
    let mut a: Vec<String> = vec!["ferry".into(), "restore".into(), "-d".into(), "-D".into()];
    a.push(dir.display().to_string());
    super::dump::flags(
        &mut a,
        &[
            (opts.shell_job, "--shell-job"),
            (opts.file_locks, "--file-locks"),
            (opts.ext_unix_sk, "--ext-unix-sk"),
            (opts.tcp_established, "--tcp-established"),
            (opts.tcp_close, "--tcp-close"),
            (opts.lazy_pages, "--lazy-pages"),
        ],
    );
    for i in &opts.inherit_fd {
        if !crate::handed_fd::is_open(i.fd) {
            bail!("inherit_fd {}: fd {} was not handed down to ferry swrk", i.key, i.fd);
        }
        a.extend(["--inherit-fd".into(), format!("fd[{}]:{}", i.fd, i.key)]);
    }
    super::container::argv(opts, &mut a)?;
    let rest = CriuOpts {
        images_dir_fd: -1,
        images_dir: None,
        shell_job: None,
        file_locks: None,
        ext_unix_sk: None,
        tcp_established: None,
        tcp_close: None,
        lazy_pages: None,
        inherit_fd: Vec::new(),
        notify_scripts: None,
        log_level: None,
        log_file: None,
        work_dir_fd: None,
        ..super::container::without(opts.clone())
    };
    if let Some(name) = super::fields::given(&rest).first() {
        bail!("RESTORE with criu_opts.{name}: not supported yet");
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::criu::InheritFd;

    #[test]
    fn restore_options_become_the_command_line() {
        let opts = CriuOpts {
            images_dir_fd: 3,
            shell_job: Some(true),
            tcp_close: Some(false),
            inherit_fd: vec![InheritFd { key: "pipe:[52411]".into(), fd: 0 }],
            ..Default::default()
        };
        let argv = restore_argv(&opts, std::path::Path::new("/img")).unwrap();
        assert_eq!(argv, ["ferry", "restore", "-d", "-D", "/img", "--shell-job", "--inherit-fd", "fd[0]:pipe:[52411]"]);
        let cap = CriuOpts { images_dir_fd: 3, cpu_cap: Some(1), ..Default::default() };
        let err = restore_argv(&cap, std::path::Path::new("/img")).unwrap_err();
        assert_eq!(err.to_string(), "RESTORE with criu_opts.cpu_cap: not supported yet");
    }
}
