//! Everything that can be checked, opened and created before a process
//! exists: the images, the tree's shared objects (opened and created once,
//! in ferry), each process's fd table and mapped files, the executable,
//! the vDSO layout, which limits can be restored. A restore that fails
//! here has created no process.

use super::child::{ChildSetup, KernelSigaction, Role, TreeSetup};
use super::objects::{self, Opened};
use super::{LazyRestore, RestoreOptions};
use crate::image::chain::{Chain, MemoryView, Source};
use crate::image::inventory::ImageKind;
use crate::image::objects::{ObjectsImage, OBJECTS};
use crate::image::pagemap::PagemapImage;
use crate::image::task::{TaskImage, VmaKind};
use crate::image::tree::{ProcessState, TreeImage, TREE};
use crate::image::{task_file, ImageDir};
use crate::lazy::local::{self, Deferred};
use crate::objects::regular::reopen;
use crate::proc::limits::UNLIMITED;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use ferry_arch::{Backend, Native, NativeState};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tracing::warn;

/// One live process of the tree, ready to be rebuilt.
pub struct ProcessPlan {
    /// Index in `TreePlan::setup.processes`.
    pub index: usize,
    pub task: TaskImage,
    /// This image and its parents (pre-dumps), newest first.
    pub chain: Chain,
    /// Where every page to copy in comes from, in address order.
    pub sources: Vec<Source>,
    /// Pre-copied pages left to the lazy-pages daemon (a lazy restore).
    pub deferred: Deferred,
    /// Each thread's registers, in `task.threads` order.
    pub cpus: Vec<NativeState>,
    /// The process's fd number for each file- or object-backed VMA (by index).
    pub vma_fds: HashMap<usize, RawFd>,
    /// The System V segment (id, size) of each VMA attached with shmat (by index).
    pub vma_shmids: HashMap<usize, (i32, u64)>,
    pub exe_fd: RawFd,
    /// First helper fd in the process: everything from here on is ferry's.
    pub helpers_from: RawFd,
}

impl ProcessPlan {
    /// The newest image's pagemap (the first of the chain's).
    pub fn pagemap(&self) -> &PagemapImage {
        &self.chain.views[0].pagemap
    }
}

pub struct TreePlan {
    pub images: ImageDir,
    pub tree: TreeImage,
    pub objects: ObjectsImage,
    /// The live processes, in tree order.
    pub processes: Vec<ProcessPlan>,
    pub setup: TreeSetup,
    /// Read end of the processes' report pipe.
    pub report: OwnedFd,
    /// The shared objects, alive in ferry until the tree is complete.
    pub opened: Opened,
    /// ferry's other files (mapped files, executables, the report pipe's
    /// write end): closed once the processes have their copies.
    pub files: Vec<OwnedFd>,
    /// Group helpers: (the group's PID, its parent's PID), in the tree's namespace.
    pub group_helpers: Vec<(i32, i32)>,
    /// Directories standing for deleted cwds: removed (dropped) once the
    /// processes are in them.
    pub deleted_cwds: super::deleted_cwd::DeletedCwds,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("path {} contains a NUL byte", p.display()))
}

/// Our own [vvar]/[vvar_vclock]/[vdso] sizes must match the dumped ones:
/// the restored code will call into this kernel's vDSO at the old addresses.
fn check_vdso(task: &TaskImage) -> Result<()> {
    let ours = ProcDir::current().maps()?;
    let layout = |items: Vec<(&'static str, u64, u64)>| -> Vec<(&'static str, u64, u64)> {
        let base = items.iter().map(|i| i.1).min().unwrap_or(0);
        items.into_iter().map(|(n, s, e)| (n, s - base, e - s)).collect()
    };
    let mine = layout(
        ours.iter()
            .filter_map(|m| match m.special() {
                Some("[vdso]") => Some(("vdso", m.start, m.end)),
                Some("[vvar]") => Some(("vvar", m.start, m.end)),
                Some("[vvar_vclock]") => Some(("vvar_vclock", m.start, m.end)),
                _ => None,
            })
            .collect(),
    );
    let dumped = layout(
        task.vmas
            .iter()
            .filter_map(|v| match v.kind {
                VmaKind::Vdso => Some(("vdso", v.start, v.end)),
                VmaKind::Vvar => Some(("vvar", v.start, v.end)),
                VmaKind::VvarVclock => Some(("vvar_vclock", v.start, v.end)),
                _ => None,
            })
            .collect(),
    );
    if mine != dumped {
        bail!(
            "the vDSO of this kernel ({mine:?}) differs from the dumped one ({dumped:?}): \
             restoring across kernels with different vDSOs is not supported yet"
        );
    }
    Ok(())
}

const CAP_SYS_RESOURCE: u32 = 24;

fn has_cap(cap: u32) -> bool {
    ProcDir::current().status().map(|s| s.cap_eff & (1 << cap) != 0).unwrap_or(false)
}

/// Limits to apply; hard limits above ours cannot be raised without
/// CAP_SYS_RESOURCE, which is reported and capped.
fn rlimits(task: &TaskImage) -> Result<Vec<(u32, libc::rlimit64)>> {
    let can_raise = has_cap(CAP_SYS_RESOURCE);
    let ours = ProcDir::current().limits()?;
    let mut out = Vec::new();
    for l in &task.rlimits {
        let mine = ours.iter().find(|o| o.resource == l.resource).map(|o| o.hard).unwrap_or(UNLIMITED);
        let mut hard = l.hard;
        if !can_raise && hard > mine {
            warn!(
                "task {}: cannot restore {} hard limit {} (raising it needs CAP_SYS_RESOURCE, which ferry lacks \
                 here); keeping {}",
                task.pid,
                l.name,
                fmt_limit(l.hard),
                fmt_limit(mine)
            );
            hard = mine;
        }
        let soft = l.soft.min(hard);
        out.push((l.resource, libc::rlimit64 { rlim_cur: soft, rlim_max: hard }));
    }
    Ok(out)
}

fn fmt_limit(v: u64) -> String {
    if v == UNLIMITED {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Read and check the images (what the tree is, before anything is created).
fn read_images(opts: &RestoreOptions) -> Result<(ImageDir, TreeImage, ObjectsImage)> {
    let images = ImageDir::open(&opts.dir)?;
    let inv = &images.inventory;
    let host = <Native as Backend>::ARCH;
    if inv.arch != host {
        bail!(
            "{}: the image is for {}, this machine is {host}",
            images.path(crate::image::INVENTORY).display(),
            inv.arch
        );
    }
    if inv.page_size != crate::page_size() {
        bail!("the image uses {} byte pages, this kernel {}", inv.page_size, crate::page_size());
    }
    if inv.kind == ImageKind::PreDump {
        bail!(
            "{} holds a pre-dump (memory only, the task kept running); restore the final dump made with \
             --prev-images-dir pointing here",
            images.dir.display()
        );
    }
    let tree: TreeImage = images.read_json(TREE)?;
    let objects: ObjectsImage = images.read_json(OBJECTS)?;
    check_tree(&images, &tree, &objects)?;
    Ok((images, tree, objects))
}

/// The tree must be one: a root, parents before children, ids that exist.
fn check_tree(images: &ImageDir, tree: &TreeImage, objects: &ObjectsImage) -> Result<()> {
    let bad = |why: String| -> anyhow::Error { anyhow::anyhow!("{}: {why}", images.path(TREE).display()) };
    let first = tree.processes.first().ok_or_else(|| bad("no processes".into()))?;
    if first.pid != tree.root || first.state != ProcessState::Alive {
        return Err(bad(format!("the first process is {}, not the live root {}", first.pid, tree.root)));
    }
    for (i, p) in tree.processes.iter().enumerate() {
        if p.pid <= 0 || (p.pid == 1 && !tree.pid_ns) {
            return Err(bad(format!("process {} cannot be restored at that PID", p.pid)));
        }
        if tree.processes[..i].iter().any(|q| q.pid == p.pid) {
            return Err(bad(format!("process {} is listed twice", p.pid)));
        }
        if i > 0 && !tree.processes[..i].iter().any(|q| q.pid == p.ppid) {
            return Err(bad(format!("process {}: its parent {} is not listed before it", p.pid, p.ppid)));
        }
        if p.state == ProcessState::Alive && p.threads.first() != Some(&p.pid) {
            return Err(bad(format!("process {}: its main thread is not listed first", p.pid)));
        }
    }
    if images.inventory.root_pid != tree.root {
        return Err(bad(format!("the inventory's root is {}, the tree's {}", images.inventory.root_pid, tree.root)));
    }
    for (i, f) in objects.files.iter().enumerate() {
        if f.id != i as u32 {
            bail!("{}: file objects are not numbered in order", images.path(OBJECTS).display());
        }
    }
    for (i, m) in objects.memory.iter().enumerate() {
        if m.id != i as u32 {
            bail!("{}: memory objects are not numbered in order", images.path(OBJECTS).display());
        }
    }
    Ok(())
}

/// One live process: its images and what to open for it.
struct Loaded {
    task: TaskImage,
    chain: Chain,
    sources: Vec<Source>,
    deferred: Deferred,
    cpus: Vec<NativeState>,
}

fn load(images: &ImageDir, pid: i32, opts: &RestoreOptions) -> Result<Loaded> {
    let task: TaskImage = images.read_json(&task_file(pid))?;
    if task.pid != pid || task.threads.first().map(|t| t.tid) != Some(pid) {
        bail!("{}: not the image of task {pid} and its main thread", images.path(&task_file(pid)).display());
    }
    let pagemap = images.read_pagemap(pid)?;
    tracing::debug!(pid, "task and pagemap read");
    let chain = Chain::from_view(MemoryView::with_pagemap(images.clone(), pagemap)?, pid)?;
    tracing::debug!(pid, images = chain.views.len(), "page images opened");
    let lazy_pages: u64 = chain.views[0]
        .pagemap
        .entries
        .iter()
        .filter(|e| e.flags == crate::image::pagemap::PageFlags::Lazy)
        .map(|e| e.nr_pages)
        .sum();
    if lazy_pages > 0 && opts.lazy.is_none() {
        bail!(
            "the image left {lazy_pages} pages of task {pid} on the source (a lazy dump): restore with --lazy-pages, \
             with `ferry lazy-pages` running"
        );
    }
    // A process with lazy pages has a daemon filling its memory anyway:
    // the pages pre-copy already brought here can wait for it too.
    let (sources, deferred) = if lazy_pages == 0 {
        (chain.sources()?, Deferred::Sources(Vec::new()))
    } else if opts.lazy == Some(LazyRestore::Daemon) {
        local::split_unresolved(&task, &chain)?
    } else {
        let (eager, deferred) = local::split(&task, &chain, chain.sources()?)?;
        (eager, Deferred::Sources(deferred))
    };
    tracing::debug!(pid, placed = sources.len(), deferred = deferred.len(), "page sources found");
    let cpus = task
        .threads
        .iter()
        .map(|t| {
            Native::unwrap(t.cpu.clone())
                .with_context(|| format!("{} thread {}", images.path(&task_file(pid)).display(), t.tid))
        })
        .collect::<Result<_>>()?;
    check_vdso(&task)?;
    Ok(Loaded { task, chain, sources, deferred, cpus })
}

pub fn prepare(opts: &RestoreOptions, ptys: super::pty::PtyMasters) -> Result<TreePlan> {
    tracing::debug!("reading images");
    let (images, tree, objects) = read_images(opts)?;
    tracing::debug!(processes = tree.processes.len(), "tree and objects read");
    let mut loaded = HashMap::new();
    let mut deleted_cwds = super::deleted_cwd::DeletedCwds::default();
    for p in tree.alive() {
        let mut l = load(&images, p.pid, opts)?;
        if let Some(d) = &l.task.fs.cwd_deleted {
            l.task.fs.cwd = deleted_cwds.make(&l.task.fs.cwd, d).with_context(|| format!("task {}", p.pid))?;
        }
        loaded.insert(p.pid, l);
    }
    let root_task = &loaded[&tree.root].task;
    let leads_session = root_task.ids.sid == tree.root;
    if !leads_session && !opts.shell_job {
        bail!("task {} was dumped as part of session {}; restore it with --shell-job", tree.root, root_task.ids.sid);
    }
    let tables = loaded.iter().map(|(pid, l)| (*pid, l.task.fds.iter().map(|f| (f.fd, f.file)).collect())).collect();
    let opened = objects::open_all(&images, &objects, opts, leads_session, &tables, ptys)?;
    match place(images, tree, objects, loaded, &opened) {
        Ok(parts) => Ok(parts.with(opened, deleted_cwds)),
        Err(e) => {
            opened.discard();
            Err(e)
        }
    }
}

/// Lay out each process's fds and helpers, and the setup the forked
/// processes run.
fn place(
    images: ImageDir,
    tree: TreeImage,
    objects: ObjectsImage,
    mut loaded: HashMap<i32, Loaded>,
    opened: &Opened,
) -> Result<Placed> {
    let mut helpers: Vec<OwnedFd> = Vec::new();
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let report_fd = report_w.as_raw_fd();
    helpers.push(report_w);

    // Per process: the ferry fds it keeps (dumped fds, then its helpers),
    // where each dumped fd goes, which helper each mapped area uses.
    struct Layout {
        sources: Vec<RawFd>,
        targets: Vec<(RawFd, bool)>,
        ctty: Option<usize>,
        reopen: Vec<(RawFd, std::ffi::CString, i32)>,
        vma_helper: HashMap<usize, usize>,
        vma_shmids: HashMap<usize, (i32, u64)>,
        exe_helper: usize,
    }
    let mut layouts: HashMap<i32, Layout> = HashMap::new();
    for p in tree.alive() {
        let l = &loaded[&p.pid];
        let task = &l.task;
        let pid = task.pid;
        let mut sources = Vec::new();
        let mut targets = Vec::new();
        let mut ctty = None;
        let mut own_opens = Vec::new();
        for fd in &task.fds {
            let file = objects
                .file(fd.file)
                .with_context(|| format!("task {pid} fd {}: no file object {}", fd.fd, fd.file))?;
            let kind = crate::objects::file_kind(&file.kind)?;
            if let Some(rdev) = kind.tty_rdev(file) {
                if task.ids.sid == pid && task.ids.tty_nr != 0 && u64::from(task.ids.tty_nr) == rdev && ctty.is_none() {
                    ctty = Some(targets.len());
                }
            }
            if let Some(path) = kind.reopen_in_process(file) {
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                    .with_context(|| format!("task {pid} fd {}: a path with a NUL", fd.fd))?;
                let mut flags = crate::objects::regular::reopen_flags(file.flags) | libc::O_NOCTTY;
                if fd.cloexec {
                    flags |= libc::O_CLOEXEC;
                }
                own_opens.push((fd.fd, c, flags));
            }
            sources.push(opened.files[&fd.file].as_raw_fd());
            targets.push((fd.fd, fd.cloexec));
        }
        // Helpers: each mapped file or memory object once, and the executable.
        let nfds = sources.len();
        let mut by_key: HashMap<(String, bool), usize> = HashMap::new();
        let mut vma_helper = HashMap::new();
        let mut vma_shmids = HashMap::new();
        for (i, v) in task.vmas.iter().enumerate() {
            let rw = v.shared() && v.may_write;
            let (key, fd) = match &v.kind {
                VmaKind::File { file, .. } => {
                    let key = (file.path.to_string_lossy().into_owned(), rw);
                    if let Some(h) = by_key.get(&key) {
                        vma_helper.insert(i, *h);
                        continue;
                    }
                    let what = format!("task {pid} mapping {:#x}-{:#x}", v.start, v.end);
                    let f = reopen(file, if rw { libc::O_RDWR } else { libc::O_RDONLY }, &what, true)?;
                    let fd = OwnedFd::from(f);
                    let raw = fd.as_raw_fd();
                    helpers.push(fd);
                    (key, raw)
                }
                VmaKind::Object { object, .. } => {
                    let created = opened
                        .memory
                        .get(object)
                        .with_context(|| format!("task {pid} mapping {:#x}: no memory object {object}", v.start))?;
                    if let Some(id) = created.shmid {
                        let size = objects.memory(*object).map(|m| m.size).unwrap_or(0);
                        vma_shmids.insert(i, (id, size));
                        continue;
                    }
                    let key = (format!("object {object}"), false);
                    if let Some(h) = by_key.get(&key) {
                        vma_helper.insert(i, *h);
                        continue;
                    }
                    (key, created.fd.as_ref().expect("memory objects without an fd are segments").as_raw_fd())
                }
                _ => continue,
            };
            let h = sources.len() - nfds;
            sources.push(fd);
            by_key.insert(key, h);
            vma_helper.insert(i, h);
        }
        let exe = reopen(&task.mm.exe, libc::O_RDONLY, &format!("task {pid} executable"), true)?;
        let exe_fd = OwnedFd::from(exe);
        let exe_helper = sources.len() - nfds;
        sources.push(exe_fd.as_raw_fd());
        helpers.push(exe_fd);
        layouts.insert(pid, Layout { sources, targets, ctty, reopen: own_opens, vma_helper, vma_shmids, exe_helper });
    }

    // Staged copies go above every fd any process keeps and every dumped
    // number: dup2 over any other fd a process inherited only closes it
    // early (each closes all it does not keep).
    let stage_base = layouts
        .values()
        .flat_map(|l| l.targets.iter().map(|t| t.0).chain(l.sources.iter().copied()))
        .chain(std::iter::once(report_fd))
        .max()
        .unwrap_or(2)
        + 1;
    let (_, nofile_hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .context("getrlimit(RLIMIT_NOFILE)")?;
    let most = layouts.values().map(|l| l.sources.len()).max().unwrap_or(0);
    let needed = (stage_base as u64) + most as u64 + 1;
    if needed > nofile_hard {
        bail!(
            "the tree needs fd numbers up to {needed}, above ferry's open-files limit {nofile_hard}; raise it (ulimit -Hn)"
        );
    }

    let index_of: HashMap<i32, usize> = tree.processes.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let mut setups = Vec::new();
    let mut processes = Vec::new();
    for (i, p) in tree.processes.iter().enumerate() {
        let children: Vec<usize> = tree.children(p.pid).map(|c| index_of[&c.pid]).collect();
        let setsid = p.sid == p.pid;
        let layout = layouts.remove(&p.pid);
        let Some(l) = layout else {
            let mut z = ChildSetup::placeholder(Role::Zombie, p.pid, p.exit_signal, children, setsid);
            z.name = comm_bytes(&p.comm);
            setups.push(z);
            continue;
        };
        let Loaded { task, chain, sources, deferred, cpus } =
            loaded.remove(&p.pid).expect("every live process is loaded");
        let helper_fd = |h: usize| stage_base + (l.targets.len() + h) as RawFd;
        let name = comm_bytes(&task.comm);
        let root = (task.fs.root != Path::new("/")).then(|| cstring(&task.fs.root)).transpose()?;
        setups.push(ChildSetup {
            pid: p.pid,
            exit_signal: p.exit_signal,
            children,
            role: Role::Process,
            setsid,
            sources: l.sources,
            targets: l.targets.clone(),
            ctty: l.ctty,
            reopen: l.reopen.clone(),
            cwd: cstring(&task.fs.cwd)?,
            root,
            umask: task.fs.umask,
            personality: task.personality,
            rlimits: rlimits(&task)?,
            sigactions: task
                .sigactions
                .iter()
                .map(|a| {
                    let k = KernelSigaction { handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask };
                    (a.signo, k)
                })
                .collect(),
            name,
        });
        processes.push(ProcessPlan {
            index: i,
            vma_fds: l.vma_helper.iter().map(|(&v, &h)| (v, helper_fd(h))).collect(),
            vma_shmids: l.vma_shmids,
            exe_fd: helper_fd(l.exe_helper),
            helpers_from: helper_fd(0),
            task,
            chain,
            sources,
            deferred,
            cpus,
        });
    }
    let group_helpers = group_helpers(&tree, &mut setups);
    let ferry_pid = if tree.pid_ns { 0 } else { std::process::id() as i32 };
    let setup = TreeSetup { report_fd, stage_base, nofile_hard, ferry_pid, processes: setups, container: None };
    Ok(Placed { images, tree, objects, processes, setup, report: report_r, files: helpers, group_helpers })
}

/// A task name as PR_SET_NAME takes it: 15 bytes and a NUL.
fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut name = [0u8; 16];
    let n = comm.len().min(15);
    name[..n].copy_from_slice(&comm.as_bytes()[..n]);
    name
}

/// A process group whose leader had exited (not part of the tree, and
/// not the ferry's-shell group of a `--shell-job` root) needs a process
/// with the leader's PID while its members join it: a helper, forked by
/// the first member's parent (so it is in their session).
fn group_helpers(tree: &TreeImage, setups: &mut Vec<ChildSetup>) -> Vec<(i32, i32)> {
    let root = &tree.processes[0];
    let external = |g: i32| g == root.pgid && g != root.pid && tree.get(g).is_none();
    let mut out: Vec<(i32, i32)> = Vec::new();
    for p in tree.processes.iter().skip(1) {
        let g = p.pgid;
        if g == p.pid || tree.get(g).is_some() || external(g) || out.iter().any(|h| h.0 == g) {
            continue;
        }
        let parent = tree.processes.iter().position(|q| q.pid == p.ppid).expect("parents are listed");
        let helper = setups.len();
        setups[parent].children.push(helper);
        setups.push(ChildSetup::placeholder(Role::GroupHelper, g, 0, Vec::new(), false));
        out.push((g, p.ppid));
    }
    out
}

/// A plan but for the objects, which the caller keeps (to discard them
/// if placing fails).
struct Placed {
    images: ImageDir,
    tree: TreeImage,
    objects: ObjectsImage,
    processes: Vec<ProcessPlan>,
    setup: TreeSetup,
    report: OwnedFd,
    files: Vec<OwnedFd>,
    group_helpers: Vec<(i32, i32)>,
}

impl Placed {
    fn with(self, opened: Opened, deleted_cwds: super::deleted_cwd::DeletedCwds) -> TreePlan {
        let Placed { images, tree, objects, processes, setup, report, files, group_helpers } = self;
        TreePlan { images, tree, objects, processes, setup, report, opened, files, group_helpers, deleted_cwds }
    }
}
