//! A tree whose root lives in a mount namespace of its own is a container:
//! its namespaces are part of its state. This reads them (with the tree
//! frozen, for the second look): the mounts, sorted into what a restore can
//! rebuild (see [`MountKind`]), the UTS names, and whether the IPC and
//! network namespaces can come back as new ones.

use crate::image::container::{ContainerImage, MountEntry, MountKind, NetNs, UtsNames};
use crate::proc::mountinfo::MountInfo;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// What the caller says about the container (CRIU's options).
#[derive(Clone, Debug, Default)]
pub struct ContainerOptions {
    /// `--external mnt[MOUNTPOINT]:KEY`: mounts that come from outside.
    pub external: Vec<(PathBuf, String)>,
    /// `--empty-ns net`: the network namespace is the caller's business.
    pub empty_net: bool,
    /// `--external net[INODE]:KEY`: a network namespace from outside.
    pub external_net: Vec<(u64, String)>,
    /// `--orphan-pts-master`: the tree's terminals may have their master
    /// outside it (runc's console socket holds a container's).
    pub orphan_pts_master: bool,
}

/// Filesystems that come back as new instances: they keep nothing a
/// process put there (mqueue: checked to be empty).
const FRESH: &[&str] = &["proc", "sysfs", "devpts", "mqueue"];

fn ns_link(pid: i32, ns: &str) -> Result<PathBuf> {
    ProcDir::new(pid).read_link(&format!("ns/{ns}"))
}

/// None if the tree shares ferry's mount namespace; otherwise its
/// namespaces, or why they cannot be dumped. Every process must share the
/// root's namespaces.
pub fn inspect(pids: &[(i32, i32)], opts: &ContainerOptions) -> Result<Option<ContainerImage>> {
    let (root, _) = pids[0];
    let me = std::process::id() as i32;
    const KINDS: [&str; 6] = ["mnt", "uts", "ipc", "net", "cgroup", "time"];
    let links =
        |pid: i32| -> Result<HashMap<&str, PathBuf>> { KINDS.iter().map(|&ns| Ok((ns, ns_link(pid, ns)?))).collect() };
    let (theirs, ours) = (links(root)?, links(me)?);
    if theirs["mnt"] == ours["mnt"] {
        return Ok(None);
    }
    for &(pid, vpid) in &pids[1..] {
        for (ns, link) in links(pid)? {
            if link != theirs[ns] {
                bail!("task {vpid} is in another {ns} namespace than the container's init: nested namespaces are not supported yet");
            }
        }
    }
    let differs = |ns: &str| theirs[ns] != ours[ns];
    if differs("time") {
        bail!("task {}: a time namespace of its own is not supported yet", pids[0].1);
    }
    let cgroup = differs("cgroup");
    if cgroup {
        with_ns(root, "cgroup", || at_cgroup_ns_root(root, pids[0].1))?;
    }
    let uts = if differs("uts") { Some(with_ns(root, "uts", uts_names)?) } else { None };
    let ipc = differs("ipc");
    if ipc {
        with_ns(root, "ipc", check_ipc_empty)?;
    }
    let net = if differs("net") { Some(network(root, pids[0].1, opts)?) } else { None };
    let text = ProcDir::new(root).read("mountinfo")?;
    let infos = crate::proc::mountinfo::parse(&text)?;
    // With a cgroup namespace, the cgroup mounts made inside it (rooted at
    // its root, the root's cgroups) come back new, made inside the new one.
    let cgroups = if cgroup { Some(ProcDir::new(root).read("cgroup")?) } else { None };
    let mounts = classify(&infos, opts, cgroups.as_deref())?;
    for m in mounts.iter().filter(|m| m.fstype == "mqueue") {
        let dir = ProcDir::new(root).path("root").join(m.mountpoint.strip_prefix("/").unwrap_or(&m.mountpoint));
        let queues = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        if queues > 0 {
            bail!("{}: POSIX message queues are not supported yet ({queues} open)", m.mountpoint.display());
        }
    }
    Ok(Some(ContainerImage { mounts, uts, ipc, net, cgroup }))
}

/// A cgroup (v1 or v2) mount whose root is the task's cgroup in its
/// hierarchy (`cgroups`, its /proc/PID/cgroup): what mounting it inside
/// the task's cgroup namespace gives.
fn at_namespace_root(m: &MountInfo, cgroups: &str) -> bool {
    let opts: Vec<&str> = m.super_options.split(',').collect();
    cgroups.lines().any(|line| {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(at)) = (f.next(), f.next(), f.next()) else { return false };
        let hierarchy = match m.fstype.as_str() {
            "cgroup2" => ctrls.is_empty(),
            "cgroup" => !ctrls.is_empty() && ctrls.split(',').all(|c| opts.contains(&c)),
            _ => false,
        };
        hierarchy && m.root == Path::new(at)
    })
}

/// A cgroup namespace comes back rooted where the restored root is put
/// (the cgroups ferry runs in, runc's for the container): the same only
/// if the root sat at its namespace's root in every hierarchy, as runc's
/// init does. Called inside that namespace, where paths are relative to
/// its root.
fn at_cgroup_ns_root(pid: i32, vpid: i32) -> Result<()> {
    let text = ProcDir::new(pid).read("cgroup")?;
    for line in text.lines() {
        let at = line.splitn(3, ':').nth(2).unwrap_or("/");
        if at != "/" {
            bail!(
                "task {vpid} is in {line:?} below its cgroup namespace's root: the restore roots a new namespace                  at the task's cgroup, so this one cannot come back"
            );
        }
    }
    Ok(())
}

/// The IDs of the container's mounts, if task `root` is in another mount
/// namespace than ferry: what [`check_fd_inside`] allows.
pub fn mount_ids(root: i32) -> Result<Option<HashSet<u64>>> {
    if ns_link(root, "mnt")? == ns_link(std::process::id() as i32, "mnt")? {
        return Ok(None);
    }
    let infos = crate::proc::mountinfo::parse(&ProcDir::new(root).read("mountinfo")?)?;
    Ok(Some(infos.iter().map(|m| u64::from(m.id)).collect()))
}

/// Refuse a file or directory open on a mount the container does not
/// have (a file of the host handed in as stdout): the restore opens paths
/// inside the container, where it is not. Devices are opened by path and
/// number, wherever they are (runc's stdin /dev/null of the host).
pub fn check_fd_inside(fd: &crate::objects::FdProbe, mounts: &HashSet<u64>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let kind = fd.meta.mode() & libc::S_IFMT;
    if !fd.link.starts_with('/') || (kind != libc::S_IFREG && kind != libc::S_IFDIR) {
        return Ok(());
    }
    if !mounts.contains(&fd.info.mnt_id) {
        bail!(
            "{}: {} is on a mount outside the container (mount {}): it cannot be reopened inside; hand such \
             files in as pipes",
            fd.what(),
            fd.link,
            fd.info.mnt_id
        );
    }
    Ok(())
}

/// How the container's own network namespace comes back: the one handed
/// in (external), or a new empty one.
fn network(root: i32, vpid: i32, opts: &ContainerOptions) -> Result<NetNs> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(ProcDir::new(root).path("ns/net"))?.ino();
    if let Some((_, key)) = opts.external_net.iter().find(|(i, _)| *i == ino) {
        return Ok(NetNs::External { key: key.clone() });
    }
    let theirs = ns_link(root, "net")?;
    if !opts.empty_net {
        bail!(
            "task {vpid} has a network namespace of its own: ferry does not dump network namespaces; with \
             --empty-ns net the restore gives it a new, empty one, with --external net[{ino}]:KEY it joins the \
             one handed in"
        );
    }
    if let Some(at) = pinned_at(&theirs)? {
        bail!(
            "task {vpid}: its network namespace is also mounted at {} (an external one, as a netns path in a \
             container's config): a new, empty one would not be it; name it with --external net[{ino}]:KEY",
            at.display()
        );
    }
    Ok(NetNs::Empty { lo_up: with_ns(root, "net", crate::loopback::is_up)? })
}

/// Where namespace `ns` ("net:[INO]") is bind-mounted in ferry's mount
/// namespace (`ip netns add` does that at /run/netns/NAME), if it is.
fn pinned_at(ns: &Path) -> Result<Option<PathBuf>> {
    let mounts = crate::proc::mountinfo::parse(&ProcDir::current().read("mountinfo")?)?;
    Ok(mounts.into_iter().find(|m| m.fstype == "nsfs" && m.root == ns).map(|m| m.mountpoint))
}

/// Sort every mount into how it comes back; refuse the ones that cannot.
/// `cgroups`: the root's /proc/PID/cgroup if it has a cgroup namespace.
pub fn classify(infos: &[MountInfo], opts: &ContainerOptions, cgroups: Option<&str>) -> Result<Vec<MountEntry>> {
    let ids: std::collections::HashSet<u32> = infos.iter().map(|m| m.id).collect();
    let root = infos
        .iter()
        .find(|m| m.mountpoint == Path::new("/") && !ids.contains(&m.parent))
        .context("mountinfo has no root mount")?;
    // Parents before children, whatever order the kernel listed them in.
    let mut order = vec![root];
    let mut i = 0;
    while i < order.len() {
        let id = order[i].id;
        order.extend(infos.iter().filter(|m| m.parent == id && m.id != id));
        i += 1;
    }
    if order.len() != infos.len() {
        bail!("mountinfo: {} mounts are not below the root", infos.len() - order.len());
    }
    let mut out: Vec<MountEntry> = Vec::new();
    for m in order {
        let kind = kind_of(m, &out, infos, opts, cgroups)?;
        out.push(MountEntry {
            id: m.id,
            parent: if m.id == root.id { 0 } else { m.parent },
            mountpoint: m.mountpoint.clone(),
            fstype: m.fstype.clone(),
            source: m.source.clone(),
            flags: m.flags(),
            options: m.super_options.clone(),
            dev: m.dev,
            kind,
        });
    }
    Ok(out)
}

fn kind_of(
    m: &MountInfo,
    done: &[MountEntry],
    infos: &[MountInfo],
    opts: &ContainerOptions,
    cgroups: Option<&str>,
) -> Result<MountKind> {
    if done.is_empty() {
        return Ok(MountKind::Root);
    }
    if let Some((_, key)) = opts.external.iter().find(|(p, _)| *p == m.mountpoint) {
        return Ok(MountKind::External { key: key.clone() });
    }
    // A bind of (part of) a mount already rebuilt: same filesystem, and
    // this one's root lies under that one's.
    let info = |id: u32| infos.iter().find(|i| i.id == id);
    let of = done.iter().filter_map(|d| info(d.id).map(|i| (d, i))).find(|(d, i)| {
        i.dev == m.dev && m.root.starts_with(&i.root) && !matches!(d.kind, MountKind::External { .. } | MountKind::Root)
    });
    if let Some((d, i)) = of {
        let path = m.root.strip_prefix(&i.root).expect("checked above").to_path_buf();
        return Ok(MountKind::Bind { of: d.id, path });
    }
    if cgroups.is_some_and(|c| at_namespace_root(m, c)) {
        return Ok(MountKind::Fresh);
    }
    if m.root == Path::new("/") {
        if FRESH.contains(&m.fstype.as_str()) {
            return Ok(MountKind::Fresh);
        }
        if m.fstype == "tmpfs" {
            return Ok(MountKind::Tmpfs);
        }
    }
    bail!(
        "mount {} ({} {} from {}) comes from outside the container: name it with --external mnt[{}]:KEY \
         (runc does this for its bind mounts)",
        m.mountpoint.display(),
        m.fstype,
        m.root.display(),
        m.source,
        m.mountpoint.display()
    )
}

/// Run `f` on a thread that has joined `pid`'s namespace of kind `ns`
/// (uts, ipc and net can be joined by one thread of a process).
fn with_ns<T: Send>(pid: i32, ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = std::fs::File::open(ProcDir::new(pid).path(&format!("ns/{ns}")))
        .with_context(|| format!("task {pid}: opening its {ns} namespace"))?;
    let flag = match ns {
        "uts" => nix::sched::CloneFlags::CLONE_NEWUTS,
        "ipc" => nix::sched::CloneFlags::CLONE_NEWIPC,
        "cgroup" => nix::sched::CloneFlags::CLONE_NEWCGROUP,
        _ => nix::sched::CloneFlags::CLONE_NEWNET,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(file.as_fd(), flag).with_context(|| format!("entering task {pid}'s {ns} namespace"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("reading the {ns} namespace: thread panicked"))?
    })
}

fn uts_names() -> Result<UtsNames> {
    let u = nix::sys::utsname::uname()?;
    Ok(UtsNames {
        hostname: u.nodename().to_string_lossy().into_owned(),
        domainname: u.domainname().to_string_lossy().into_owned(),
    })
}

fn check_ipc_empty() -> Result<()> {
    for kind in ["shm", "msg", "sem"] {
        let text = std::fs::read_to_string(format!("/proc/sysvipc/{kind}"))?;
        let n = text.lines().skip(1).count();
        if n > 0 {
            bail!("the container's IPC namespace has {n} SysV {kind} objects: they are not supported yet");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC: &str = "71 46 254:0 /b/rootfs / rw,relatime - ext4 /dev/vda rw\n\
        72 71 0:41 / /proc rw,relatime - proc proc rw\n\
        73 71 0:42 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n\
        74 73 0:43 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666\n\
        79 71 0:29 /ctr1 /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu\n\
        47 72 0:41 /sys /proc/sys ro,relatime - proc proc rw\n\
        52 72 0:42 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n";

    #[test]
    fn runc_mounts_sort_into_kinds() {
        let infos = crate::proc::mountinfo::parse(RUNC).unwrap();
        let opts = ContainerOptions {
            external: vec![("/sys/fs/cgroup/cpu".into(), "cpu".into()), ("/proc/keys".into(), "/dev/null".into())],
            ..Default::default()
        };
        let m = classify(&infos, &opts, None).unwrap();
        let kinds: Vec<(&str, &MountKind)> = m.iter().map(|e| (e.mountpoint.to_str().unwrap(), &e.kind)).collect();
        assert_eq!(kinds[0], ("/", &MountKind::Root));
        let find = |p: &str| kinds.iter().find(|(q, _)| *q == p).unwrap().1.clone();
        assert_eq!(find("/proc"), MountKind::Fresh);
        assert_eq!(find("/dev"), MountKind::Tmpfs);
        assert_eq!(find("/dev/pts"), MountKind::Fresh);
        assert_eq!(find("/proc/sys"), MountKind::Bind { of: 72, path: "sys".into() });
        assert_eq!(find("/proc/keys"), MountKind::External { key: "/dev/null".into() });
        assert_eq!(find("/sys/fs/cgroup/cpu"), MountKind::External { key: "cpu".into() });
        // Parents come before their children.
        let at = |p: &str| m.iter().position(|e| e.mountpoint.to_str() == Some(p)).unwrap();
        assert!(at("/proc") < at("/proc/sys") && at("/dev") < at("/dev/pts"));
        assert_eq!(m[0].parent, 0);
    }

    #[test]
    fn a_mount_from_outside_must_be_named() {
        let infos = crate::proc::mountinfo::parse(RUNC).unwrap();
        let err = classify(&infos, &ContainerOptions::default(), None).unwrap_err().to_string();
        assert!(err.contains("--external mnt[/sys/fs/cgroup/cpu]:KEY"), "{err}");
    }
}
