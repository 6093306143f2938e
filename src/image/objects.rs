//! objects.json: what the processes of the tree share, each with an id
//! that fd tables and memory maps refer to. Each object has a kind (one
//! module of `crate::objects` each) and the kind's own state.

use ferry_arch::hex;
use serde::{Deserialize, Serialize};

pub const OBJECTS: &str = "objects.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectsImage {
    /// Open file descriptions: every fd (in any process) that refers to
    /// one of them shares its offset and status flags, as in the kernel.
    pub files: Vec<FileObject>,
    /// Memory that processes map or hold open: shared anonymous memory,
    /// memfd, System V segments.
    pub memory: Vec<MemoryObject>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: u32,
    pub kind: String,
    /// open(2) status flags without O_CLOEXEC (access mode, O_APPEND,
    /// O_NONBLOCK, O_ASYNC...).
    #[serde(with = "hex::u32")]
    pub flags: u32,
    /// Who gets SIGIO/SIGURG for it (F_SETOWN_EX), if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// F_SETSIG: the signal sent instead of SIGIO (0: SIGIO).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub signal: i32,
    /// The kind's own record.
    pub state: serde_json::Value,
    /// The image file holding bytes that go with it (a pipe's data in
    /// flight), if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// Locks held through it (`--file-locks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<FileLock>,
}

/// A lock that belongs to an open file description: flock(2), or an OFD
/// record lock (F_OFD_SETLK).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    pub kind: LockKind,
    pub write: bool,
    pub start: u64,
    /// Bytes; 0 for "to the end of the file" (as struct flock says).
    pub len: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockKind {
    Flock,
    Ofd,
    /// A POSIX record lock (fcntl F_SETLK): the process's, kept on its fd
    /// entry rather than on the description.
    Posix,
}

impl FileLock {
    /// "POSIX write lock on bytes 0-99", for `ferry show`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            LockKind::Flock => "flock",
            LockKind::Ofd => "OFD",
            LockKind::Posix => "POSIX",
        };
        let access = if self.write { "write" } else { "read" };
        let range = match (self.kind, self.len) {
            (LockKind::Flock, _) => String::new(),
            (_, 0) => format!(" on bytes {}-EOF", self.start),
            (_, n) => format!(" on bytes {}-{}", self.start, self.start + n - 1),
        };
        format!("{kind} {access} lock{range}")
    }
}

/// The image file of a file object's data.
pub fn file_data(id: u32) -> String {
    format!("file-{id}.img")
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP.
    pub kind: OwnerKind,
    /// In the tree's PID namespace.
    pub pid: i32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnerKind {
    Thread,
    Process,
    ProcessGroup,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryObject {
    pub id: u32,
    pub kind: String,
    /// Bytes (the object's size, not what is mapped of it).
    pub size: u64,
    /// Where its data is: runs of pages back to back in `file`.
    pub contents: Contents,
    /// The kind's own record.
    pub state: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// The image file holding the data (absent when there is none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    pub extents: Vec<Extent>,
}

/// `len` bytes at `offset` of the object; in the contents file they
/// follow the previous extent's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    #[serde(with = "hex::u64")]
    pub offset: u64,
    pub len: u64,
}

impl Contents {
    pub fn bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

impl ObjectsImage {
    pub fn file(&self, id: u32) -> Option<&FileObject> {
        self.files.iter().find(|f| f.id == id)
    }
    pub fn memory(&self, id: u32) -> Option<&MemoryObject> {
        self.memory.iter().find(|m| m.id == id)
    }
}

pub fn memory_file(id: u32) -> String {
    format!("memory-{id}.img")
}
