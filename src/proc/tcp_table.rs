//! /proc/PID/net/tcp and tcp6: the established TCP connections of a
//! process's network namespace, by socket inode (what the network lock
//! needs before any socket is looked at).

use super::ProcDir;
use crate::netlock::Connection;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Established connections (state 01) by inode.
pub fn established(proc: &ProcDir) -> Result<HashMap<u64, Connection>> {
    let mut out = HashMap::new();
    for file in ["net/tcp", "net/tcp6"] {
        let text = proc.read(file)?;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let local = addr(f[1]).with_context(|| format!("{file}: {}", f[1]))?;
            let peer = addr(f[2]).with_context(|| format!("{file}: {}", f[2]))?;
            let ino: u64 = f[9].parse().with_context(|| format!("{file}: inode {}", f[9]))?;
            out.insert(ino, Connection { local, peer });
        }
    }
    Ok(out)
}

/// "0100007F:1F90" (the address as the kernel's 32-bit words in host
/// order, hex) into 127.0.0.1:8080.
fn addr(s: &str) -> Result<SocketAddr> {
    let (ip, port) = s.split_once(':').context("no port")?;
    let port = u16::from_str_radix(port, 16)?;
    let mut bytes = Vec::new();
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8).context("short address")?, 16)?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).expect("16 bytes"))),
        n => anyhow::bail!("an address of {n} bytes"),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The established connections the processes `pids` hold, in their
/// namespace.
pub fn held_by(pids: &[i32]) -> Result<Vec<Connection>> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<Connection> = Vec::new();
    let mut tables: HashMap<u64, HashMap<u64, Connection>> = HashMap::new();
    for &pid in pids {
        let proc = ProcDir::new(pid);
        let Ok(fds) = std::fs::read_dir(proc.path("fd")) else { continue };
        let netns = std::fs::metadata(proc.path("ns/net")).map(|m| m.ino()).unwrap_or(0);
        for e in fds.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else { continue };
            let Some(ino) = link.to_str().and_then(|l| l.strip_prefix("socket:[")).and_then(|l| l.strip_suffix(']'))
            else {
                continue;
            };
            let Ok(ino) = ino.parse::<u64>() else { continue };
            let table = match tables.entry(netns) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(established(&proc)?),
            };
            if let Some(c) = table.get(&ino) {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_addresses() {
        if cfg!(target_endian = "little") {
            assert_eq!(addr("0100007F:1F90").unwrap(), "127.0.0.1:8080".parse().unwrap());
            assert_eq!(addr("00000000000000000000000001000000:0016").unwrap(), "[::1]:22".parse().unwrap());
        }
        assert!(addr("0100007F").is_err());
    }
}
