//! The lock as iptables chains (and ip6tables for IPv6 connections), for
//! hosts without nft: one chain named after the lock, jumped to first from
//! INPUT and OUTPUT, one rule per connection and direction.

use super::{Backend, Connection, Netns};
use anyhow::Result;
use std::net::SocketAddr;

pub struct Iptables;

/// iptables chain names are at most 28 characters.
fn chain(name: &str) -> String {
    let mut c = name.to_uppercase();
    c.truncate(28);
    c
}

fn tool(v6: bool) -> &'static str {
    if v6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

fn drop_rule(chain: &str, from: &SocketAddr, to: &SocketAddr) -> Vec<String> {
    [
        "-w",
        "-A",
        chain,
        "-p",
        "tcp",
        "-s",
        &from.ip().to_string(),
        "-d",
        &to.ip().to_string(),
        "--sport",
        &from.port().to_string(),
        "--dport",
        &to.port().to_string(),
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Backend for Iptables {
    fn add(&self, ns: &Netns, name: &str, conns: &[Connection]) -> Result<()> {
        let ch = chain(name);
        for v6 in [false, true] {
            let mine: Vec<_> = conns.iter().map(|c| c.wire()).filter(|(l, _)| l.is_ipv6() == v6).collect();
            if mine.is_empty() {
                continue;
            }
            let t = tool(v6);
            super::run(ns, t, &["-w", "-N", &ch], None)?;
            for (local, peer) in &mine {
                for args in [drop_rule(&ch, peer, local), drop_rule(&ch, local, peer)] {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    super::run(ns, t, &args, None)?;
                }
            }
            for hook in ["INPUT", "OUTPUT"] {
                super::run(ns, t, &["-w", "-I", hook, "1", "-j", &ch], None)?;
            }
        }
        Ok(())
    }

    fn remove(&self, ns: &Netns, name: &str) -> Result<()> {
        let ch = chain(name);
        for v6 in [false, true] {
            let t = tool(v6);
            if !ns.ok(t, &["-w", "-S", &ch]) {
                continue;
            }
            for hook in ["INPUT", "OUTPUT"] {
                // Every jump to it (a chain in use cannot be deleted).
                while super::run(ns, t, &["-w", "-D", hook, "-j", &ch], None).is_ok() {}
            }
            super::run(ns, t, &["-w", "-F", &ch], None)?;
            super::run(ns, t, &["-w", "-X", &ch], None)?;
        }
        Ok(())
    }
}
