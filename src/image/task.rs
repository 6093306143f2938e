//! task-PID.json: everything about one task except its page contents.

use crate::proc::limits::Limit;
use ferry_arch::{hex, CpuRecord, Restart};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskImage {
    pub pid: i32,
    pub comm: String,
    /// The task was stopped (SIGSTOP) when dumped and is stopped again after restore.
    pub stopped: bool,
    pub ids: Ids,
    pub creds: Creds,
    pub fs: FsState,
    pub personality: u32,
    pub rlimits: Vec<Limit>,
    pub signals: Signals,
    pub itimers: ITimers,
    pub prctl: PrctlState,
    pub rseq: Option<Rseq>,
    pub mm: MmState,
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
    pub cpu: CpuRecord,
    /// What the restart fix-up did to the registers (informational).
    pub restart: Restart,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Controlling terminal device number (0: none).
    pub tty_nr: u32,
    /// Foreground process group of that terminal.
    pub tpgid: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// real, effective, saved, filesystem
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    #[serde(with = "hex::u64")]
    pub cap_inh: u64,
    #[serde(with = "hex::u64")]
    pub cap_prm: u64,
    #[serde(with = "hex::u64")]
    pub cap_eff: u64,
    #[serde(with = "hex::u64")]
    pub cap_bnd: u64,
    #[serde(with = "hex::u64")]
    pub cap_amb: u64,
    pub securebits: u32,
    pub no_new_privs: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    pub cwd: PathBuf,
    pub root: PathBuf,
    pub umask: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    #[serde(with = "hex::u64")]
    pub blocked: u64,
    /// Every signal but SIGKILL and SIGSTOP, in number order.
    pub actions: Vec<SigAction>,
    pub pending: Vec<PendingSignal>,
    pub altstack: AltStack,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: i32,
    /// SIG_DFL = 0, SIG_IGN = 1, else the handler's address.
    #[serde(with = "hex::u64")]
    pub handler: u64,
    #[serde(with = "hex::u64")]
    pub flags: u64,
    #[serde(with = "hex::u64")]
    pub restorer: u64,
    #[serde(with = "hex::u64")]
    pub mask: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignal {
    /// Queued for the whole process (kill) rather than this thread (tgkill).
    pub shared: bool,
    pub signo: i32,
    /// The kernel's siginfo_t, 128 bytes.
    #[serde(with = "hex::bytes")]
    pub siginfo: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    #[serde(with = "hex::u64")]
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

/// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF: interval and value in µs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimers {
    pub real: [u64; 2],
    #[serde(rename = "virtual")]
    pub virt: [u64; 2],
    pub prof: [u64; 2],
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrctlState {
    pub pdeathsig: i32,
    pub dumpable: i32,
    pub thp_disable: bool,
    pub child_subreaper: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    #[serde(with = "hex::u64")]
    pub addr: u64,
    pub len: u32,
    #[serde(with = "hex::u32")]
    pub sig: u32,
}

/// The mm fields PR_SET_MM_MAP restores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmState {
    #[serde(with = "hex::u64")]
    pub start_code: u64,
    #[serde(with = "hex::u64")]
    pub end_code: u64,
    #[serde(with = "hex::u64")]
    pub start_data: u64,
    #[serde(with = "hex::u64")]
    pub end_data: u64,
    #[serde(with = "hex::u64")]
    pub start_brk: u64,
    #[serde(with = "hex::u64")]
    pub brk: u64,
    #[serde(with = "hex::u64")]
    pub start_stack: u64,
    #[serde(with = "hex::u64")]
    pub arg_start: u64,
    #[serde(with = "hex::u64")]
    pub arg_end: u64,
    #[serde(with = "hex::u64")]
    pub env_start: u64,
    #[serde(with = "hex::u64")]
    pub env_end: u64,
    /// The saved auxiliary vector (pairs of type, value).
    pub auxv: Vec<u64>,
    pub exe: FileId,
}

/// A file as it was at dump time, to find it again and notice if it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    #[serde(with = "hex::u64")]
    pub start: u64,
    #[serde(with = "hex::u64")]
    pub end: u64,
    /// "rwxp"-style, as in /proc/PID/maps.
    pub prot: String,
    pub kind: VmaKind,
    /// `[heap]`, `[stack]`, `[anon:name]`: the kernel's label, informational
    /// except for `[anon:…]`, which is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub growsdown: bool,
    pub noreserve: bool,
    /// Whether a shared mapping may be made writable (VM_MAYWRITE).
    pub may_write: bool,
    /// madvise() state: dontdump, dontfork, wipeonfork, hugepage, nohugepage, mergeable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advice: Vec<Advice>,
    pub locked: bool,
    pub sealed: bool,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    pub fn readable(&self) -> bool {
        self.prot.as_bytes()[0] == b'r'
    }
    pub fn writable(&self) -> bool {
        self.prot.as_bytes()[1] == b'w'
    }
    pub fn executable(&self) -> bool {
        self.prot.as_bytes()[2] == b'x'
    }
    pub fn shared(&self) -> bool {
        self.prot.as_bytes()[3] == b's'
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum VmaKind {
    /// Private anonymous memory (heap, stacks, malloc arenas, guards).
    Anon,
    /// MAP_SHARED|MAP_ANONYMOUS memory, owned by this task alone.
    SharedAnon,
    /// A file mapping, private or shared.
    File {
        file: FileId,
        #[serde(with = "hex::u64")]
        offset: u64,
    },
    /// Kernel-provided areas that are moved, not recreated.
    Vdso,
    Vvar,
    VvarVclock,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Advice {
    DontDump,
    DontFork,
    WipeOnFork,
    HugePage,
    NoHugePage,
    Mergeable,
}

impl Advice {
    /// The smaps VmFlags letters and the advice that recreates each.
    pub const FROM_VMFLAGS: [(&'static str, Advice); 6] = [
        ("dd", Advice::DontDump),
        ("dc", Advice::DontFork),
        ("wf", Advice::WipeOnFork),
        ("hg", Advice::HugePage),
        ("nh", Advice::NoHugePage),
        ("mg", Advice::Mergeable),
    ];

    pub fn madvise(self) -> i32 {
        match self {
            Advice::DontDump => libc::MADV_DONTDUMP,
            Advice::DontFork => libc::MADV_DONTFORK,
            Advice::WipeOnFork => libc::MADV_WIPEONFORK,
            Advice::HugePage => libc::MADV_HUGEPAGE,
            Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
            Advice::Mergeable => libc::MADV_MERGEABLE,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    /// open(2) flags without O_CLOEXEC (access mode, O_APPEND, O_NONBLOCK…).
    #[serde(with = "hex::u32")]
    pub flags: u32,
    pub kind: FdKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FdKind {
    /// A regular file, reopened by path at its offset.
    File {
        file: FileId,
        pos: u64,
    },
    Directory {
        path: PathBuf,
        pos: u64,
    },
    /// A character device (/dev/null, /dev/urandom…), reopened by path.
    CharDevice {
        path: PathBuf,
        rdev: u64,
    },
    /// A terminal; restoring it needs --shell-job.
    Tty {
        path: PathBuf,
        rdev: u64,
    },
}
