//! The kinds of object processes share: open file descriptions and memory
//! objects. Each kind lives in one module, behind one trait ([`FileKind`]
//! or [`MemoryKind`]): how dump recognizes it and reads its state, and how
//! restore re-creates it in ferry before the tree is forked (every process
//! of the tree inherits ferry's copy and places it at its own fd numbers or
//! addresses). Adding a kind is adding a module and one line to
//! [`FILE_KINDS`] or [`MEMORY_KINDS`]; dump and restore never match on
//! kinds.

pub mod chardev;
pub mod controlling_tty;
pub mod deleted_file;
pub mod directory;
pub mod epoll;
pub mod eventfd;
pub mod inet;
pub mod inotify;
pub mod memfd;
pub mod pipe;
pub mod pty_slave;
pub mod regular;
pub mod shmem;
pub mod signalfd;
pub mod socket_path;
pub mod sysv_shm;
pub mod tcp_connection;
pub mod tcp_listener;
pub mod timerfd;
pub mod tty;
pub mod udp_socket;
pub mod unix_socket;

use crate::image::objects::{FileObject, MemoryObject};
use crate::proc::fdinfo::FdInfo;
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// What dump knows of one fd when it asks the kinds which one it is.
pub struct FdProbe<'a> {
    /// The process, by its PID in the tree's namespace (for messages).
    pub pid: i32,
    pub proc: &'a ProcDir,
    pub fd: i32,
    /// The fd's /proc link text (`/path`, `pipe:[123]`, `anon_inode:[eventfd]`).
    pub link: String,
    /// stat(2) through the fd.
    pub meta: std::fs::Metadata,
    pub info: FdInfo,
    /// The fdinfo text `info` was parsed from, for the fields a kind adds.
    pub fdinfo: String,
    /// What the dump's options allow.
    pub policy: &'a FdPolicy,
    /// A pidfd of the process, once the tree is frozen (the look that
    /// counts): kinds that must hold the file itself (a socket: no path
    /// reopens it) take a copy with pidfd_getfd.
    pub pidfd: Option<&'a OwnedFd>,
}

/// The dump options that decide whether an fd may be taken along.
#[derive(Clone, Debug, Default)]
pub struct FdPolicy {
    /// `--shell-job`: the task's terminal may be taken along.
    pub shell_job: bool,
    /// `--orphan-pts-master`: a pts whose master is outside the tree.
    pub orphan_pts_master: bool,
    /// A container's mount IDs: a file or directory open on any other
    /// mount is refused (dump::container::check_fd_inside).
    pub container_mounts: Option<std::sync::Arc<std::collections::HashSet<u64>>>,
    /// `--file-locks`: locks on the description are taken along.
    pub file_locks: bool,
    /// `--ext-unix-sk`: unix sockets whose peer is outside the tree.
    pub ext_unix_sk: ExtUnixSk,
    /// `--tcp-established`: established TCP connections are taken along.
    pub tcp_established: bool,
    /// `--skip-in-flight`: connections not yet accepted are let go.
    pub skip_in_flight: bool,
    /// The look that counts of a final dump: connections are put in
    /// repair mode and read (a pre-dump and the first look only check).
    pub repair: bool,
}

/// CRIU's `--ext-unix-sk[=INODE,...]`: which of the tree's unix sockets
/// may have their peer outside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ExtUnixSk {
    #[default]
    None,
    /// The bare flag: any.
    Any,
    /// Only these sockets (the tree's ends, by inode).
    Inodes(Vec<u64>),
}

impl ExtUnixSk {
    /// From the option's values (each empty, or a comma-separated list).
    pub fn parse(values: &[String]) -> Result<ExtUnixSk> {
        if values.is_empty() {
            return Ok(ExtUnixSk::None);
        }
        let mut inodes = Vec::new();
        for v in values {
            if v.is_empty() {
                return Ok(ExtUnixSk::Any);
            }
            for i in v.split(',').filter(|i| !i.is_empty()) {
                match i.parse::<u64>() {
                    Ok(n) if n > 0 => inodes.push(n),
                    _ => anyhow::bail!("--ext-unix-sk: {i:?} is not a socket inode (e.g. --ext-unix-sk=52411,52413)"),
                }
            }
        }
        Ok(ExtUnixSk::Inodes(inodes))
    }

    pub fn allows(&self, ino: u64) -> bool {
        match self {
            ExtUnixSk::None => false,
            ExtUnixSk::Any => true,
            ExtUnixSk::Inodes(v) => v.contains(&ino),
        }
    }
}

impl FdProbe<'_> {
    /// `/proc/PID/fd/N`: opening it gives ferry the same file.
    pub fn path(&self) -> PathBuf {
        self.proc.path(&format!("fd/{}", self.fd))
    }

    /// ferry's own copy of the file (pidfd_getfd), once the tree is frozen.
    pub fn copy(&self) -> Result<Option<OwnedFd>> {
        self.pidfd.map(|p| crate::pidfd::getfd(p, self.fd).with_context(|| self.what())).transpose()
    }

    /// "task PID fd N", the start of every message about this fd.
    pub fn what(&self) -> String {
        format!("task {} fd {}", self.pid, self.fd)
    }

    /// A field of the fd's /proc fdinfo that its kind adds (`eventfd-count`,
    /// `clockid`...), or an error naming it.
    pub fn fdinfo_field(&self, key: &str) -> Result<String> {
        crate::proc::key_values(&self.fdinfo)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .with_context(|| format!("{}: fdinfo has no {key:?} field (kernel too old?)", self.what()))
    }
}

/// A process outside the tree (and not ferry) that holds a file whose
/// /proc link reads `link` (`pipe:[N]`, `socket:[N]`): "PID (comm)".
pub fn held_outside(link: &str, reg: &dyn Registry) -> Option<String> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
        if pid == me || reg.in_tree(pid) {
            return None;
        }
        let mut fds = std::fs::read_dir(e.path().join("fd")).ok()?.flatten();
        if !fds.any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str() == link)) {
            return None;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        Some(format!("{pid} ({})", comm.trim()))
    })
}

/// How many bytes are waiting to be read from `fd` (FIONREAD: a pipe's,
/// an inotify's).
pub fn readable(fd: &impl std::os::fd::AsRawFd) -> Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        anyhow::bail!("FIONREAD: {}", std::io::Error::last_os_error());
    }
    Ok(n)
}

/// A new fd from a syscall that returns one (or -1).
fn new_fd(r: i32, what: &str) -> Result<OwnedFd> {
    if r < 0 {
        anyhow::bail!("{what}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the syscall just returned this fd to us.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

/// Where dump puts what a kind finds besides its own state: the memory
/// objects a file or mapping refers to, and data a description holds.
pub trait Registry {
    /// The id of the memory object `key`, registered with `make` on first sight.
    fn memory(&mut self, key: MemoryKey, make: &mut dyn FnMut() -> Result<NewMemory>) -> Result<u32>;
    /// Whether `pid` (as ferry sees it) is a process of the tree.
    fn in_tree(&self, pid: i32) -> bool;
    /// Bytes that go with the description being dumped (a pipe's data in
    /// flight): written to an image file of their own, given back to the
    /// kind's `open` by [`OpenContext::data`].
    fn data(&mut self, bytes: Vec<u8>);
    /// True the first time `key` is asked for (of a kind's own shared
    /// things: one pipe behind two ends).
    fn first_sight(&mut self, key: (&'static str, u64)) -> bool;
    /// A warning for the user (said once, on the look that counts).
    fn warn(&mut self, message: String);
    /// A TCP socket the dump put in repair mode (ferry's copy): held until
    /// the task's fate is known ([`tcp_connection::Repaired`]).
    fn repaired(&mut self, sock: OwnedFd);
}

/// How dump tells memory objects apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MemoryKey {
    /// A shmem inode (shared anonymous memory, memfd).
    Inode { dev: u64, ino: u64 },
    /// A System V segment.
    SysV { shmid: i32 },
}

/// A memory object's key, and how to describe it the first time it is seen.
pub type Identified = (MemoryKey, Box<dyn FnOnce() -> Result<NewMemory>>);

/// A memory object seen for the first time.
pub struct NewMemory {
    pub kind: &'static str,
    pub size: u64,
    pub state: serde_json::Value,
    pub contents: Box<dyn ContentSource>,
}

/// Reads a memory object's data for the image.
pub trait ContentSource {
    /// Runs of data (offset, length) and a way to read them.
    fn extents(&self) -> Result<Vec<(u64, u64)>>;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Restore-time facts a kind may need to open a file.
pub struct OpenContext<'a> {
    pub shell_job: bool,
    /// ferry's own stdin is a terminal (a shell job gets it).
    pub ferry_tty: bool,
    /// The tree's root leads its own session (its terminal is reopened
    /// and made controlling, rather than ferry's being lent).
    pub tree_leads_session: bool,
    /// The memory objects, already created, by id.
    pub memory: &'a std::collections::HashMap<u32, CreatedMemory>,
    pub images: &'a crate::image::ImageDir,
    /// Descriptions the caller hands in for objects the tree shares with
    /// the outside (`--inherit-fd fd[N]:KEY`), by key (`pipe:[INODE]`).
    pub inherited: &'a std::collections::HashMap<String, std::os::fd::RawFd>,
    /// Kernel objects a kind created for one description and keeps for
    /// the others (a pipe for its second end), by kind and key; closed
    /// once every description is open.
    pub kept: std::cell::RefCell<std::collections::HashMap<(&'static str, u64), Vec<OwnedFd>>>,
    /// Socket paths taken over, given back if the restore fails.
    pub taken_paths: std::cell::RefCell<Vec<socket_path::TakenPath>>,
    /// `--tcp-close`: established connections come back aborted.
    pub tcp_close: bool,
    /// Pseudo-terminals made for slaves whose master was outside the tree.
    pub ptys: std::cell::RefCell<crate::restore::pty::PtyMasters>,
    /// Who gets their masters.
    pub pty_hand_over: Option<&'a crate::restore::pty::HandOver>,
}

/// What a kind may need when the tree is about to run.
pub struct LiveContext<'a> {
    pub images: &'a crate::image::ImageDir,
    pub tcp_close: bool,
}

impl OpenContext<'_> {
    pub fn memory(&self, id: u32) -> Result<&CreatedMemory> {
        self.memory.get(&id).with_context(|| format!("objects.json: no memory object {id}"))
    }

    /// The bytes dump gave with `file` ([`Registry::data`]), checked
    /// against the inventory.
    pub fn data(&self, file: &FileObject) -> Result<Vec<u8>> {
        if file.data.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.images.read_verified(&file.data)?)
    }
}

/// One kind of open file description.
pub trait FileKind: Sync + 'static {
    /// Its name in images.
    const NAME: &'static str;
    /// Its state in objects.json.
    type State: Serialize + DeserializeOwned;
    /// Dump: whether this kind describes the fd.
    fn claims(fd: &FdProbe) -> bool;
    /// Dump: the description's state (the fd may be read, never changed).
    fn dump(fd: &FdProbe, memory: &mut dyn Registry) -> Result<Self::State>;
    /// Restore: open it in ferry, with the flags and state dumped.
    fn open(file: &FileObject, state: &Self::State, ctx: &OpenContext) -> Result<OwnedFd>;
    /// One line for `ferry show` and messages.
    fn describe(state: &Self::State) -> String;
    /// The terminal's device number, if this is a terminal.
    fn tty_rdev(_state: &Self::State) -> Option<u64> {
        None
    }
    /// A path the restored process opens itself at this fd, once its
    /// terminal is controlling (/dev/tty names the caller's terminal).
    fn reopen_in_process(_state: &Self::State) -> Option<PathBuf> {
        None
    }
    /// Memory objects this description needs created first.
    fn needs_memory(_state: &Self::State) -> Option<u32> {
        None
    }
    /// Restore, once every description is open: tie this one to others
    /// (an epoll to the files it watches).
    fn link(_file: &FileObject, _state: &Self::State, _fd: &OwnedFd, _files: &OpenFiles) -> Result<()> {
        Ok(())
    }
    /// Restore, just before the tree runs (a TCP connection leaves repair
    /// mode).
    fn go_live(_file: &FileObject, _state: &Self::State, _fd: &OwnedFd, _ctx: &LiveContext) -> Result<()> {
        Ok(())
    }
}

/// Every description ferry opened at restore, and each process's fd table
/// (fd number → object id), for [`FileKind::link`].
pub struct OpenFiles<'a> {
    pub files: &'a std::collections::HashMap<u32, OwnedFd>,
    pub tables: &'a std::collections::HashMap<i32, std::collections::HashMap<i32, u32>>,
    /// Every file object, to find another by its state (a socket's peer).
    pub objects: &'a [FileObject],
    pub images: &'a crate::image::ImageDir,
}

impl OpenFiles<'_> {
    /// ferry's copy of what process `pid` (in the tree) had at `fd`.
    pub fn of(&self, pid: i32, fd: i32) -> Result<&OwnedFd> {
        let id = self
            .tables
            .get(&pid)
            .and_then(|t| t.get(&fd))
            .with_context(|| format!("task {pid} has no fd {fd} in its image"))?;
        self.files.get(id).with_context(|| format!("objects.json: no file object {id}"))
    }
}

/// A [`FileKind`] with its state as JSON, for the registry.
pub trait FileOps: Sync {
    fn name(&self) -> &'static str;
    fn claims(&self, fd: &FdProbe) -> bool;
    fn dump(&self, fd: &FdProbe, memory: &mut dyn Registry) -> Result<serde_json::Value>;
    fn open(&self, file: &FileObject, ctx: &OpenContext) -> Result<OwnedFd>;
    fn describe(&self, file: &FileObject) -> String;
    fn tty_rdev(&self, file: &FileObject) -> Option<u64>;
    fn reopen_in_process(&self, file: &FileObject) -> Option<PathBuf>;
    fn link(&self, file: &FileObject, fd: &OwnedFd, files: &OpenFiles) -> Result<()>;
    fn go_live(&self, file: &FileObject, fd: &OwnedFd, ctx: &LiveContext) -> Result<()>;
}

pub struct File<K>(PhantomData<K>);

impl<K> File<K> {
    pub const KIND: Self = File(PhantomData);
}

fn state_of<T: DeserializeOwned>(kind: &str, id: u32, v: &serde_json::Value) -> Result<T> {
    serde_json::from_value(v.clone()).with_context(|| format!("objects.json: {kind} object {id}: bad state"))
}

impl<K: FileKind> FileOps for File<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn claims(&self, fd: &FdProbe) -> bool {
        K::claims(fd)
    }
    fn dump(&self, fd: &FdProbe, memory: &mut dyn Registry) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(K::dump(fd, memory)?).expect("states serialize"))
    }
    fn open(&self, file: &FileObject, ctx: &OpenContext) -> Result<OwnedFd> {
        K::open(file, &state_of(K::NAME, file.id, &file.state)?, ctx)
    }
    fn describe(&self, file: &FileObject) -> String {
        match state_of::<K::State>(K::NAME, file.id, &file.state) {
            Ok(s) => K::describe(&s),
            Err(e) => format!("{e:#}"),
        }
    }
    fn tty_rdev(&self, file: &FileObject) -> Option<u64> {
        state_of::<K::State>(K::NAME, file.id, &file.state).ok().and_then(|s| K::tty_rdev(&s))
    }
    fn reopen_in_process(&self, file: &FileObject) -> Option<PathBuf> {
        state_of::<K::State>(K::NAME, file.id, &file.state).ok().and_then(|s| K::reopen_in_process(&s))
    }
    fn link(&self, file: &FileObject, fd: &OwnedFd, files: &OpenFiles) -> Result<()> {
        K::link(file, &state_of(K::NAME, file.id, &file.state)?, fd, files)
    }
    fn go_live(&self, file: &FileObject, fd: &OwnedFd, ctx: &LiveContext) -> Result<()> {
        K::go_live(file, &state_of(K::NAME, file.id, &file.state)?, fd, ctx)
    }
}

/// Every kind of open file description ferry can dump and restore, asked
/// in this order.
pub static FILE_KINDS: &[&dyn FileOps] = &[
    &File::<memfd::MemfdFile>::KIND,
    &File::<regular::Regular>::KIND,
    &File::<pipe::Pipe>::KIND,
    &File::<eventfd::EventFd>::KIND,
    &File::<timerfd::TimerFd>::KIND,
    &File::<signalfd::SignalFd>::KIND,
    &File::<epoll::Epoll>::KIND,
    &File::<inotify::Inotify>::KIND,
    &File::<unix_socket::UnixSocket>::KIND,
    &File::<tcp_listener::TcpListener>::KIND,
    &File::<tcp_connection::TcpConnection>::KIND,
    &File::<udp_socket::UdpSocket>::KIND,
    &File::<directory::Directory>::KIND,
    &File::<pty_slave::PtySlave>::KIND,
    &File::<controlling_tty::ControllingTty>::KIND,
    &File::<tty::Tty>::KIND,
    &File::<chardev::CharDevice>::KIND,
];

pub fn file_kind(name: &str) -> Result<&'static dyn FileOps> {
    FILE_KINDS
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .with_context(|| format!("objects.json: unknown kind of file {name:?} (written by a newer ferry?)"))
}

/// A memory object re-created in ferry: how processes map it.
pub struct CreatedMemory {
    /// An fd of the object (memfd, shmem file): mapped with mmap, reopened
    /// for file descriptions of it.
    pub fd: Option<OwnedFd>,
    /// A System V segment: attached with shmat.
    pub shmid: Option<i32>,
    /// The segment is the dumped tree's own, left behind when the tree was
    /// killed, and taken again: not ferry's to remove if the restore fails.
    pub reused: bool,
}

/// One kind of memory object.
pub trait MemoryKind: Sync + 'static {
    const NAME: &'static str;
    type State: Serialize + DeserializeOwned;
    /// Dump: whether a mapping (by its maps line) is of this kind.
    fn claims_mapping(m: &Mapping) -> bool;
    /// Dump: the object behind the mapping; returns (key, how to describe
    /// it if new). The offset into the object is the mapping's.
    fn identify(proc: &ProcDir, m: &Mapping) -> Result<Identified>;
    /// Restore: create it in ferry, `size` bytes, empty; the caller fills
    /// the contents through [`MemoryKind::fill`].
    fn create(obj: &MemoryObject, state: &Self::State) -> Result<CreatedMemory>;
    /// Restore: after the contents are in (seals, IPC_RMID...).
    fn finish(_obj: &MemoryObject, _state: &Self::State, _created: &CreatedMemory) -> Result<()> {
        Ok(())
    }
    /// Dump: refuse the object if others than the tree use it; `mappings`
    /// is how many areas of the tree map it.
    fn check_users(_state: &Self::State, _mappings: u64) -> Result<()> {
        Ok(())
    }
    fn describe(state: &Self::State) -> String;
}

pub trait MemoryOps: Sync {
    fn name(&self) -> &'static str;
    fn claims_mapping(&self, m: &Mapping) -> bool;
    fn identify(&self, proc: &ProcDir, m: &Mapping) -> Result<Identified>;
    fn create(&self, obj: &MemoryObject) -> Result<CreatedMemory>;
    fn finish(&self, obj: &MemoryObject, created: &CreatedMemory) -> Result<()>;
    fn check_users(&self, state: &serde_json::Value, mappings: u64) -> Result<()>;
    fn describe(&self, obj: &MemoryObject) -> String;
}

pub struct Memory<K>(PhantomData<K>);

impl<K> Memory<K> {
    pub const KIND: Self = Memory(PhantomData);
}

impl<K: MemoryKind> MemoryOps for Memory<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn claims_mapping(&self, m: &Mapping) -> bool {
        K::claims_mapping(m)
    }
    fn identify(&self, proc: &ProcDir, m: &Mapping) -> Result<Identified> {
        K::identify(proc, m)
    }
    fn create(&self, obj: &MemoryObject) -> Result<CreatedMemory> {
        K::create(obj, &state_of(K::NAME, obj.id, &obj.state)?)
    }
    fn finish(&self, obj: &MemoryObject, created: &CreatedMemory) -> Result<()> {
        K::finish(obj, &state_of(K::NAME, obj.id, &obj.state)?, created)
    }
    fn check_users(&self, state: &serde_json::Value, mappings: u64) -> Result<()> {
        K::check_users(&serde_json::from_value(state.clone())?, mappings)
    }
    fn describe(&self, obj: &MemoryObject) -> String {
        match state_of::<K::State>(K::NAME, obj.id, &obj.state) {
            Ok(s) => K::describe(&s),
            Err(e) => format!("{e:#}"),
        }
    }
}

/// Every kind of memory object, asked in this order.
pub static MEMORY_KINDS: &[&dyn MemoryOps] = &[
    &Memory::<shmem::SharedAnon>::KIND,
    &Memory::<memfd::MemfdMemory>::KIND,
    &Memory::<sysv_shm::SysvShm>::KIND,
    // Last: any other mapping of a deleted file.
    &Memory::<deleted_file::DeletedFile>::KIND,
];

pub fn memory_kind(name: &str) -> Result<&'static dyn MemoryOps> {
    MEMORY_KINDS
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .with_context(|| format!("objects.json: unknown kind of memory {name:?} (written by a newer ferry?)"))
}

/// The data of a shmem file (shared anonymous memory, memfd) through an fd
/// of it: SEEK_DATA/SEEK_HOLE find what was ever written (swapped-out data
/// included), pread reads it.
pub struct ShmemFile {
    pub path: PathBuf,
    pub file: std::fs::File,
    pub size: u64,
}

impl ShmemFile {
    pub fn open(path: PathBuf, size: u64) -> Result<ShmemFile> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(ShmemFile { path, file, size })
    }
}

impl ContentSource for ShmemFile {
    fn extents(&self) -> Result<Vec<(u64, u64)>> {
        use nix::unistd::{lseek, Whence};
        let page = crate::page_size();
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let data = match lseek(&self.file, pos as i64, Whence::SeekData) {
                Ok(d) => d as u64,
                Err(nix::errno::Errno::ENXIO) => break,
                Err(e) => return Err(e).with_context(|| format!("SEEK_DATA in {}", self.path.display())),
            };
            if data >= self.size {
                break;
            }
            let hole = lseek(&self.file, data as i64, Whence::SeekHole).map(|h| h as u64).unwrap_or(self.size);
            let (start, end) = (data / page * page, hole.min(self.size).div_ceil(page) * page);
            out.push((start, end.min(self.size.div_ceil(page) * page) - start));
            pos = end;
        }
        Ok(out)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        // Past the end of the file (the last page's tail) reads as zeros.
        let n = buf.len().min(self.size.saturating_sub(offset) as usize);
        self.file.read_exact_at(&mut buf[..n], offset).with_context(|| format!("reading {}", self.path.display()))?;
        buf[n..].fill(0);
        Ok(())
    }
}
