//! The objects of the tree being dumped. A file description is one object
//! however many fds refer to it, in one process or several (kcmp
//! KCMP_FILE tells); a memory object is one however many areas map it.
//! Each is recorded by the kind that claims it (`crate::objects`).

use crate::image::objects::{
    Contents, Extent, FileLock, FileObject, LockKind, MemoryObject, ObjectsImage, Owner, OwnerKind,
};
use crate::image::ImageWriter;
use crate::objects::{self, ContentSource, FdProbe, MemoryKey, NewMemory, Registry};
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const KCMP_FILE: i32 = 0;
const F_GETSIG: i32 = 11;
const F_GETOWN_EX: i32 = 16;

/// kcmp(2): whether fd1 of pid1 and fd2 of pid2 are one open file description.
fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool> {
    // SAFETY: kcmp only compares kernel objects.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64) };
    if r < 0 {
        bail!("kcmp(task {pid1} fd {fd1}, task {pid2} fd {fd2}): {}", std::io::Error::last_os_error());
    }
    Ok(r == 0)
}

struct Holder {
    id: u32,
    pid: i32,
    fd: i32,
    dev: u64,
    ino: u64,
}

struct PendingMemory {
    object: MemoryObject,
    source: Box<dyn ContentSource>,
}

/// Everything the tree shares, collected process by process.
#[derive(Default)]
pub struct ObjectTable {
    files: Vec<FileObject>,
    holders: Vec<Holder>,
    memory: Vec<PendingMemory>,
    keys: HashMap<MemoryKey, u32>,
    /// How many areas of the tree map each memory object.
    mappings: HashMap<u32, u64>,
    /// ferry's PIDs to the tree's (for F_SETOWN owners).
    vpids: HashMap<i32, i32>,
    /// Data of file objects, by id, written beside objects.json.
    data: Vec<(u32, Vec<u8>)>,
    /// What the kind dumping now gave with its description.
    pending_data: Option<Vec<u8>>,
    seen: std::collections::HashSet<(&'static str, u64)>,
    /// A first look (the tree still runs): no warnings from it, the
    /// frozen look says them.
    quiet: bool,
    /// TCP sockets put in repair mode.
    repaired: crate::objects::tcp_connection::Repaired,
}

impl Registry for ObjectTable {
    fn memory(&mut self, key: MemoryKey, make: &mut dyn FnMut() -> Result<NewMemory>) -> Result<u32> {
        if let Some(id) = self.keys.get(&key) {
            return Ok(*id);
        }
        let new = make()?;
        let id = self.memory.len() as u32;
        self.memory.push(PendingMemory {
            object: MemoryObject {
                id,
                kind: new.kind.to_string(),
                size: new.size,
                contents: Contents::default(),
                state: new.state,
            },
            source: new.contents,
        });
        self.keys.insert(key, id);
        Ok(id)
    }

    fn in_tree(&self, pid: i32) -> bool {
        self.vpids.contains_key(&pid)
    }

    fn data(&mut self, bytes: Vec<u8>) {
        self.pending_data = Some(bytes);
    }

    fn first_sight(&mut self, key: (&'static str, u64)) -> bool {
        self.seen.insert(key)
    }

    fn warn(&mut self, message: String) {
        if !self.quiet {
            tracing::warn!("{message}");
        }
    }

    fn repaired(&mut self, sock: OwnedFd) {
        self.repaired.push(sock);
    }
}

impl ObjectTable {
    /// `vpids`: ferry's PID of every task of the tree → its PID in the tree.
    pub fn new(vpids: HashMap<i32, i32>) -> ObjectTable {
        ObjectTable { vpids, ..Default::default() }
    }

    /// The TCP sockets the look put in repair mode.
    pub fn take_repaired(&mut self) -> crate::objects::tcp_connection::Repaired {
        std::mem::take(&mut self.repaired)
    }

    /// For a first look, whose findings the frozen look repeats.
    pub fn quiet(mut self) -> ObjectTable {
        self.quiet = true;
        self
    }

    /// The file description behind one fd: an existing object if another
    /// fd already refers to it, else a new one from the kind that claims it.
    /// `pidfd` is the process's, to read the owner (F_GETOWN_EX).
    pub fn file(&mut self, fd: &FdProbe, pidfd: Option<&OwnedFd>) -> Result<u32> {
        let (dev, ino) = (fd.meta.dev(), fd.meta.ino());
        let pid = fd.proc.pid;
        for h in self.holders.iter().filter(|h| h.dev == dev && h.ino == ino) {
            if same_file(h.pid, h.fd, pid, fd.fd)? {
                return Ok(h.id);
            }
        }
        let Some(kind) = objects::FILE_KINDS.iter().find(|k| k.claims(fd)) else {
            return Err(refusal(fd));
        };
        self.pending_data = None;
        let state = kind.dump(fd, self)?;
        let (owner, signal) = match pidfd {
            Some(p) => self.owner(fd, p)?,
            None => (None, 0),
        };
        let id = self.files.len() as u32;
        if let Some(bytes) = self.pending_data.take().filter(|b| !b.is_empty()) {
            self.data.push((id, bytes));
        }
        self.files.push(FileObject {
            id,
            kind: kind.name().to_string(),
            flags: fd.info.flags & !(libc::O_CLOEXEC as u32),
            owner,
            signal,
            state,
            data: String::new(),
            locks: locks(fd)?,
        });
        self.holders.push(Holder { id, pid, fd: fd.fd, dev, ino });
        Ok(id)
    }

    /// F_GETOWN_EX and F_GETSIG, on ferry's own copy of the fd.
    fn owner(&self, fd: &FdProbe, pidfd: &OwnedFd) -> Result<(Option<Owner>, i32)> {
        let copy = crate::pidfd::getfd(pidfd, fd.fd).with_context(|| fd.what())?;
        #[repr(C)]
        struct OwnerEx {
            kind: i32,
            pid: i32,
        }
        let mut o = OwnerEx { kind: 0, pid: 0 };
        // SAFETY: fcntl on our own fd with a struct of the kernel's layout.
        let (r, sig) = unsafe {
            (
                libc::fcntl(copy.as_raw_fd(), F_GETOWN_EX, &mut o as *mut OwnerEx),
                libc::fcntl(copy.as_raw_fd(), F_GETSIG),
            )
        };
        if r < 0 || sig < 0 {
            bail!("{}: F_GETOWN_EX/F_GETSIG: {}", fd.what(), std::io::Error::last_os_error());
        }
        let owner = if o.pid == 0 {
            None
        } else {
            let kind = match o.kind {
                0 => OwnerKind::Thread,
                2 => OwnerKind::ProcessGroup,
                _ => OwnerKind::Process,
            };
            match self.vpids.get(&o.pid) {
                Some(&vpid) => Some(Owner { kind, pid: vpid }),
                None => {
                    tracing::warn!(
                        "{}: its SIGIO owner {} is not part of the tree; the restored file has no owner",
                        fd.what(),
                        o.pid
                    );
                    None
                }
            }
        };
        Ok((owner, sig))
    }

    /// The memory object a mapping is of, with the mapping's offset into
    /// it; None when no kind claims it (private memory, files).
    pub fn mapping(&mut self, proc: &ProcDir, m: &Mapping) -> Result<Option<(u32, u64)>> {
        let Some(kind) = objects::MEMORY_KINDS.iter().find(|k| k.claims_mapping(m)) else { return Ok(None) };
        let (key, make) = kind.identify(proc, m)?;
        let mut make = Some(make);
        let id = self.memory(key, &mut || (make.take().expect("asked once"))())?;
        *self.mappings.entry(id).or_default() += 1;
        Ok(Some((id, m.offset)))
    }

    /// Refuse what is used from outside the tree (before the tree is touched).
    pub fn check_users(&self) -> Result<()> {
        for m in &self.memory {
            let kind = objects::memory_kind(&m.object.kind)?;
            kind.check_users(&m.object.state, self.mappings.get(&m.object.id).copied().unwrap_or(0))?;
        }
        Ok(())
    }

    /// Write each memory object's data (memory-ID.img) and return objects.json.
    pub fn write(self, writer: &mut ImageWriter) -> Result<ObjectsImage> {
        const CHUNK: u64 = 4 << 20;
        let mut memory = Vec::new();
        for PendingMemory { mut object, source } in self.memory {
            let extents = source.extents().with_context(|| format!("memory object {}", object.id))?;
            if !extents.is_empty() {
                let name = crate::image::objects::memory_file(object.id);
                let mut raw = writer.raw(&name)?;
                let mut buf = vec![0u8; CHUNK as usize];
                for &(offset, len) in &extents {
                    let mut at = 0;
                    while at < len {
                        let n = (len - at).min(CHUNK) as usize;
                        source.read_at(offset + at, &mut buf[..n])?;
                        raw.write(&buf[..n])?;
                        at += n as u64;
                    }
                }
                raw.finish(writer)?;
                object.contents = Contents {
                    file: name,
                    extents: extents.iter().map(|&(offset, len)| Extent { offset, len }).collect(),
                };
            }
            memory.push(object);
        }
        let mut files = self.files;
        for (id, bytes) in self.data {
            let name = crate::image::objects::file_data(id);
            let mut raw = writer.raw(&name)?;
            raw.write(&bytes)?;
            raw.finish(writer)?;
            files[id as usize].data = name;
        }
        Ok(ObjectsImage { files, memory })
    }
}

/// The locks held through the description: taken along with
/// `--file-locks` (flock and OFD locks), refused without it, as CRIU does.
/// POSIX record locks are the process's: [`posix_locks`] takes them.
fn locks(fd: &FdProbe) -> Result<Vec<FileLock>> {
    let mut out = Vec::new();
    for l in &fd.info.locks {
        let what =
            format!("{}: {} holds a {} {} lock", fd.what(), fd.link, l.kind, if l.write { "write" } else { "read" });
        let kind = match l.kind.as_str() {
            "FLOCK" => LockKind::Flock,
            "OFDLCK" => LockKind::Ofd,
            "POSIX" => continue,
            _ => bail!("{what}: {} locks are not supported yet", l.kind),
        };
        if !fd.policy.file_locks {
            bail!("{what}: dump with --file-locks to take it along");
        }
        let len = l.end.map_or(0, |end| end - l.start + 1);
        out.push(FileLock { kind, write: l.write, start: l.start, len });
    }
    Ok(out)
}

/// The POSIX record locks the process holds through this fd (fdinfo
/// shows them on the description they were taken with, in their owner
/// only): with `--file-locks` they go with the process's fd entry and are
/// taken again from inside the restored process; refused without it.
pub fn posix_locks(fd: &FdProbe) -> Result<Vec<FileLock>> {
    let mut out = Vec::new();
    for l in fd.info.locks.iter().filter(|l| l.kind == "POSIX") {
        if !fd.policy.file_locks {
            let access = if l.write { "write" } else { "read" };
            bail!("{}: {} holds a POSIX {access} lock: dump with --file-locks to take it along", fd.what(), fd.link);
        }
        let len = l.end.map_or(0, |end| end - l.start + 1);
        out.push(FileLock { kind: LockKind::Posix, write: l.write, start: l.start, len });
    }
    Ok(out)
}

/// Why an fd no kind claims cannot be dumped, naming what it is.
fn refusal(fd: &FdProbe) -> anyhow::Error {
    use std::os::unix::fs::FileTypeExt;
    let name = &fd.link;
    let what = if let Some(rest) = name.strip_prefix("socket:[") {
        format!("{name} ({})", socket_kind(fd.proc, rest.trim_end_matches(']')))
    } else if name.starts_with("pipe:[") {
        format!("{name} (pipe)")
    } else if name.starts_with("anon_inode:") {
        name.clone()
    } else if fd.meta.file_type().is_fifo() {
        format!("{name} (named pipe)")
    } else if fd.meta.file_type().is_socket() {
        format!("{name} (socket)")
    } else if fd.meta.file_type().is_block_device() {
        format!("{name} (block device)")
    } else {
        name.clone()
    };
    anyhow::anyhow!("{}: {what} is not supported yet", fd.what())
}

/// Name the protocol of a socket inode for error messages.
fn socket_kind(proc: &ProcDir, ino: &str) -> &'static str {
    // (file under /proc/PID/net, label, column of the inode)
    const TABLES: [(&str, &str, usize); 9] = [
        ("tcp", "TCP", 9),
        ("tcp6", "TCP", 9),
        ("udp", "UDP", 9),
        ("udp6", "UDP", 9),
        ("unix", "unix", 6),
        ("raw", "raw", 9),
        ("raw6", "raw", 9),
        ("netlink", "netlink", 9),
        ("packet", "packet", 8),
    ];
    for (file, label, col) in TABLES {
        if let Ok(text) = proc.read(&format!("net/{file}")) {
            if text.lines().skip(1).any(|l| l.split_whitespace().nth(col) == Some(ino)) {
                return label;
            }
        }
    }
    "socket"
}
