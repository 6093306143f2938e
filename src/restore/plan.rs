//! Everything that can be checked and opened before a process exists: the
//! images, the files the task had open or mapped, the executable, the vDSO
//! layout, which limits can be restored. A restore that fails here has
//! created nothing.

use super::child::{ChildSetup, KernelSigaction};
use super::RestoreOptions;
use crate::image::chain::{Chain, Source};
use crate::image::inventory::ImageKind;
use crate::image::pagemap::PagemapImage;
use crate::image::task::{FdKind, FileId, TaskImage, VmaKind};
use crate::image::{pagemap_file, task_file, ImageDir};
use crate::proc::limits::UNLIMITED;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use ferry_arch::{Backend, Native, NativeState};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tracing::warn;

pub struct Plan {
    pub images: ImageDir,
    pub task: TaskImage,
    pub pagemap: PagemapImage,
    /// This image and its parents (pre-dumps), newest first.
    pub chain: Chain,
    /// Where every page to copy in comes from, in address order.
    pub sources: Vec<Source>,
    pub cpu: NativeState,
    pub setup: ChildSetup,
    /// The child's fd number for each file-backed VMA (by VMA index).
    pub vma_fds: HashMap<usize, RawFd>,
    pub exe_fd: RawFd,
    /// First helper fd in the child: everything from here on is ferry's.
    pub helpers_from: RawFd,
    /// Read end of the child's report pipe.
    pub report: OwnedFd,
    /// Parent-side files that must stay open until the child has its copies.
    pub opened: Vec<File>,
}

fn open_flags(flags: u32) -> i32 {
    // Creation-time flags make no sense when reopening.
    (flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC)
}

/// Open a file the task used and check it is still the same one.
fn reopen(id: &FileId, flags: i32, what: &str, strict_size: bool) -> Result<File> {
    let f = OpenOptions::new()
        .custom_flags(flags & !libc::O_ACCMODE)
        .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .open(&id.path)
        .with_context(|| format!("{what}: opening {}", id.path.display()))?;
    let meta = f.metadata().with_context(|| format!("{what}: stat {}", id.path.display()))?;
    if meta.dev() == id.dev && meta.ino() != id.ino {
        bail!("{what}: {} was replaced since the dump (inode {} is now {})", id.path.display(), id.ino, meta.ino());
    }
    if meta.size() != id.size {
        if strict_size {
            bail!("{what}: {} changed size since the dump ({} bytes, now {})", id.path.display(), id.size, meta.size());
        }
        warn!("{what}: {} changed size since the dump ({} bytes, now {})", id.path.display(), id.size, meta.size());
    }
    Ok(f)
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

/// Limits to apply in the child; hard limits above ours cannot be raised
/// without CAP_SYS_RESOURCE, which is reported and capped.
fn rlimits(task: &TaskImage) -> Result<Vec<(u32, libc::rlimit64)>> {
    let can_raise = has_cap(CAP_SYS_RESOURCE);
    let ours = ProcDir::current().limits()?;
    let mut out = Vec::new();
    for l in &task.rlimits {
        let mine = ours.iter().find(|o| o.resource == l.resource).map(|o| o.hard).unwrap_or(UNLIMITED);
        let mut hard = l.hard;
        if !can_raise && hard > mine {
            warn!(
                "cannot restore {} hard limit {} (raising it needs CAP_SYS_RESOURCE, which ferry lacks here); keeping {}",
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

pub fn prepare(opts: &RestoreOptions) -> Result<Plan> {
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
    let pid = inv.root_pid;
    let task: TaskImage = images.read_json(&task_file(pid))?;
    let pagemap: PagemapImage = images.read_json(&pagemap_file(pid))?;
    let chain = Chain::open(images.clone())?;
    let lazy_pages: u64 =
        pagemap.entries.iter().filter(|e| e.flags == crate::image::pagemap::PageFlags::Lazy).map(|e| e.nr_pages).sum();
    if lazy_pages > 0 && opts.lazy.is_none() {
        bail!(
            "the image left {lazy_pages} pages on the source (a lazy dump): restore with --lazy-pages, \
             with `ferry lazy-pages` running"
        );
    }
    let page_sources = chain.sources()?;
    let cpu = Native::unwrap(task.cpu.clone()).with_context(|| images.path(&task_file(pid)).display().to_string())?;
    check_vdso(&task)?;

    let mut opened: Vec<File> = Vec::new();
    let mut targets = Vec::new();
    let mut ctty = None;
    let tty_of_ferry = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    for fd in &task.fds {
        let what = format!("task {pid} fd {}", fd.fd);
        let flags = open_flags(fd.flags);
        let file = match &fd.kind {
            FdKind::File { file, pos } => {
                let f = reopen(file, flags, &what, false)?;
                nix::unistd::lseek(&f, *pos as i64, nix::unistd::Whence::SeekSet)
                    .with_context(|| format!("{what}: seeking {} to {pos}", file.path.display()))?;
                f
            }
            FdKind::Directory { path, pos } => {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(path)
                    .with_context(|| format!("{what}: opening directory {}", path.display()))?;
                if *pos != 0 {
                    let _ = nix::unistd::lseek(&f, *pos as i64, nix::unistd::Whence::SeekSet);
                }
                f
            }
            FdKind::CharDevice { path, rdev } => {
                let f = OpenOptions::new()
                    .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
                    .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
                    .custom_flags(flags & !libc::O_ACCMODE)
                    .open(path)
                    .with_context(|| format!("{what}: opening {}", path.display()))?;
                let now = f.metadata()?.rdev();
                if now != *rdev {
                    bail!("{what}: {} is a different device now ({:#x}, was {:#x})", path.display(), now, rdev);
                }
                f
            }
            FdKind::Tty { path, rdev } => {
                if !opts.shell_job {
                    bail!(
                        "{what}: the task was attached to the terminal {}; restore it with --shell-job",
                        path.display()
                    );
                }
                let f = if tty_of_ferry && task.ids.sid != pid {
                    // A shell job joins ferry's session: give it ferry's terminal.
                    use std::os::fd::AsFd;
                    let fd = std::io::stdin().as_fd().try_clone_to_owned();
                    File::from(fd.context("duplicating ferry's terminal (stdin)")?)
                } else {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_NOCTTY | (flags & libc::O_NONBLOCK))
                        .open(path)
                        .with_context(|| format!("{what}: opening terminal {}", path.display()))?
                };
                if task.ids.sid == pid && task.ids.tty_nr != 0 && u64::from(task.ids.tty_nr) == *rdev && ctty.is_none()
                {
                    ctty = Some(targets.len());
                }
                f
            }
        };
        targets.push((fd.fd, fd.cloexec));
        opened.push(file);
    }
    if task.ids.sid != pid && !opts.shell_job {
        bail!("task {pid} was dumped as part of session {}; restore it with --shell-job", task.ids.sid);
    }

    // Helpers: each mapped file once, and the executable.
    let nfds = targets.len();
    let helper = |opened: &mut Vec<File>, f: File| -> usize {
        opened.push(f);
        opened.len() - 1 - nfds
    };
    let mut by_file: HashMap<(PathBuf, bool), usize> = HashMap::new();
    let mut vma_h = HashMap::new();
    for (i, v) in task.vmas.iter().enumerate() {
        let VmaKind::File { file, .. } = &v.kind else { continue };
        let rw = v.shared() && v.may_write;
        let h = match by_file.get(&(file.path.clone(), rw)) {
            Some(h) => *h,
            None => {
                let what = format!("task {pid} mapping {:#x}-{:#x}", v.start, v.end);
                let f = reopen(file, if rw { libc::O_RDWR } else { libc::O_RDONLY }, &what, true)?;
                let h = helper(&mut opened, f);
                by_file.insert((file.path.clone(), rw), h);
                h
            }
        };
        vma_h.insert(i, h);
    }
    let exe = reopen(&task.mm.exe, libc::O_RDONLY, &format!("task {pid} executable"), true)?;
    let exe_h = helper(&mut opened, exe);

    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let sources: Vec<RawFd> = opened.iter().map(|f| f.as_raw_fd()).collect();
    // Staged copies go above every source and target: dup2 over any other
    // fd ferry inherited only closes it early (the child drops them all).
    let stage_base = sources
        .iter()
        .chain(targets.iter().map(|t| &t.0))
        .chain(std::iter::once(&report_w.as_raw_fd()))
        .max()
        .copied()
        .unwrap_or(2)
        + 1;
    let (_, nofile_hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .context("getrlimit(RLIMIT_NOFILE)")?;
    let needed = (stage_base as u64) + sources.len() as u64 + 1;
    if needed > nofile_hard {
        bail!(
            "task {pid} needs fd numbers up to {needed}, above ferry's open-files limit {nofile_hard}; raise it (ulimit -Hn)"
        );
    }
    let mut name = [0u8; 16];
    let n = task.comm.len().min(15);
    name[..n].copy_from_slice(&task.comm.as_bytes()[..n]);
    let root = (task.fs.root != Path::new("/")).then(|| cstring(&task.fs.root)).transpose()?;
    let setup = ChildSetup {
        report_fd: report_w.as_raw_fd(),
        setsid: task.ids.sid == pid,
        sources,
        targets,
        stage_base,
        ctty,
        cwd: cstring(&task.fs.cwd)?,
        root,
        umask: task.fs.umask,
        personality: task.personality,
        rlimits: rlimits(&task)?,
        nofile_hard,
        sigactions: task
            .signals
            .actions
            .iter()
            .map(|a| {
                (a.signo, KernelSigaction { handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask })
            })
            .collect(),
        name,
    };
    let vma_fds = vma_h.into_iter().map(|(i, h)| (i, setup.helper_fd(h))).collect();
    let exe_fd = setup.helper_fd(exe_h);
    let helpers_from = setup.helper_fd(0);
    // The write end stays open (in `opened`'s lifetime sense) via report_w;
    // keep it with the other files so it closes right after the fork.
    opened.push(File::from(report_w));
    Ok(Plan {
        images,
        task,
        pagemap,
        chain,
        sources: page_sources,
        cpu,
        setup,
        vma_fds,
        exe_fd,
        helpers_from,
        report: report_r,
        opened,
    })
}
