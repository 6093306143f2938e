//! task-PID.json: everything about one task except its page contents.

use crate::proc::limits::Limit;
use ferry_arch::{hex, CpuRecord, Restart};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One process: what its threads share (memory, files, signal handlers,
/// limits...) and, in `threads`, what each thread has of its own. File
/// descriptors and shared memory refer to objects of objects.json by id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskImage {
    /// The PID in the tree's own PID namespace (the image's key).
    #[serde(deserialize_with = "checked::pid")]
    pub pid: i32,
    pub comm: String,
    /// The task was stopped (SIGSTOP) when dumped and is stopped again after restore.
    pub stopped: bool,
    pub ids: Ids,
    pub fs: FsState,
    pub personality: u32,
    pub rlimits: Vec<Limit>,
    /// Every signal but SIGKILL and SIGSTOP, in number order.
    pub sigactions: Vec<SigAction>,
    /// Signals queued for the whole process (kill), not one thread.
    pub shared_pending: Vec<PendingSignal>,
    pub itimers: ITimers,
    pub prctl: PrctlState,
    pub mm: MmState,
    #[serde(deserialize_with = "checked::vmas")]
    pub vmas: Vec<Vma>,
    #[serde(deserialize_with = "checked::fds")]
    pub fds: Vec<Fd>,
    /// The main thread first (its TID is the PID).
    #[serde(deserialize_with = "checked::threads")]
    pub threads: Vec<ThreadImage>,
}

/// Checks made as a task image is read, so that no reader meets a task
/// whose numbers cannot be right: a PID the kernel could not give, areas
/// that overlap, leave user memory or are not page-aligned, fd numbers
/// beyond the kernel's limit, no threads.
mod checked {
    use super::{Fd, ThreadImage, Vma};
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    use crate::image::PID_MAX;
    /// The kernel's limit on fs.nr_open.
    const FD_MAX: i32 = 1 << 30;

    pub fn pid<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        let pid = i32::deserialize(d)?;
        if !(1..=PID_MAX).contains(&pid) {
            return Err(D::Error::custom(format!("PID {pid} is not one the kernel gives")));
        }
        Ok(pid)
    }

    pub fn vmas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vma>, D::Error> {
        let vmas = Vec::<Vma>::deserialize(d)?;
        let mut end = 0;
        for v in &vmas {
            let why = if v.start % 4096 != 0 || v.end % 4096 != 0 {
                "is not page-aligned"
            } else if v.start >= v.end || v.end > crate::image::pagemap::USER_LIMIT {
                "is empty or outside user memory"
            } else if v.start < end {
                "overlaps or precedes the area before it"
            } else if v.prot.len() != 4 || !v.prot.is_ascii() {
                "has no rwxp protection"
            } else {
                end = v.end;
                continue;
            };
            return Err(D::Error::custom(format!("memory area {:#x}-{:#x} {why}", v.start, v.end)));
        }
        Ok(vmas)
    }

    pub fn fds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Fd>, D::Error> {
        let fds = Vec::<Fd>::deserialize(d)?;
        let mut seen = std::collections::HashSet::new();
        for f in &fds {
            if !(0..FD_MAX).contains(&f.fd) || !seen.insert(f.fd) {
                return Err(D::Error::custom(format!("fd {} is out of range or listed twice", f.fd)));
            }
        }
        Ok(fds)
    }

    pub fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ThreadImage>, D::Error> {
        let threads = Vec::<ThreadImage>::deserialize(d)?;
        if threads.is_empty() {
            return Err(D::Error::custom("a task with no threads"));
        }
        if let Some(t) = threads.iter().find(|t| !(1..=PID_MAX).contains(&t.tid)) {
            return Err(D::Error::custom(format!("thread ID {} is not one the kernel gives", t.tid)));
        }
        Ok(threads)
    }

    #[cfg(test)]
    mod tests {
        use super::super::Vma;

        fn vmas(list: &str) -> Result<Vec<Vma>, String> {
            let mut d = serde_json::Deserializer::from_str(list);
            super::vmas(&mut d).map_err(|e| e.to_string())
        }

        fn vma(start: u64, end: u64) -> String {
            format!(
                r#"{{"start": "{start:#x}", "end": "{end:#x}", "prot": "rw-p", "kind": {{"type": "anon"}}, "growsdown": false, "noreserve": false, "may_write": true, "locked": false, "sealed": false}}"#
            )
        }

        #[test]
        fn areas_out_of_order_unaligned_or_outside_user_memory_are_refused() {
            assert!(vmas(&format!("[{}, {}]", vma(0x1000, 0x3000), vma(0x3000, 0x4000))).is_ok());
            // end < start made `len()` underflow in `ferry show`.
            assert!(vmas(&format!("[{}]", vma(0x3000, 0x1000))).unwrap_err().contains("empty or outside"));
            assert!(vmas(&format!("[{}, {}]", vma(0x1000, 0x3000), vma(0x2000, 0x4000)))
                .unwrap_err()
                .contains("overlaps"));
            assert!(vmas(&format!("[{}]", vma(0x1001, 0x3000))).unwrap_err().contains("page-aligned"));
            assert!(vmas(&format!("[{}]", vma(0xffff_8000_0000_0000, 0xffff_8000_0000_1000)))
                .unwrap_err()
                .contains("outside"));
        }
    }
}

impl TaskImage {
    pub fn main_thread(&self) -> &ThreadImage {
        &self.threads[0]
    }
}

/// What one thread has of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadImage {
    pub tid: i32,
    pub comm: String,
    pub creds: Creds,
    #[serde(with = "hex::u64")]
    pub blocked: u64,
    /// Signals queued for this thread (tgkill).
    pub pending: Vec<PendingSignal>,
    pub altstack: AltStack,
    pub rseq: Option<Rseq>,
    /// set_robust_list: the list head and its size (0 when never set).
    #[serde(with = "hex::u64")]
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// set_tid_address / CLONE_CHILD_CLEARTID: cleared and woken at exit.
    #[serde(with = "hex::u64")]
    pub clear_child_tid: u64,
    pub pdeathsig: i32,
    pub sched: Sched,
    /// Its seccomp filters, oldest first (mode 2; none: mode 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seccomp: Vec<SeccompFilter>,
    pub cpu: CpuRecord,
    /// What the restart fix-up did to the registers (informational).
    pub restart: Restart,
}

/// One seccomp filter: its flags (SECCOMP_FILTER_FLAG_LOG) and its
/// classic BPF program, each instruction (struct sock_filter: code, jt,
/// jf, k) as the 8 bytes the kernel gave, read as one number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    pub flags: u64,
    pub program: Vec<u64>,
}

/// Scheduling policy and parameters (sched_getattr).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sched {
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
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
    /// The cwd was deleted (rmdir'ed while the task was in it): `cwd` is
    /// where it was, this its mode and owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd_deleted: Option<DeletedDir>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedDir {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
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
    /// mlock'ed or MAP_LOCKED (VM_LOCKED).
    pub locked: bool,
    /// Locked with MLOCK_ONFAULT (pages are locked as they are touched).
    #[serde(default)]
    pub lock_on_fault: bool,
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
    /// A mapping of a memory object of objects.json (shared anonymous
    /// memory, a memfd, a System V segment), shared or private.
    Object {
        object: u32,
        #[serde(with = "hex::u64")]
        offset: u64,
    },
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

/// One entry of the fd table: its number, its close-on-exec flag (the
/// only per-fd state) and the open file description it refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    /// Id of the file description in objects.json.
    pub file: u32,
    /// POSIX record locks the process took through this fd (`--file-locks`):
    /// they belong to the process, not to the description.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posix_locks: Vec<crate::image::objects::FileLock>,
}
