//! The lock as one nftables table (`inet`, so IPv4 and IPv6 together):
//! an input and an output chain ahead of the usual filters, one rule per
//! connection and direction.

use super::{Backend, Connection, Netns};
use anyhow::Result;
use std::fmt::Write;
use std::net::SocketAddr;

pub struct Nftables;

fn family(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn rule(from: &SocketAddr, to: &SocketAddr) -> String {
    let f = family(from);
    format!("{f} saddr {} {f} daddr {} tcp sport {} tcp dport {} drop", from.ip(), to.ip(), from.port(), to.port())
}

impl Backend for Nftables {
    fn add(&self, ns: &Netns, name: &str, conns: &[Connection]) -> Result<()> {
        let mut input = String::new();
        let mut output = String::new();
        for c in conns {
            let (local, peer) = c.wire();
            writeln!(input, "    {}", rule(&peer, &local)).expect("a String");
            writeln!(output, "    {}", rule(&local, &peer)).expect("a String");
        }
        let script = format!(
            "table inet {name} {{\n  chain input {{\n    type filter hook input priority -150; policy accept;\n{input}  }}\n  \
             chain output {{\n    type filter hook output priority -150; policy accept;\n{output}  }}\n}}\n"
        );
        super::run(ns, "nft", &["-f", "-"], Some(&script))
    }

    fn remove(&self, ns: &Netns, name: &str) -> Result<()> {
        // `destroy` would not fail on a missing table, but is newer than
        // bookworm's nft 1.0.6: ask first.
        if !ns.ok("nft", &["list", "table", "inet", name]) {
            return Ok(());
        }
        super::run(ns, "nft", &["delete", "table", "inet", name], None)
    }
}
