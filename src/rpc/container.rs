//! The container options of a request (what runc sets on every DUMP and
//! RESTORE) as ferry's command-line options (cli::container).

use super::criu::CriuOpts;
use anyhow::{bail, Result};

/// Append the container options `opts` sets to `argv`.
pub fn argv(opts: &CriuOpts, argv: &mut Vec<String>) -> Result<()> {
    if let Some(root) = opts.root.as_deref().filter(|r| !r.is_empty()) {
        argv.extend(["--root".into(), root.to_string()]);
    }
    for m in &opts.ext_mnt {
        argv.extend(["--external".into(), format!("mnt[{}]:{}", m.key, m.val)]);
    }
    // CRIU's `external` strings (runc: net[INODE]:extRootNetNS).
    for e in &opts.external {
        argv.extend(["--external".into(), e.clone()]);
    }
    match opts.empty_ns.unwrap_or(0) as i32 {
        0 => {}
        libc::CLONE_NEWNET => argv.extend(["--empty-ns".into(), "net".into()]),
        other => bail!("criu_opts.empty_ns {other:#x}: only CLONE_NEWNET can be left to the caller"),
    }
    if let Some(cg) = opts.freeze_cgroup.as_deref().filter(|c| !c.is_empty()) {
        argv.extend(["--freeze-cgroup".into(), cg.to_string()]);
    }
    if opts.manage_cgroups == Some(true) {
        argv.push("--manage-cgroups".into());
    }
    if opts.orphan_pts_master == Some(true) {
        argv.push("--orphan-pts-master".into());
    }
    if opts.rst_sibling == Some(true) {
        argv.push("--restore-sibling".into());
    }
    for cg in &opts.cg_root {
        in_cgroup(cg.ctrl.as_deref(), &cg.path, &std::fs::read_to_string("/proc/self/cgroup")?)?;
    }
    Ok(())
}

/// cg_root: the restored tasks go where ferry is (they inherit its
/// cgroups; runc moves `criu swrk` into the container's before RESTORE).
/// Anywhere else is refused: ferry does not move tasks between cgroups.
fn in_cgroup(ctrl: Option<&str>, path: &str, ours: &str) -> Result<()> {
    let lines = ours.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, at) = (f.next()?, f.next()?, f.next()?);
        Some((ctrls, at))
    });
    let mut seen = false;
    for (ctrls, at) in lines {
        let named = match ctrl {
            Some(c) => ctrls.split(',').any(|x| x == c || x.strip_prefix("name=") == Some(c)),
            None => !ctrls.is_empty(),
        };
        if named {
            seen = true;
            if at != path {
                bail!(
                    "criu_opts.cg_root {}:{path}: ferry is in {at}, and restores tasks in its own cgroups",
                    ctrl.unwrap_or("*")
                );
            }
        }
    }
    if !seen {
        bail!("criu_opts.cg_root {}:{path}: no such cgroup controller here", ctrl.unwrap_or("*"));
    }
    Ok(())
}

/// `opts` without the fields [`argv`] takes, and the ones that need
/// nothing from ferry: evasive_devices (devices are opened by path and
/// checked by number), manage_cgroups_mode (tasks stay in the cgroups
/// ferry runs in).
pub fn without(opts: CriuOpts) -> CriuOpts {
    CriuOpts {
        root: None,
        ext_mnt: Vec::new(),
        external: Vec::new(),
        empty_ns: None,
        freeze_cgroup: None,
        manage_cgroups: None,
        manage_cgroups_mode: None,
        rst_sibling: None,
        config_file: None,
        orphan_pts_master: None,
        evasive_devices: None,
        cg_root: Vec::new(),
        ..opts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::criu::ExtMountMap;

    #[test]
    fn runc_options_become_flags() {
        let opts = CriuOpts {
            root: Some("/b/rootfs".into()),
            ext_mnt: vec![ExtMountMap { key: "/sys/fs/cgroup/cpu".into(), val: "/sys/fs/cgroup/cpu".into() }],
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            manage_cgroups: Some(true),
            rst_sibling: Some(true),
            ..Default::default()
        };
        let mut a = Vec::new();
        argv(&opts, &mut a).unwrap();
        assert_eq!(
            a,
            [
                "--root",
                "/b/rootfs",
                "--external",
                "mnt[/sys/fs/cgroup/cpu]:/sys/fs/cgroup/cpu",
                "--empty-ns",
                "net",
                "--manage-cgroups",
                "--restore-sibling"
            ]
        );
        let pid = CriuOpts { empty_ns: Some(libc::CLONE_NEWPID as u32), ..Default::default() };
        assert!(argv(&pid, &mut Vec::new()).is_err());
        assert_eq!(without(opts), CriuOpts::default());
    }

    #[test]
    fn cgroup_roots_must_be_where_ferry_is() {
        let ours = "9:name=systemd:/ctr1\n4:memory:/x/ctr1\n3:cpu,cpuacct:/ctr1\n0::/ctr1\n";
        assert!(in_cgroup(Some("cpu"), "/ctr1", ours).is_ok());
        assert!(in_cgroup(Some("systemd"), "/ctr1", ours).is_ok());
        assert!(in_cgroup(Some("memory"), "/ctr1", ours).unwrap_err().to_string().contains("ferry is in /x/ctr1"));
        assert!(in_cgroup(Some("blkio"), "/ctr1", ours).is_err());
        assert!(in_cgroup(None, "/ctr1", ours).is_err());
    }
}
