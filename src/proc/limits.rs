//! /proc/PID/limits. Read instead of prlimit(2): prlimit on another uid's
//! task needs CAP_SYS_RESOURCE, which root may lack.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// RLIM_INFINITY.
pub const UNLIMITED: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// The kernel's RLIMIT_* number.
    pub resource: u32,
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// The rows of /proc/PID/limits, in kernel order: row i is resource i.
const NAMES: [(&str, &str); 16] = [
    ("Max cpu time", "RLIMIT_CPU"),
    ("Max file size", "RLIMIT_FSIZE"),
    ("Max data size", "RLIMIT_DATA"),
    ("Max stack size", "RLIMIT_STACK"),
    ("Max core file size", "RLIMIT_CORE"),
    ("Max resident set", "RLIMIT_RSS"),
    ("Max processes", "RLIMIT_NPROC"),
    ("Max open files", "RLIMIT_NOFILE"),
    ("Max locked memory", "RLIMIT_MEMLOCK"),
    ("Max address space", "RLIMIT_AS"),
    ("Max file locks", "RLIMIT_LOCKS"),
    ("Max pending signals", "RLIMIT_SIGPENDING"),
    ("Max msgqueue size", "RLIMIT_MSGQUEUE"),
    ("Max nice priority", "RLIMIT_NICE"),
    ("Max realtime priority", "RLIMIT_RTPRIO"),
    ("Max realtime timeout", "RLIMIT_RTTIME"),
];

fn value(s: &str) -> Result<u64> {
    if s == "unlimited" {
        Ok(UNLIMITED)
    } else {
        s.parse().with_context(|| format!("bad limit {s:?}"))
    }
}

pub fn parse(text: &str) -> Result<Vec<Limit>> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((resource, (_, name))) = NAMES.iter().enumerate().find(|(_, (label, _))| line.starts_with(label))
        else {
            bail!("unknown limit line {line:?}");
        };
        let label_len = NAMES[resource].0.len();
        let mut cols = line[label_len..].split_whitespace();
        let soft = value(cols.next().with_context(|| format!("no soft limit in {line:?}"))?)?;
        let hard = value(cols.next().with_context(|| format!("no hard limit in {line:?}"))?)?;
        out.push(Limit { resource: resource as u32, name: name.to_string(), soft, hard });
    }
    if out.len() != NAMES.len() {
        bail!("expected {} limits, found {}", NAMES.len(), out.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max file size             unlimited            unlimited            bytes     \n\
Max data size             unlimited            unlimited            bytes     \n\
Max stack size            8388608              unlimited            bytes     \n\
Max core file size        0                    unlimited            bytes     \n\
Max resident set          unlimited            unlimited            bytes     \n\
Max processes             95353                95353                processes \n\
Max open files            1024                 1048576              files     \n\
Max locked memory         8388608              8388608              bytes     \n\
Max address space         unlimited            unlimited            bytes     \n\
Max file locks            unlimited            unlimited            locks     \n\
Max pending signals       95353                95353                signals   \n\
Max msgqueue size         819200               819200               bytes     \n\
Max nice priority         0                    0                    \n\
Max realtime priority     0                    0                    \n\
Max realtime timeout      unlimited            unlimited            us        \n";

    #[test]
    fn limits_snapshot() {
        insta::assert_yaml_snapshot!(parse(LIMITS).unwrap());
    }

    #[test]
    fn own_limits_match_getrlimit() {
        let l = parse(&std::fs::read_to_string("/proc/self/limits").unwrap()).unwrap();
        let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(l[7].name, "RLIMIT_NOFILE");
        assert_eq!((l[7].soft, l[7].hard), (soft, hard));
    }

    #[test]
    fn unknown_rows_are_errors() {
        assert!(parse("header\nMax wizardry   1 2 x\n").is_err());
    }
}
