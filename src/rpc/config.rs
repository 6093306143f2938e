//! `config_file` of a request (runc's `org.criu.config` annotation): a
//! CRIU configuration file whose options override the request's, as CRIU
//! applies it last. One option per line, `NAME`, `NAME VALUE` or
//! `NAME=VALUE`, with `#` comments. The options that have a request
//! field are taken; any other is refused by name. A file that does not
//! exist is skipped, as CRIU skips it.

use super::criu::CriuOpts;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// `opts` with the options of its config_file applied.
pub fn apply(mut opts: CriuOpts) -> Result<CriuOpts> {
    let Some(file) = opts.config_file.clone().filter(|f| !f.is_empty()) else { return Ok(opts) };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(file, "config_file does not exist: nothing to apply");
            return Ok(opts);
        }
        Err(e) => return Err(e).with_context(|| format!("reading config_file {file}")),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = match line.split_once(|c: char| c == '=' || c.is_whitespace()) {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (line, None),
        };
        let name = name.trim_start_matches('-');
        let at = || format!("{}:{}: {name}", Path::new(&file).display(), n + 1);
        let flag = |v: Option<&str>| -> Result<Option<bool>> {
            match v {
                None => Ok(Some(true)),
                Some(v) => bail!("{}: takes no value (given {v:?})", at()),
            }
        };
        match name {
            "log-file" | "o" => {
                let v = value.filter(|v| !v.is_empty()).with_context(|| format!("{}: needs a file name", at()))?;
                opts.log_file = Some(v.to_string());
            }
            "leave-running" | "R" => opts.leave_running = flag(value)?,
            "tcp-established" => opts.tcp_established = flag(value)?,
            "tcp-close" => opts.tcp_close = flag(value)?,
            "skip-in-flight" => opts.tcp_skip_in_flight = flag(value)?,
            "ext-unix-sk" => opts.ext_unix_sk = flag(value)?,
            "shell-job" | "j" => opts.shell_job = flag(value)?,
            "file-locks" | "l" => opts.file_locks = flag(value)?,
            "manage-cgroups" => opts.manage_cgroups = Some(true),
            _ => bail!("{}: ferry takes log-file, leave-running, tcp-established, tcp-close, skip-in-flight, ext-unix-sk, shell-job, file-locks and manage-cgroups from a configuration file", at()),
        }
    }
    opts.config_file = None;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_overrides_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runc.conf");
        std::fs::write(&file, "# runc's annotation\nlog-file=mine.log\ntcp-established\n\nfile-locks # too\n").unwrap();
        let opts = CriuOpts {
            log_file: Some("dump.log".into()),
            config_file: Some(file.display().to_string()),
            ..Default::default()
        };
        let o = apply(opts).unwrap();
        assert_eq!(o.log_file.as_deref(), Some("mine.log"));
        assert_eq!((o.tcp_established, o.file_locks, o.config_file), (Some(true), Some(true), None));
        std::fs::write(&file, "lazy-pages\n").unwrap();
        let bad = CriuOpts { config_file: Some(file.display().to_string()), ..Default::default() };
        assert!(apply(bad).unwrap_err().to_string().contains("runc.conf:1: lazy-pages"));
        let missing = CriuOpts { config_file: Some("/nonexistent/x.conf".into()), ..Default::default() };
        assert_eq!(apply(missing).unwrap().config_file.as_deref(), Some("/nonexistent/x.conf"));
    }
}
