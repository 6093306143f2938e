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
    /// container; restore: `mnt[KEY]:PATH` says what it is now.
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
    /// CRIU's cgroup handling (accepted): restored tasks stay in the
    /// cgroups ferry runs in, where runc puts it before a restore.
    #[arg(long = "manage-cgroups", value_name = "MODE", num_args = 0..=1, default_missing_value = "soft")]
    pub manage_cgroups: Option<String>,
}

/// `mnt[A]:B` as (A, B).
fn external_mount(v: &str) -> Result<(String, String)> {
    let bad = || anyhow::anyhow!("--external {v}: expected mnt[MOUNTPOINT]:KEY (dump) or mnt[KEY]:PATH (restore)");
    let rest = v.strip_prefix("mnt[").ok_or_else(bad)?;
    let (a, b) = rest.split_once("]:").ok_or_else(bad)?;
    if a.is_empty() || b.is_empty() {
        return Err(bad());
    }
    Ok((a.to_string(), b.to_string()))
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
        let external = self
            .external
            .iter()
            .map(|v| external_mount(v).map(|(p, k)| (PathBuf::from(p), k)))
            .collect::<Result<_>>()?;
        Ok(crate::dump::container::ContainerOptions { external, empty_net })
    }

    pub fn restore_options(&self) -> Result<crate::restore::container::ContainerRestore> {
        let external = self
            .external
            .iter()
            .map(|v| external_mount(v).map(|(k, p)| (k, PathBuf::from(p))))
            .collect::<Result<_>>()?;
        Ok(crate::restore::container::ContainerRestore {
            root: self.root.clone(),
            external,
            sibling: self.restore_sibling,
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
        let ns = ContainerArgs { empty_ns: vec!["pid".into()], ..Default::default() };
        assert!(ns.dump_options().is_err());
    }
}
