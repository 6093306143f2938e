//! The network lock: from the freeze on the source until the restored
//! connections are live, the packets of the tree's TCP connections are
//! dropped in both directions, so the peer sees neither a reset (no socket
//! to answer it) nor a changed connection (the kernel acknowledging data
//! the image does not hold). TCP sends again what was dropped once the lock
//! goes.
//!
//! Rules go into the network namespace of the connections, under one name
//! per dump (`ferry-lock-PID`): an nftables table (`inet`), or iptables
//! chains where nft is missing. A guard process watches the dumping ferry:
//! if ferry dies before it decided the task's fate, the guard removes the
//! rules (the task runs on). A dump that kills its task leaves the lock in
//! place and records it in the images (`netlock.json`); the restore
//! removes it once the tree runs. A stale lock is listed by
//! `nft list tables | grep ferry-lock` (or `iptables -S | grep FERRY`)
//! and removed by `ferry unlock-network NAME` or by hand.

mod iptables;
mod nftables;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

/// `--network-lock`: CRIU's methods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// nftables where `nft` is installed, else iptables.
    #[default]
    Auto,
    Nftables,
    Iptables,
    /// No lock (the operator holds the packets some other way).
    Skip,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Method, String> {
        match s {
            "nftables" => Ok(Method::Nftables),
            "iptables" => Ok(Method::Iptables),
            "skip" => Ok(Method::Skip),
            _ => Err(format!("--network-lock {s:?}: one of nftables, iptables, skip")),
        }
    }
}

/// One connection, as the kernel names it in the namespace it lives in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Connection {
    /// The addresses the packets carry: an IPv4 peer of an IPv6 socket
    /// (::ffff:a.b.c.d) travels as IPv4.
    pub fn wire(&self) -> (SocketAddr, SocketAddr) {
        fn unmap(a: SocketAddr) -> SocketAddr {
            match a {
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                    None => a,
                },
                a => a,
            }
        }
        (unmap(self.local), unmap(self.peer))
    }
}

/// A lock as the images record it, for the restore to remove.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub method: Method,
    pub name: String,
}

pub const RECORD_FILE: &str = "netlock.json";

/// Rules of one backend.
trait Backend {
    fn add(&self, ns: &Netns, name: &str, conns: &[Connection]) -> Result<()>;
    /// Remove the rules named `name`; Ok if there are none.
    fn remove(&self, ns: &Netns, name: &str) -> Result<()>;
}

/// Where the rules go: ferry's own network namespace, or a task's
/// (`/proc/PID/ns/net`, entered with nsenter).
#[derive(Clone, Debug, Default)]
pub struct Netns(pub Option<std::path::PathBuf>);

impl Netns {
    /// `pid`'s namespace, or None if it is ferry's.
    pub fn of(pid: i32) -> Netns {
        use std::os::unix::fs::MetadataExt;
        let theirs = format!("/proc/{pid}/ns/net");
        let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
        if ino(&theirs).is_some() && ino(&theirs) != ino("/proc/self/ns/net") {
            Netns(Some(theirs.into()))
        } else {
            Netns(None)
        }
    }

    fn command(&self, tool: &str) -> std::process::Command {
        match &self.0 {
            None => std::process::Command::new(tool),
            Some(p) => {
                let mut c = std::process::Command::new("nsenter");
                c.arg(format!("--net={}", p.display())).arg("--").arg(tool);
                c
            }
        }
    }

    /// Whether `tool args` succeeds (a question, not an action).
    fn ok(&self, tool: &str, args: &[&str]) -> bool {
        self.command(tool).args(args).output().is_ok_and(|o| o.status.success())
    }
}

fn backend(method: Method) -> Result<(Method, &'static dyn Backend)> {
    let found = |tool: &str| {
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).is_file()
    };
    match method {
        Method::Auto if found("nft") => Ok((Method::Nftables, &nftables::Nftables)),
        Method::Auto if found("iptables") => Ok((Method::Iptables, &iptables::Iptables)),
        Method::Auto => bail!(
            "neither nft nor iptables is installed to lock the network: install nftables, or give \
             --network-lock skip if the connections' packets are held some other way"
        ),
        Method::Nftables => Ok((Method::Nftables, &nftables::Nftables)),
        Method::Iptables => Ok((Method::Iptables, &iptables::Iptables)),
        Method::Skip => bail!("no backend for --network-lock skip"),
    }
}

/// The rules in place, removed when dropped unless kept.
pub struct Lock {
    record: Record,
    backend: &'static dyn Backend,
    ns: Netns,
    guard: Option<std::process::Child>,
    kept: bool,
}

impl Lock {
    /// Lock `conns` (in ferry's network namespace); None with `skip` or
    /// when there is nothing to lock.
    pub fn take(method: Method, ns: Netns, name: &str, conns: &[Connection]) -> Result<Option<Lock>> {
        if method == Method::Skip || conns.is_empty() {
            return Ok(None);
        }
        let (method, backend) = backend(method)?;
        // A lock left by an earlier dump of the same PID goes first.
        backend.remove(&ns, name)?;
        if let Err(e) = backend.add(&ns, name, conns) {
            let _ = backend.remove(&ns, name);
            return Err(e.context("locking the network"));
        }
        let record = Record { method, name: name.to_string() };
        let guard = spawn_guard(&record, &ns);
        tracing::info!(name, connections = conns.len(), method = ?method, "network locked");
        Ok(Some(Lock { record, backend, ns, guard, kept: false }))
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The task is gone: the lock stays until the restore removes it.
    pub fn keep(mut self) -> Record {
        self.kept = true;
        if let Some(mut g) = self.guard.take() {
            if let Some(mut stdin) = g.stdin.take() {
                let _ = stdin.write_all(b"keep\n");
            }
            let _ = g.wait();
        }
        self.record.clone()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        match self.backend.remove(&self.ns, &self.record.name) {
            Ok(()) => tracing::info!(name = self.record.name, "network unlocked"),
            Err(e) => tracing::warn!("removing the network lock {}: {e:#}", self.record.name),
        }
        if let Some(mut g) = self.guard.take() {
            drop(g.stdin.take());
            let _ = g.wait();
        }
    }
}

/// A process that removes the lock if ferry dies first (its stdin, a pipe
/// from ferry, ends without "keep").
fn spawn_guard(record: &Record, ns: &Netns) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().ok()?;
    let method = serde_json::to_value(record.method).ok()?.as_str()?.to_string();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["network-lock-guard", &method, &record.name]);
    if let Some(p) = &ns.0 {
        cmd.arg(p);
    }
    let child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).process_group(0).spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("no guard for the network lock ({e}): if ferry dies now, remove it by hand");
            None
        }
    }
}

/// `ferry network-lock-guard METHOD NAME [NETNS]`: wait for ferry's word.
pub fn guard(method: Method, name: &str, ns: Netns) -> Result<()> {
    let mut word = String::new();
    let _ = std::io::stdin().read_line(&mut word);
    if word.trim() != "keep" {
        remove(&Record { method, name: name.to_string() }, &ns)?;
    }
    Ok(())
}

/// Remove a recorded lock, if it is there.
pub fn remove(record: &Record, ns: &Netns) -> Result<()> {
    if record.method == Method::Skip {
        return Ok(());
    }
    let (_, backend) = backend(record.method)?;
    backend.remove(ns, &record.name)
}

/// Run a rule tool; its stderr becomes the error.
fn run(ns: &Netns, tool: &str, args: &[&str], input: Option<&str>) -> Result<()> {
    let mut cmd = ns.command(tool);
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    if input.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().with_context(|| format!("running {tool}"))?;
    if let Some(text) = input {
        child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{tool} {}: {}", args.join(" "), err.lines().next().unwrap_or("failed"));
    }
    Ok(())
}
