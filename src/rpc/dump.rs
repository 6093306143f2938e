//! DUMP requests: `criu_opts` turned into `ferry dump`'s command line, so
//! one parser checks the options and one code path dumps. An option ferry
//! does not implement is refused by its name in rpc.proto.

use super::criu::{CriuDumpResp, CriuOpts, CriuReqType, CriuResp};
use crate::cli::{Cli, Command};
use anyhow::{bail, Context, Result};
use clap::Parser;
use prost::Message;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// The answer to a DUMP request from the process `peer`.
pub fn answer(opts: &CriuOpts, peer: i32) -> CriuResp {
    let done = run(opts, peer);
    CriuResp {
        r#type: CriuReqType::Dump as i32,
        success: done.is_ok(),
        dump: Some(CriuDumpResp { restored: Some(false) }),
        cr_errmsg: done.err().map(|e| format!("{e:#}")),
        ..Default::default()
    }
}

fn run(opts: &CriuOpts, peer: i32) -> Result<()> {
    let (dir, _held) = images_dir(opts, peer)?;
    let argv = dump_argv(opts, &dir)?;
    tracing::debug!(?argv, "DUMP as a command line");
    let cli = Cli::try_parse_from(&argv).map_err(|e| {
        let text = e.to_string();
        anyhow::anyhow!("{}", text.lines().next().unwrap_or("bad options").trim_start_matches("error: "))
    })?;
    if !matches!(cli.command, Command::Dump(_)) {
        bail!("internal: DUMP did not become a dump command");
    }
    let code = cli.run()?;
    if code != std::process::ExitCode::SUCCESS {
        bail!("the dump failed");
    }
    Ok(())
}

/// The images directory the caller named: its descriptor, opened through
/// /proc (the caller's fd number means nothing here), or a path.
fn images_dir(opts: &CriuOpts, peer: i32) -> Result<(PathBuf, Option<OwnedFd>)> {
    if opts.images_dir_fd < 0 {
        let dir = opts.images_dir.as_deref().context("neither images_dir_fd nor images_dir is set")?;
        return Ok((PathBuf::from(dir), None));
    }
    let theirs = format!("/proc/{peer}/fd/{}", opts.images_dir_fd);
    let fd: OwnedFd = std::fs::File::open(&theirs)
        .with_context(|| format!("images_dir_fd {}: opening {theirs}", opts.images_dir_fd))?
        .into();
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .with_context(|| format!("images_dir_fd {}: where it points", opts.images_dir_fd))?;
    if !path.is_dir() {
        bail!("images_dir_fd {} is {}, not a directory", opts.images_dir_fd, path.display());
    }
    // Held open while the dump writes into it.
    Ok((path, Some(fd)))
}

/// `ferry dump`'s arguments for `opts`; refuses any option set that has
/// none.
fn dump_argv(opts: &CriuOpts, dir: &std::path::Path) -> Result<Vec<String>> {
    let pid = opts.pid.context("DUMP without pid would dump the caller itself: ferry does not dump its caller")?;
    let mut a: Vec<String> = vec!["ferry".into(), "dump".into(), "-t".into(), pid.to_string(), "-D".into()];
    a.push(dir.display().to_string());
    let mut flag = |on: Option<bool>, name: &str| {
        if on == Some(true) {
            a.push(name.into());
        }
    };
    flag(opts.leave_running, "--leave-running");
    flag(opts.shell_job, "--shell-job");
    flag(opts.file_locks, "--file-locks");
    flag(opts.tcp_established, "--tcp-established");
    flag(opts.tcp_skip_in_flight, "--skip-in-flight");
    flag(opts.track_mem, "--track-mem");
    flag(opts.lazy_pages, "--lazy-pages");
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
    if let Some(name) = unsupported(opts).first() {
        bail!("DUMP with criu_opts.{name}: not supported yet");
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
        ..opts.clone()
    };
    let bytes = rest.encode_to_vec();
    wire_fields(&bytes).into_iter().filter(|&(tag, zero)| !zero && tag != 1).map(|(tag, _)| field_name(tag)).collect()
}

/// The fields of an encoded message: (tag, whether its value is zero or
/// empty), in order.
fn wire_fields(mut b: &[u8]) -> Vec<(u32, bool)> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while let Some(key) = varint(&mut b) {
        let (tag, zero) = match key & 7 {
            0 => ((key >> 3) as u32, varint(&mut b) == Some(0)),
            1 => {
                let v = b.get(..8).map(|v| v.iter().all(|&x| x == 0));
                b = b.get(8..).unwrap_or_default();
                ((key >> 3) as u32, v.unwrap_or(true))
            }
            2 => {
                let len = varint(&mut b).unwrap_or(0) as usize;
                b = b.get(len..).unwrap_or_default();
                ((key >> 3) as u32, len == 0)
            }
            5 => {
                let v = b.get(..4).map(|v| v.iter().all(|&x| x == 0));
                b = b.get(4..).unwrap_or_default();
                ((key >> 3) as u32, v.unwrap_or(true))
            }
            _ => break,
        };
        out.push((tag, zero));
    }
    out
}

/// A `criu_opts` field's name, from rpc.proto itself.
fn field_name(tag: u32) -> &'static str {
    const PROTO: &str = include_str!("rpc.proto");
    let body = PROTO.split("message criu_opts {").nth(1).and_then(|s| s.split("\n}").next()).unwrap_or("");
    body.lines()
        .find_map(|l| {
            let l = l.split("//").next()?.split("/*").next()?;
            let (lhs, rhs) = l.split_once('=')?;
            let n: u32 = rhs.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
            (n == tag).then(|| lhs.split_whitespace().last()).flatten()
        })
        .unwrap_or("(unknown field)")
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
            manage_cgroups: Some(true),
            evasive_devices: Some(false),
            ..Default::default()
        };
        // evasive_devices is false: not given.
        assert_eq!(unsupported(&opts), vec!["root", "manage_cgroups"]);
        let opts = CriuOpts { images_dir_fd: 3, leave_running: Some(true), ..Default::default() };
        assert!(unsupported(&opts).is_empty());
    }

    #[test]
    fn field_names_come_from_rpc_proto() {
        assert_eq!(field_name(13), "root");
        assert_eq!(field_name(68), "images_dir");
        assert_eq!(field_name(9999), "(unknown field)");
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
        let argv = dump_argv(&opts, std::path::Path::new("/img")).unwrap();
        assert_eq!(argv, ["ferry", "dump", "-t", "42", "-D", "/img", "--leave-running", "--ext-unix-sk=7,9"]);
        let err = dump_argv(&CriuOpts { images_dir_fd: 3, ..Default::default() }, std::path::Path::new("/img"));
        assert!(format!("{:#}", err.unwrap_err()).contains("without pid"));
    }
}
