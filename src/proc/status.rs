//! /proc/PID/status.

use super::key_values;
use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub name: String,
    /// One letter: R, S, D, T, t, Z, X, I.
    pub state: char,
    pub tgid: i32,
    pub pid: i32,
    pub ppid: i32,
    pub tracer_pid: i32,
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    pub threads: u32,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    /// The PID in each nested PID namespace, ferry's first, the task's own last.
    pub nspid: Vec<i32>,
    pub nspgid: Vec<i32>,
    pub nssid: Vec<i32>,
}

impl Status {
    /// The PID in the task's own PID namespace.
    pub fn vpid(&self) -> i32 {
        self.nspid.last().copied().unwrap_or(self.pid)
    }
}

impl Status {
    pub fn parse(text: &str) -> Result<Status> {
        let kv = key_values(text);
        let get = |k: &str| -> Result<&str> {
            kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v).with_context(|| format!("no {k} field"))
        };
        let num = |k: &str| -> Result<i64> {
            let v = get(k)?;
            v.parse().with_context(|| format!("{k}: bad number {v:?}"))
        };
        let hex = |k: &str| -> Result<u64> {
            let v = get(k)?;
            u64::from_str_radix(v, 16).with_context(|| format!("{k}: bad hex {v:?}"))
        };
        let list = |k: &str| -> Option<Vec<i32>> {
            get(k).ok().map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        };
        let ids = |k: &str| -> Result<[u32; 4]> {
            let v: Vec<u32> = get(k)?
                .split_whitespace()
                .map(|x| x.parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{k}: bad ids"))?;
            v.try_into().map_err(|_| anyhow::anyhow!("{k}: expected 4 ids"))
        };
        Ok(Status {
            name: get("Name")?.to_string(),
            state: get("State")?.chars().next().context("empty State")?,
            tgid: num("Tgid")? as i32,
            pid: num("Pid")? as i32,
            ppid: num("PPid")? as i32,
            tracer_pid: num("TracerPid")? as i32,
            uid: ids("Uid")?,
            gid: ids("Gid")?,
            groups: get("Groups")?
                .split_whitespace()
                .map(|x| x.parse())
                .collect::<Result<_, _>>()
                .context("Groups: bad ids")?,
            umask: get("Umask").ok().map(|v| u32::from_str_radix(v, 8)).transpose().context("Umask")?,
            threads: num("Threads")? as u32,
            cap_inh: hex("CapInh")?,
            cap_prm: hex("CapPrm")?,
            cap_eff: hex("CapEff")?,
            cap_bnd: hex("CapBnd")?,
            cap_amb: hex("CapAmb")?,
            no_new_privs: num("NoNewPrivs").unwrap_or(0) != 0,
            seccomp: num("Seccomp").unwrap_or(0) as u32,
            sig_pnd: hex("SigPnd")?,
            shd_pnd: hex("ShdPnd")?,
            sig_blk: hex("SigBlk")?,
            sig_ign: hex("SigIgn")?,
            sig_cgt: hex("SigCgt")?,
            nspid: list("NSpid").unwrap_or_else(|| vec![num("Pid").unwrap_or(0) as i32]),
            nspgid: list("NSpgid").unwrap_or_default(),
            nssid: list("NSsid").unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t0 27 \nNStgid:\t4242\nNSpid:\t4242\nNSpgid:\t4242\nNSsid:\t4242\nKthread:\t0\nVmPeak:\t   20000 kB\nThreads:\t1\nSigQ:\t0/95353\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000200\nSigIgn:\t0000000001001000\nSigCgt:\t0000000100000002\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";

    #[test]
    fn status_snapshot() {
        insta::assert_yaml_snapshot!(Status::parse(STATUS).unwrap());
    }

    #[test]
    fn own_status_parses() {
        let s = Status::parse(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
        assert_eq!(s.tgid, std::process::id() as i32);
        assert!(s.threads >= 1);
    }

    #[test]
    fn missing_field_is_named() {
        let err = Status::parse("Name:\tx\n").unwrap_err();
        assert_eq!(err.to_string(), "no State field");
    }
}
