//! DUMP requests: `criu_opts` turned into `ferry dump`'s command line, so
//! one parser checks the options and one code path dumps. An option ferry
//! does not implement is refused by its name in rpc.proto.

use super::channel::Channel;
use super::criu::{CriuDumpResp, CriuOpts, CriuReqType, CriuResp};
use crate::action_script::{Action, Notify};
use crate::cli::{Cli, Command};
use anyhow::{bail, Context, Result};
use clap::Parser;
use std::sync::Arc;

/// The answer to a DUMP request on `channel`.
pub fn answer(opts: &CriuOpts, channel: &Arc<Channel>) -> CriuResp {
    let done = run(opts, channel, "dump");
    CriuResp {
        r#type: CriuReqType::Dump as i32,
        success: done.is_ok(),
        dump: Some(CriuDumpResp { restored: Some(false) }),
        cr_errmsg: done.err().map(|e| format!("{e:#}")),
        ..Default::default()
    }
}

/// The answer to a PRE_DUMP or SINGLE_PRE_DUMP request on `channel`: a
/// pre-dump, the task left running and tracked for the next round.
pub fn answer_pre(kind: CriuReqType, opts: &CriuOpts, channel: &Arc<Channel>) -> CriuResp {
    let done = run(opts, channel, "pre-dump");
    CriuResp {
        r#type: kind as i32,
        success: done.is_ok(),
        cr_errmsg: done.err().map(|e| format!("{e:#}")),
        ..Default::default()
    }
}

/// `ferry <command>` (dump or pre-dump) for `opts`.
fn run(opts: &CriuOpts, channel: &Arc<Channel>, command: &str) -> Result<()> {
    let opts = &super::config::apply(opts.clone())?;
    let peer = channel.peer()?;
    let (dir, _held) = super::peer::images_dir(opts, peer)?;
    super::log::start(opts, peer, &dir)?;
    // ferry's own descriptor of the caller's status_fd, handed to the
    // command line (which closes it once it has written).
    let status = match opts.status_fd {
        Some(fd) => Some(std::os::fd::IntoRawFd::into_raw_fd(super::peer::writable(peer, fd, "status_fd")?)),
        None => None,
    };
    let argv = dump_argv(opts, &dir, command, status)?;
    tracing::debug!(?argv, "the request as a command line");
    let notify = notifier(opts, channel);
    let code = match parse(&argv)?.command {
        Command::Dump(args) => crate::cli::dump::run_notifying(args, notify)?,
        Command::PreDump(args) => crate::cli::dump::run_pre_notifying(args, notify)?,
        _ => bail!("internal: the request did not become ferry {command}"),
    };
    if code != std::process::ExitCode::SUCCESS {
        bail!("ferry {command} failed");
    }
    Ok(())
}

/// With `notify_scripts`: the caller is told at each action-script point
/// (CRIU's names: pre-dump, network-lock, post-dump, pre-restore,
/// post-restore, network-unlock, post-resume) and answers before ferry
/// goes on.
pub fn notifier(opts: &CriuOpts, channel: &Arc<Channel>) -> Option<Notify> {
    let channel = channel.clone();
    (opts.notify_scripts == Some(true))
        .then(|| Arc::new(move |action: Action, pid: Option<i32>| channel.notify(action.name(), pid)) as Notify)
}

/// Append the flag of each option set to true.
pub fn flags(argv: &mut Vec<String>, options: &[(Option<bool>, &str)]) {
    argv.extend(options.iter().filter(|(on, _)| *on == Some(true)).map(|(_, flag)| flag.to_string()));
}

/// ferry's command line `argv`, parsed; an error is clap's first line.
pub fn parse(argv: &[String]) -> Result<Cli> {
    Cli::try_parse_from(argv).map_err(|e| {
        let text = e.to_string();
        anyhow::anyhow!("{}", text.lines().next().unwrap_or("bad options").trim_start_matches("error: "))
    })
}

/// `ferry dump`'s arguments for `opts`; refuses any option set that has
/// none.
fn dump_argv(opts: &CriuOpts, dir: &std::path::Path, command: &str, status: Option<i32>) -> Result<Vec<String>> {
    let pid = opts.pid.context("a dump without pid would dump the caller itself: ferry does not dump its caller")?;
    let mut a: Vec<String> = vec!["ferry".into(), command.into(), "-t".into(), pid.to_string(), "-D".into()];
    a.push(dir.display().to_string());
    flags(
        &mut a,
        &[
            (opts.leave_running, "--leave-running"),
            (opts.shell_job, "--shell-job"),
            (opts.file_locks, "--file-locks"),
            (opts.tcp_established, "--tcp-established"),
            (opts.tcp_skip_in_flight, "--skip-in-flight"),
            (opts.track_mem, "--track-mem"),
            (opts.lazy_pages, "--lazy-pages"),
        ],
    );
    if !opts.unix_sk_ino.is_empty() {
        let inodes: Vec<String> = opts.unix_sk_ino.iter().map(|u| u.inode.to_string()).collect();
        a.push(format!("--ext-unix-sk={}", inodes.join(",")));
    } else if opts.ext_unix_sk == Some(true) {
        a.push("--ext-unix-sk".into());
    }
    if let Some(parent) = &opts.parent_img {
        a.extend(["--prev-images-dir".into(), parent.clone()]);
    }
    if let Some(limit) = opts.ghost_limit {
        a.extend(["--ghost-limit".into(), limit.to_string()]);
    }
    if let Some(ps) = &opts.ps {
        if ps.fd.is_some() || ps.pid.is_some() {
            bail!("criu_opts.ps with a socket or a page server process: not supported yet (give address and port)");
        }
        if opts.lazy_pages != Some(true) {
            a.push("--page-server".into());
        }
        if let Some(addr) = &ps.address {
            a.extend(["--address".into(), addr.clone()]);
        }
        if let Some(port) = ps.port {
            a.extend(["--port".into(), port.to_string()]);
        }
    }
    super::container::argv(opts, &mut a)?;
    if let Some(fd) = status {
        a.extend(["--status-fd".into(), fd.to_string()]);
    }
    if let Some(name) = unsupported(opts).first() {
        bail!("{} with criu_opts.{name}: not supported yet", command.to_uppercase().replace('-', "_"));
    }
    Ok(a)
}

/// The options set in `opts` that [`dump_argv`] does not translate, by
/// their names in rpc.proto. A field set to its zero value (false, 0, an
/// empty string) counts as not given.
fn unsupported(opts: &CriuOpts) -> Vec<&'static str> {
    let rest = CriuOpts {
        images_dir_fd: -1,
        images_dir: None,
        pid: None,
        leave_running: None,
        shell_job: None,
        file_locks: None,
        tcp_established: None,
        tcp_skip_in_flight: None,
        track_mem: None,
        lazy_pages: None,
        unix_sk_ino: Vec::new(),
        ext_unix_sk: None,
        parent_img: None,
        ghost_limit: None,
        ps: None,
        notify_scripts: None,
        log_level: None,
        log_file: None,
        work_dir_fd: None,
        status_fd: None,
        ..super::container::without(opts.clone())
    };
    super::fields::given(&rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_without_a_translation_are_named() {
        let opts = CriuOpts {
            images_dir_fd: 3,
            pid: Some(1),
            root: Some("/rootfs".into()),
            cpu_cap: Some(1),
            lsm_profile: Some("x".into()),
            auto_dedup: Some(false),
            ..Default::default()
        };
        // auto_dedup is false: not given; root has a translation.
        assert_eq!(unsupported(&opts), vec!["cpu_cap", "lsm_profile"]);
        let opts = CriuOpts { images_dir_fd: 3, leave_running: Some(true), ..Default::default() };
        assert!(unsupported(&opts).is_empty());
    }

    #[test]
    fn dump_options_become_the_command_line() {
        let opts = CriuOpts {
            images_dir_fd: 3,
            pid: Some(42),
            leave_running: Some(true),
            shell_job: Some(false),
            unix_sk_ino: vec![super::super::criu::UnixSk { inode: 7 }, super::super::criu::UnixSk { inode: 9 }],
            ..Default::default()
        };
        let argv = dump_argv(&opts, std::path::Path::new("/img"), "dump", None).unwrap();
        assert_eq!(argv, ["ferry", "dump", "-t", "42", "-D", "/img", "--leave-running", "--ext-unix-sk=7,9"]);
        let err =
            dump_argv(&CriuOpts { images_dir_fd: 3, ..Default::default() }, std::path::Path::new("/img"), "dump", None);
        assert!(format!("{:#}", err.unwrap_err()).contains("without pid"));
    }
}
