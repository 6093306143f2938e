//! CRIU's options for containers: where the root is, which mounts come
//! from outside, which namespaces the caller sets up, cgroups.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Default, Clone)]
pub struct ContainerArgs {
    /// Restore: the directory that becomes the container's root.
    #[arg(short = 'r', long = "root", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Dump: `mnt[MOUNTPOINT]:KEY` names a mount from outside the
    /// container, `net[INODE]:KEY` its network namespace from outside;
    /// restore: `mnt[KEY]:PATH` says what the mount is now (the network
    /// namespace is handed in with --inherit-fd fd[N]:KEY).
    #[arg(long = "external", value_name = "mnt[...]:...", action = clap::ArgAction::Append)]
    pub external: Vec<String>,
    /// Dump: namespaces the caller sets up itself (only `net`: the restore
    /// gives the container a new, empty network namespace).
    #[arg(long = "empty-ns", value_name = "net", action = clap::ArgAction::Append)]
    pub empty_ns: Vec<String>,
    /// Restore: the root becomes a child of ferry's parent (runc's way).
    #[arg(short = 'S', long = "restore-sibling")]
    pub restore_sibling: bool,
    /// Dump: the container's freezer cgroup. ferry stops every task of the
    /// tree with ptrace whatever it is given; the cgroup is not written.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    pub freeze_cgroup: Option<PathBuf>,
    /// Dump: the tree's terminals may have their master outside it (a
    /// container's console); restore makes new ones and, over RPC, hands
    /// their masters to the caller.
    #[arg(long = "orphan-pts-master")]
    pub orphan_pts_master: bool,
    /// CRIU's cgroup handling (accepted): restored tasks stay in the
    /// cgroups ferry runs in, where runc puts it before a restore.
    #[arg(long = "manage-cgroups", value_name = "MODE", num_args = 0..=1, default_missing_value = "soft")]
    pub manage_cgroups: Option<String>,
}

/// `KIND[A]:B` as (KIND, A, B), for KIND mnt or net.
fn external(v: &str) -> Result<(&str, String, String)> {
    let bad = || {
        anyhow::anyhow!(
            "--external {v}: expected mnt[MOUNTPOINT]:KEY or net[INODE]:KEY (dump), mnt[KEY]:PATH (restore)"
        )
    };
    let (kind, rest) = v.split_once('[').ok_or_else(bad)?;
    let (a, b) = rest.split_once("]:").ok_or_else(bad)?;
    if !matches!(kind, "mnt" | "net") || a.is_empty() || b.is_empty() {
        return Err(bad());
    }
    Ok((kind, a.to_string(), b.to_string()))
}

impl ContainerArgs {
    pub fn dump_options(&self) -> Result<crate::dump::container::ContainerOptions> {
        let mut empty_net = false;
        for ns in &self.empty_ns {
            match ns.as_str() {
                "net" => empty_net = true,
                other => bail!("--empty-ns {other}: only net can be left to the caller"),
            }
        }
        let (mut mounts, mut nets) = (Vec::new(), Vec::new());
        for v in &self.external {
            match external(v)? {
                ("mnt", path, key) => mounts.push((PathBuf::from(path), key)),
                (_, ino, key) => {
                    let ino =
                        ino.parse().map_err(|_| anyhow::anyhow!("--external {v}: {ino} is not an inode number"))?;
                    nets.push((ino, key));
                }
            }
        }
        Ok(crate::dump::container::ContainerOptions {
            external: mounts,
            empty_net,
            external_net: nets,
            orphan_pts_master: self.orphan_pts_master,
        })
    }

    pub fn restore_options(&self) -> Result<crate::restore::container::ContainerRestore> {
        let mut mounts = std::collections::HashMap::new();
        for v in &self.external {
            match external(v)? {
                ("mnt", key, path) => {
                    mounts.insert(key, PathBuf::from(path));
                }
                _ => bail!("--external {v}: on restore, hand the network namespace in with --inherit-fd fd[N]:KEY"),
            }
        }
        Ok(crate::restore::container::ContainerRestore {
            root: self.root.clone(),
            external: mounts,
            sibling: self.restore_sibling,
            // Set by the RPC service, which has a caller to give them to.
            orphan_pts_master: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_mounts_both_ways() {
        let a = ContainerArgs { external: vec!["mnt[/sys/fs/cgroup/cpu]:cpu".into()], ..Default::default() };
        assert_eq!(a.dump_options().unwrap().external, vec![(PathBuf::from("/sys/fs/cgroup/cpu"), "cpu".into())]);
        assert_eq!(a.restore_options().unwrap().external["/sys/fs/cgroup/cpu"], PathBuf::from("cpu"));
        let bad = ContainerArgs { external: vec!["dev[1]:x".into()], ..Default::default() };
        assert!(bad.dump_options().is_err());
        let net = ContainerArgs { external: vec!["net[4026532174]:extRootNetNS".into()], ..Default::default() };
        assert_eq!(net.dump_options().unwrap().external_net, vec![(4026532174, "extRootNetNS".into())]);
        assert!(net.restore_options().is_err());
        let bad = ContainerArgs { external: vec!["net[x]:k".into()], ..Default::default() };
        assert!(bad.dump_options().is_err());
        let ns = ContainerArgs { empty_ns: vec!["pid".into()], ..Default::default() };
        assert!(ns.dump_options().is_err());
    }
}
