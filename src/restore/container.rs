//! A container's namespaces, rebuilt around its tree.
//!
//! One thread of ferry (the stage) leaves ferry's mount namespace for a
//! private copy and rebuilds the container's mounts there under a staging
//! directory: the root from `--root`, external mounts from `--external`,
//! tmpfs mounts with their contents, devpts. ferry opens the tree's files
//! through that staging root (see [`super::paths`]), so they belong to the
//! mounts the container keeps. The stage then forks the tree's root in the
//! same mount namespace, with new PID, UTS, IPC and network namespaces as
//! the image says. The root mounts what only a process inside those can
//! (proc, sysfs, mqueue, and everything below them), pivots into the
//! staging root and drops the rest of ferry's namespace ([`ChildMounts`]).
//!
//! ferry's other threads never change namespace; the stage thread lives
//! until the restore is over, since the root dies with it (PDEATHSIG) until
//! the restore sets the dumped death signal.

use super::fork::Forked;
use crate::image::container::{tmpfs_data, tmpfs_index, ContainerImage, MountEntry, MountKind, NetNs, TmpfsEntry};
use crate::image::ImageDir;
use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, MsFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;

/// What the caller tells the restore about the container.
#[derive(Clone, Debug, Default)]
pub struct ContainerRestore {
    /// `--root`: the directory that becomes the container's "/".
    pub root: Option<PathBuf>,
    /// `--external mnt[KEY]:PATH`: what each external mount is now.
    pub external: HashMap<String, PathBuf>,
    /// `--restore-sibling`: the root becomes the caller's child, not ferry's.
    pub sibling: bool,
    /// `orphan_pts_master` over RPC: who gets the masters of the tree's
    /// terminals whose master was outside it.
    pub orphan_pts_master: Option<super::pty::HandOver>,
}

/// One mount(2) call the root makes (raw, prepared here).
pub struct MountCall {
    pub source: Option<CString>,
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: u64,
    pub data: Option<CString>,
}

/// What the tree's root does before anything else (see [`super::child`]).
pub struct ChildMounts {
    pub calls: Vec<MountCall>,
    /// The staging root it pivots into.
    pub new_root: CString,
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
}

impl ChildMounts {
    pub fn describe(&self, i: usize) -> String {
        match self.calls.get(i) {
            Some(c) => format!(
                "mounting {} on {}",
                c.fstype.as_ref().or(c.source.as_ref()).map(|s| s.to_string_lossy()).unwrap_or_default(),
                c.target.to_string_lossy()
            ),
            None => "mounting".into(),
        }
    }
}

enum Request {
    Fork { pid: i32, flags: u64, wait: std::time::Duration, setup: SetupPtr, reply: mpsc::Sender<Result<Forked>> },
}

/// The tree's setup, read by the forked child only (a copy of our memory).
struct SetupPtr(*const super::child::TreeSetup);
// SAFETY: the pointer is only dereferenced in the forked child, while the
// sending thread waits for the answer with the setup borrowed.
unsafe impl Send for SetupPtr {}

/// The staged mount tree and the thread that owns its namespace.
pub struct Stage {
    pub image: ContainerImage,
    /// O_PATH fd of the staging root (in the private namespace).
    pub root: OwnedFd,
    /// The container's new network namespace, if it has one.
    net: Option<OwnedFd>,
    pub child: Option<ChildMounts>,
    /// Terminals made while staging (the console's bind mount needs its
    /// pts to exist), for the files that open them.
    pub ptys: super::pty::PtyMasters,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The staging directory, removed once the thread has ended.
    dir: Option<tempfile::TempDir>,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from the kernel have no NUL")
}

fn inside(base: &Path, p: &Path) -> PathBuf {
    base.join(p.strip_prefix("/").unwrap_or(p))
}

impl Stage {
    /// None for a tree that shares ferry's mount namespace.
    /// `inherited`: the restore's `--inherit-fd` descriptors (an external
    /// network namespace is one).
    pub fn start(
        images: &ImageDir,
        opts: &ContainerRestore,
        inherited: &HashMap<String, std::os::fd::RawFd>,
    ) -> Result<Option<Stage>> {
        if images.entry(crate::image::container::CONTAINER).is_err() {
            return Ok(None);
        }
        let image: ContainerImage = images.read_json(crate::image::container::CONTAINER)?;
        let root = opts.root.clone().context(
            "the image is of a container (a mount namespace of its own): --root DIR says where its root filesystem is",
        )?;
        let plain = |p: &Path| p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        for m in &image.mounts {
            let bind_path = match &m.kind {
                MountKind::Bind { path, .. } => path.is_relative() && plain(path),
                _ => true,
            };
            if !(m.mountpoint.is_absolute() && plain(&m.mountpoint) && bind_path) {
                bail!(
                    "{}: mount {} is not a plain path inside the container",
                    images.path(crate::image::container::CONTAINER).display(),
                    m.mountpoint.display()
                );
            }
            if let MountKind::External { key } = &m.kind {
                if !opts.external.contains_key(key) {
                    bail!(
                        "mount {} is external ({key}): say what it is now with --external mnt[{key}]:PATH",
                        m.mountpoint.display()
                    );
                }
            }
        }
        let join_net = match &image.net {
            Some(NetNs::External { key }) => {
                let fd = inherited.get(key).with_context(|| {
                    format!("the container's network namespace is external ({key}): hand it in with --inherit-fd fd[N]:{key}")
                })?;
                // SAFETY: an open descriptor handed to ferry (checked when parsed); dup'ed, not taken.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                Some(borrowed.try_clone_to_owned().context("dup of the network namespace's descriptor")?)
            }
            _ => None,
        };
        let mut tmpfs = HashMap::new();
        for m in image.mounts.iter().filter(|m| m.kind == MountKind::Tmpfs) {
            let entries: Vec<TmpfsEntry> = images.read_json(&tmpfs_index(m.id))?;
            let data = images.read_verified(&tmpfs_data(m.id))?;
            tmpfs.insert(m.id, (entries, data));
        }
        // Once the images are read: a new directory of its own (mode 0700),
        // removed with the stage.
        let base = tempfile::Builder::new()
            .prefix("ferry-container-")
            .tempdir()
            .context("creating the container's staging directory")?;
        let staging = base.path().join("root");
        let side = base.path().join("side");
        for d in [&staging, &side] {
            std::fs::DirBuilder::new().mode(0o700).create(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Staged>>();
        let work = Work { image: image.clone(), root, external: opts.external.clone(), staging, side, tmpfs, join_net };
        let thread = std::thread::Builder::new()
            .name("ferry-container".into())
            .spawn(move || {
                let staged = work.stage();
                let failed = staged.is_err();
                let _ = ready_tx.send(staged);
                if failed {
                    return;
                }
                for req in rx {
                    match req {
                        Request::Fork { pid, flags, wait, setup, reply } => {
                            match super::fork::fork_with(pid, flags, wait) {
                                Ok(None) => {
                                    // SAFETY: see SetupPtr; we are the forked child.
                                    super::child::run(unsafe { &*setup.0 })
                                }
                                r => {
                                    let _ = reply.send(r.map(|f| f.expect("the parent has the child")));
                                }
                            }
                        }
                    }
                }
            })
            .context("starting the container's thread")?;
        let staged = ready_rx.recv().map_err(|_| anyhow!("the container's thread ended")).and_then(|r| r);
        let Staged { root, net, child, ptys } = match staged {
            Ok(s) => s,
            Err(e) => {
                drop(tx);
                let _ = thread.join();
                drop(base);
                return Err(e.context("rebuilding the container's mounts"));
            }
        };
        let child = Some(child);
        Ok(Some(Stage { image, root, net, child, ptys, requests: Some(tx), thread: Some(thread), dir: Some(base) }))
    }

    /// Fork the tree's root inside the staged namespace with clone
    /// `flags` ([`super::fork::root_flags`]); Ok(None) never comes back
    /// here (the child runs the tree's setup).
    pub fn fork(
        &self,
        pid: i32,
        flags: u64,
        wait: std::time::Duration,
        setup: &super::child::TreeSetup,
    ) -> Result<Forked> {
        let (reply, answer) = mpsc::channel();
        let req = Request::Fork { pid, flags, wait, setup: SetupPtr(setup), reply };
        self.requests
            .as_ref()
            .expect("until dropped")
            .send(req)
            .map_err(|_| anyhow!("the container's thread ended"))?;
        answer.recv().map_err(|_| anyhow!("the container's thread ended"))?
    }
}

/// The calling thread, in the container's network namespace until dropped.
pub struct InNet {
    back: OwnedFd,
}

impl Stage {
    /// Move the calling thread into the container's network namespace
    /// (None if it has none of its own): the sockets ferry creates for the
    /// tree belong there.
    pub fn in_net(&self) -> Result<Option<InNet>> {
        let Some(net) = &self.net else { return Ok(None) };
        let back = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?);
        nix::sched::setns(net, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the container's network namespace")?;
        Ok(Some(InNet { back }))
    }
}

impl Drop for InNet {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.back, nix::sched::CloneFlags::CLONE_NEWNET) {
            tracing::error!("returning to ferry's network namespace: {e}");
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // From ferry's own namespace, where it is a plain directory.
        drop(self.dir.take());
    }
}

/// What staging made: the staged root (O_PATH), the network namespace,
/// the root's mounts, terminals.
struct Staged {
    root: OwnedFd,
    net: Option<OwnedFd>,
    child: ChildMounts,
    ptys: super::pty::PtyMasters,
}

/// What the stage thread needs (moved into it).
struct Work {
    image: ContainerImage,
    root: PathBuf,
    external: HashMap<String, PathBuf>,
    staging: PathBuf,
    side: PathBuf,
    tmpfs: HashMap<u32, (Vec<TmpfsEntry>, Vec<u8>)>,
    /// The external network namespace to join.
    join_net: Option<OwnedFd>,
}

/// proc, sysfs and mqueue belong to the PID, network and IPC namespaces of
/// whoever mounts them, cgroup filesystems are rooted at its cgroup
/// namespace's root: the root mounts them, and what lies below them.
fn needs_the_root(m: &MountEntry, late: &HashSet<u32>) -> bool {
    late.contains(&m.parent)
        || (m.kind == MountKind::Fresh
            && matches!(m.fstype.as_str(), "proc" | "sysfs" | "mqueue" | "cgroup" | "cgroup2"))
        || matches!(m.kind, MountKind::Bind { of, .. } if late.contains(&of))
}

impl Work {
    fn stage(&self) -> Result<Staged> {
        use nix::sched::{unshare, CloneFlags};
        unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS) for the container")?;
        // Before anything is mounted or unmounted here (the root's pivot
        // detaches this whole copy): nothing may propagate to ferry's.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .context("making ferry's copy of the mounts private")?;
        // The network namespace first: ferry creates the tree's sockets in
        // it (see [`Stage::in_net`]).
        let net = match &self.image.net {
            Some(NetNs::Empty { lo_up }) => {
                unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET) for the container")?;
                if *lo_up {
                    crate::loopback::set_up()?;
                }
                Some(OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?))
            }
            Some(NetNs::External { key }) => {
                let fd = self.join_net.as_ref().expect("opened with the key");
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("joining the network namespace handed in as {key}"))?;
                Some(OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?))
            }
            None => None,
        };
        let at = |id: u32| self.image.mounts.iter().find(|m| m.id == id).map(|m| inside(&self.staging, &m.mountpoint));
        let mut late = HashSet::new();
        let mut calls = Vec::new();
        let mut ptys = super::pty::PtyMasters::default();
        for m in &self.image.mounts {
            let target = inside(&self.staging, &m.mountpoint);
            let source = match &m.kind {
                MountKind::Root => Some(self.root.clone()),
                MountKind::External { key } => Some(self.external[key].clone()),
                MountKind::Bind { of, path } => Some(at(*of).context("bind of an unknown mount")?.join(path)),
                MountKind::Fresh | MountKind::Tmpfs => None,
            };
            let flags = m.flags;
            if needs_the_root(m, &late) {
                late.insert(m.id);
                let (source, fstype, data, bind) = match (&m.kind, source) {
                    (MountKind::Tmpfs, _) => {
                        // Filled here, bound into place by the root.
                        let side = self.side.join(m.id.to_string());
                        std::fs::create_dir(&side)?;
                        self.tmpfs_mount(m, &side)?;
                        (Some(side), None, None, true)
                    }
                    (MountKind::Fresh, _) => (Some(PathBuf::from(&m.source)), Some(&m.fstype), Some(&m.options), false),
                    (_, source) => (source, None, None, true),
                };
                if bind {
                    calls.push(MountCall {
                        source: source.as_deref().map(cstr),
                        target: cstr(&target),
                        fstype: None,
                        flags: libc::MS_BIND,
                        data: None,
                    });
                    calls.push(MountCall {
                        source: None,
                        target: cstr(&target),
                        fstype: None,
                        flags: libc::MS_BIND | libc::MS_REMOUNT | flags,
                        data: None,
                    });
                } else {
                    calls.push(MountCall {
                        source: source.as_deref().map(cstr),
                        target: cstr(&target),
                        fstype: fstype.map(|f| CString::new(f.as_str()).expect("no NUL")),
                        flags,
                        data: data.map(|d| CString::new(d.as_str()).expect("no NUL")),
                    });
                }
                continue;
            }
            match m.kind {
                MountKind::Tmpfs => self.tmpfs_mount(m, &target)?,
                MountKind::Fresh => mount(
                    Some(m.source.as_str()),
                    &target,
                    Some(m.fstype.as_str()),
                    ms(flags),
                    Some(m.options.as_str()),
                )
                .with_context(|| format!("mounting {} on {}", m.fstype, m.mountpoint.display()))?,
                _ => {
                    let source = source.expect("set for binds");
                    if let MountKind::Bind { of, path } = &m.kind {
                        self.make_pty(*of, path, &source, &mut ptys)?;
                    }
                    mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                        .with_context(|| format!("binding {} on {}", source.display(), m.mountpoint.display()))?;
                    mount(
                        None::<&str>,
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ms(flags),
                        None::<&str>,
                    )
                    .with_context(|| format!("setting the flags of {}", m.mountpoint.display()))?;
                }
            }
        }
        let root = std::fs::File::open(&self.staging).context("opening the staged root")?;
        let child = ChildMounts {
            calls,
            new_root: cstr(&self.staging),
            hostname: self.image.uts.as_ref().map(|u| CString::new(u.hostname.as_str()).expect("no NUL")),
            domainname: self.image.uts.as_ref().map(|u| CString::new(u.domainname.as_str()).expect("no NUL")),
        };
        Ok(Staged { root: root.into(), net, child, ptys })
    }

    /// A bind of /dev/pts/N (runc's /dev/console) needs pts N to exist:
    /// made here, its master kept for the file that opens it.
    fn make_pty(&self, of: u32, path: &Path, source: &Path, ptys: &mut super::pty::PtyMasters) -> Result<()> {
        let Some(devpts) = self.image.mounts.iter().find(|d| d.id == of && d.fstype == "devpts") else {
            return Ok(());
        };
        let Some(index) = path.to_str().and_then(|n| n.parse::<u32>().ok()) else { return Ok(()) };
        if source.exists() {
            return Ok(());
        }
        let ptmx = inside(&self.staging, &devpts.mountpoint).join("ptmx");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&ptmx)
                .map(OwnedFd::from)
        };
        let master = super::pty::at_index(index, open)
            .with_context(|| format!("making pts {index} for the bind mount on {}", source.display()))?;
        ptys.keep(&devpts.mountpoint, index, master);
        Ok(())
    }

    /// A new tmpfs at `target` with the dumped contents, then made
    /// read-only as it was (the filesystem, then the mount).
    fn tmpfs_mount(&self, m: &MountEntry, target: &Path) -> Result<()> {
        let what = || format!("tmpfs on {}", m.mountpoint.display());
        let sb_ro = m.options.split(',').any(|o| o == "ro");
        let options: Vec<&str> = m.options.split(',').filter(|o| !matches!(*o, "ro" | "rw")).collect();
        let options = options.join(",");
        let writable = ms(m.flags) & !MsFlags::MS_RDONLY;
        mount(Some(m.source.as_str()), target, Some("tmpfs"), writable, Some(options.as_str())).with_context(what)?;
        let (entries, data) = &self.tmpfs[&m.id];
        super::tmpfs::fill(target, entries, data).with_context(what)?;
        if sb_ro {
            mount(None::<&str>, target, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, Some(options.as_str()))
                .with_context(what)?;
        }
        mount(None::<&str>, target, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | ms(m.flags), None::<&str>)
            .with_context(what)?;
        Ok(())
    }
}

fn ms(flags: u64) -> MsFlags {
    MsFlags::from_bits_truncate(flags)
}

/// Raw, for the forked root (no allocation): the container's own mounts,
/// the pivot into its root, its names and loopback. Returns the index of
/// the failed step's call and which step, with errno set.
///
/// # Safety
/// Only plain syscalls on prepared strings.
pub unsafe fn enter(c: &ChildMounts) -> Result<(), (super::child::Step, usize)> {
    use super::child::Step;
    let opt = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    for (i, call) in c.calls.iter().enumerate() {
        let data = opt(&call.data).cast::<libc::c_void>();
        if libc::mount(opt(&call.source), call.target.as_ptr(), opt(&call.fstype), call.flags as libc::c_ulong, data)
            != 0
        {
            return Err((Step::Mount, i));
        }
    }
    let dot = c".";
    if libc::chdir(c.new_root.as_ptr()) != 0
        || libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0
        || libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0
        || libc::chdir(c"/".as_ptr()) != 0
    {
        return Err((Step::PivotRoot, 0));
    }
    if let Some(h) = &c.hostname {
        if libc::sethostname(h.as_ptr(), h.as_bytes().len()) != 0 {
            return Err((Step::Hostname, 0));
        }
    }
    if let Some(d) = &c.domainname {
        if libc::setdomainname(d.as_ptr(), d.as_bytes().len()) != 0 {
            return Err((Step::Hostname, 1));
        }
    }
    Ok(())
}
