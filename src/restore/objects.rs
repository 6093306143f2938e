//! Re-create the tree's shared objects in ferry, once each, before any
//! process exists: memory objects with their data, then the open file
//! descriptions (some refer to memory objects). Every process of the tree
//! is forked from ferry's copy and inherits them, so all the fds that
//! shared a description share the new one.

use crate::image::objects::{ObjectsImage, OwnerKind};
use crate::image::ImageDir;
use crate::objects::{self, CreatedMemory, OpenContext};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

/// The tree's objects, alive in ferry.
pub struct Opened {
    pub memory: HashMap<u32, CreatedMemory>,
    pub files: HashMap<u32, OwnedFd>,
    /// Socket paths taken over: put back when this is dropped uncommitted.
    pub taken_paths: Vec<objects::socket_path::TakenPath>,
}

/// Create every memory object into `out` and fill it from its contents
/// file (what was made before a failure stays in `out`, to be discarded).
fn create_memory(images: &ImageDir, objects: &ObjectsImage, out: &mut HashMap<u32, CreatedMemory>) -> Result<()> {
    for obj in &objects.memory {
        let kind = objects::memory_kind(&obj.kind)?;
        let what = || format!("memory object {} ({})", obj.id, kind.describe(obj));
        let created = kind.create(obj).with_context(what)?;
        let filled = fill(images, obj, &created).with_context(what);
        out.insert(obj.id, created);
        filled?;
    }
    Ok(())
}

/// Map the new object in ferry and copy its data in from the image.
fn fill(images: &ImageDir, obj: &crate::image::objects::MemoryObject, created: &CreatedMemory) -> Result<()> {
    if obj.contents.extents.is_empty() {
        return Ok(());
    }
    let data = images.read_verified(&obj.contents.file)?;
    if data.len() as u64 != obj.contents.bytes() {
        bail!(
            "{}: {} bytes, its extents say {}",
            images.path(&obj.contents.file).display(),
            data.len(),
            obj.contents.bytes()
        );
    }
    let len = obj.size.next_multiple_of(crate::page_size()) as usize;
    if obj.contents.extents.iter().any(|e| e.offset + e.len > len as u64) {
        bail!("{}: data beyond the object's {} bytes", images.path(&obj.contents.file).display(), obj.size);
    }
    // SAFETY: a fresh shared mapping of the new object (an fd of ours, or
    // a segment attached at an address of the kernel's choosing), written
    // within its length and unmapped before return.
    unsafe {
        let addr = match (&created.fd, created.shmid) {
            (Some(fd), _) => libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            ),
            (None, Some(id)) => libc::shmat(id, std::ptr::null(), 0),
            (None, None) => bail!("memory object {} has nothing to map", obj.id),
        };
        if addr == libc::MAP_FAILED || addr as isize == -1 {
            bail!("mapping it in ferry: {}", std::io::Error::last_os_error());
        }
        let base = addr as *mut u8;
        let mut at = 0usize;
        for e in &obj.contents.extents {
            std::ptr::copy_nonoverlapping(data[at..].as_ptr(), base.add(e.offset as usize), e.len as usize);
            at += e.len as usize;
        }
        if created.fd.is_some() {
            libc::munmap(addr, len);
        } else {
            libc::shmdt(addr);
        }
    }
    Ok(())
}

/// Create the memory objects, then open every file description; on a
/// failure, what was made is discarded.
pub fn open_all(
    images: &ImageDir,
    objects: &ObjectsImage,
    opts: &super::RestoreOptions,
    tree_leads_session: bool,
    tables: &HashMap<i32, HashMap<i32, u32>>,
    ptys: crate::restore::pty::PtyMasters,
) -> Result<Opened> {
    let mut opened = Opened { memory: HashMap::new(), files: HashMap::new(), taken_paths: Vec::new() };
    let r = create_memory(images, objects, &mut opened.memory)
        .and_then(|()| open_files(images, objects, opts, tree_leads_session, tables, ptys, &mut opened));
    if let Err(e) = r {
        opened.discard();
        return Err(e);
    }
    Ok(opened)
}

fn open_files(
    images: &ImageDir,
    objects: &ObjectsImage,
    opts: &super::RestoreOptions,
    tree_leads_session: bool,
    tables: &HashMap<i32, HashMap<i32, u32>>,
    ptys: crate::restore::pty::PtyMasters,
    opened: &mut Opened,
) -> Result<()> {
    let memory = &opened.memory;
    let ferry_tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let ctx = OpenContext {
        shell_job: opts.shell_job,
        ferry_tty,
        tree_leads_session,
        memory,
        images,
        inherited: &opts.inherited,
        kept: Default::default(),
        taken_paths: Default::default(),
        tcp_close: opts.tcp_close,
        ptys: std::cell::RefCell::new(ptys),
        pty_hand_over: opts.container.orphan_pts_master.as_ref(),
    };
    let mut files = HashMap::new();
    let r = (|| -> Result<()> {
        for f in &objects.files {
            let kind = objects::file_kind(&f.kind)?;
            let what = || format!("file object {} ({})", f.id, kind.describe(f));
            let fd = kind.open(f, &ctx).with_context(what)?;
            set_status_flags(&fd, f.flags).with_context(what)?;
            for l in &f.locks {
                take_lock(&fd, l).with_context(what)?;
            }
            files.insert(f.id, fd);
        }
        Ok(())
    })();
    opened.taken_paths = ctx.taken_paths.take();
    drop(ctx);
    r?;
    let all = objects::OpenFiles { files: &files, tables, objects: &objects.files, images };
    for f in &objects.files {
        let kind = objects::file_kind(&f.kind)?;
        kind.link(f, &files[&f.id], &all).with_context(|| format!("file object {} ({})", f.id, kind.describe(f)))?;
    }
    opened.files = files;
    Ok(())
}

/// Take a lock again through ferry's description (the tree inherits it
/// with the description), failing if someone else holds it now.
fn take_lock(fd: &OwnedFd, l: &crate::image::objects::FileLock) -> Result<()> {
    use crate::image::objects::LockKind;
    let access = if l.write { "write" } else { "read" };
    let r = match l.kind {
        LockKind::Flock => {
            let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH };
            // SAFETY: flock takes no pointers.
            unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) }
        }
        LockKind::Posix => bail!("a POSIX lock belongs to a process, not to a description"),
        LockKind::Ofd => {
            // SAFETY: a zeroed struct flock, filled below.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as _;
            fl.l_whence = libc::SEEK_SET as _;
            fl.l_start = l.start as _;
            fl.l_len = l.len as _;
            // SAFETY: fcntl reads the local struct flock.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) }
        }
    };
    if r != 0 {
        bail!("taking its {:?} {access} lock again: {}", l.kind, std::io::Error::last_os_error());
    }
    Ok(())
}

/// The status flags open(2) ignores or a kind may not set (O_ASYNC
/// above all), set on the description as the task had them.
fn set_status_flags(fd: &OwnedFd, flags: u32) -> Result<()> {
    const SETFL: i32 = libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME;
    // SAFETY: fcntl on our own fd.
    let now = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if now < 0 {
        bail!("F_GETFL: {}", std::io::Error::last_os_error());
    }
    let want = (now & !SETFL) | (flags as i32 & SETFL);
    // SAFETY: fcntl on our own fd.
    if want != now && unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, want) } != 0 {
        bail!("setting status flags {:#o}: {}", flags as i32 & SETFL, std::io::Error::last_os_error());
    }
    Ok(())
}

impl Opened {
    /// Once every process exists: owners (F_SETOWN_EX, with the PIDs the
    /// processes have now) and signals (F_SETSIG) of the descriptions.
    pub fn set_owners(&self, objects: &ObjectsImage, pid_of: impl Fn(i32) -> Option<i32>) -> Result<()> {
        const F_SETSIG: i32 = 10;
        const F_SETOWN_EX: i32 = 15;
        for f in &objects.files {
            let fd = &self.files[&f.id];
            if let Some(o) = &f.owner {
                let pid = pid_of(o.pid)
                    .with_context(|| format!("file object {}: owner {} is not in the tree", f.id, o.pid))?;
                #[repr(C)]
                struct OwnerEx {
                    kind: i32,
                    pid: i32,
                }
                let kind = match o.kind {
                    OwnerKind::Thread => 0,
                    OwnerKind::Process => 1,
                    OwnerKind::ProcessGroup => 2,
                };
                let ex = OwnerEx { kind, pid };
                // SAFETY: fcntl on our own fd with a struct of the kernel's layout.
                if unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &ex as *const OwnerEx) } != 0 {
                    bail!("file object {}: F_SETOWN_EX {pid}: {}", f.id, std::io::Error::last_os_error());
                }
            }
            if f.signal != 0 {
                // SAFETY: plain fcntl.
                if unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, f.signal) } != 0 {
                    bail!("file object {}: F_SETSIG {}: {}", f.id, f.signal, std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Once every process has mapped them: seals, IPC_RMID.
    pub fn finish_memory(&self, objects: &ObjectsImage) -> Result<()> {
        for obj in &objects.memory {
            let kind = objects::memory_kind(&obj.kind)?;
            kind.finish(obj, &self.memory[&obj.id])
                .with_context(|| format!("memory object {} ({})", obj.id, kind.describe(obj)))?;
        }
        Ok(())
    }

    /// Just before the tree runs: what must wait for it (a TCP connection
    /// leaving repair mode).
    pub fn go_live(&self, objects: &ObjectsImage, images: &ImageDir, tcp_close: bool) -> Result<()> {
        let ctx = objects::LiveContext { images, tcp_close };
        for f in &objects.files {
            let kind = objects::file_kind(&f.kind)?;
            kind.go_live(f, &self.files[&f.id], &ctx)
                .with_context(|| format!("file object {} ({})", f.id, kind.describe(f)))?;
        }
        Ok(())
    }

    /// The restore succeeded: what it replaced goes for good.
    pub fn commit(&mut self) {
        for t in self.taken_paths.drain(..) {
            t.commit();
        }
    }

    /// Remove what was created if the restore fails (System V segments
    /// outlive ferry; fds do not; taken paths come back when dropped).
    pub fn discard(&self) {
        for m in self.memory.values().filter(|m| !m.reused) {
            if let Some(id) = m.shmid {
                // SAFETY: plain shmctl on a segment ferry created.
                unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            }
        }
    }
}
