//! /proc/PID/stat: the fields ferry needs (ids, terminal, mm layout).

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: u32,
    pub tpgid: i32,
    pub start_time: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_signal: i32,
    /// The wait(2) status of a zombie (field 52).
    pub exit_code: i32,
}

impl Stat {
    pub fn parse(text: &str) -> Result<Stat> {
        // comm may contain spaces and parentheses: it ends at the last ')'.
        let open = text.find('(').context("no '(' before comm")?;
        let close = text.rfind(')').context("no ')' after comm")?;
        let pid = text[..open].trim().parse().context("bad pid")?;
        let comm = text[open + 1..close].to_string();
        let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
        // f[0] is field 3 (state); field N is f[N - 3].
        let field = |n: usize| -> Result<&str> { f.get(n - 3).copied().with_context(|| format!("no field {n}")) };
        let num = |n: usize| -> Result<i64> {
            let v = field(n)?;
            v.parse::<i64>()
                .or_else(|_| v.parse::<u64>().map(|u| u as i64))
                .with_context(|| format!("field {n}: bad number {v:?}"))
        };
        Ok(Stat {
            pid,
            comm,
            state: field(3)?.chars().next().context("empty state")?,
            ppid: num(4)? as i32,
            pgrp: num(5)? as i32,
            session: num(6)? as i32,
            tty_nr: num(7)? as u32,
            tpgid: num(8)? as i32,
            start_time: num(22)? as u64,
            start_code: num(26)? as u64,
            end_code: num(27)? as u64,
            start_stack: num(28)? as u64,
            exit_signal: num(38)? as i32,
            start_data: num(45)? as u64,
            end_data: num(46)? as u64,
            start_brk: num(47)? as u64,
            arg_start: num(48)? as u64,
            arg_end: num(49)? as u64,
            env_start: num(50)? as u64,
            env_end: num(51)? as u64,
            exit_code: num(52).unwrap_or(0) as i32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (my (odd) prog) S 1 4242 4242 34816 4242 4194560 112 0 0 0 0 0 0 0 20 0 1 0 123456 5480448 224 18446744073709551615 94371840000000 94371840020000 140735000000000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94371840030000 94371840031000 94371860000000 140735000001000 140735000001020 140735000001020 140735000002000 0\n";

    #[test]
    fn stat_snapshot() {
        insta::assert_yaml_snapshot!(Stat::parse(STAT).unwrap());
    }

    #[test]
    fn own_stat_parses() {
        let s = Stat::parse(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert_eq!(s.pid, std::process::id() as i32);
        assert!(s.start_code < s.end_code);
        assert!(s.arg_start < s.arg_end);
    }

    #[test]
    fn truncated_is_an_error() {
        assert!(Stat::parse("1 (x) S 0 1").is_err());
    }
}
