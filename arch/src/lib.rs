//! Everything ferry needs to know that differs between architectures, and
//! nothing else.
//!
//! Each backend (`x86_64`, `aarch64`, `ppc64le`, `s390x`) is plain data and
//! pure functions over `#[repr(C)]` register layouts defined here, so all
//! four compile and are tested on any host. The only host-dependent item is
//! [`Native`], the backend of the architecture ferry was compiled for;
//! callers use it and never name an architecture.

pub mod aarch64;
pub mod hex;
pub mod ppc64le;
pub mod s390x;
pub mod x86_64;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;

/// An architecture ferry supports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
    Ppc64le,
    S390x,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Ppc64le, Arch::S390x];

    /// The name used in images, on the command line and in Rust target triples.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Self, ArchError> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| ArchError::UnknownArch(s.to_string()))
    }
}

/// Declares [`Syscall`] and its list of every variant.
macro_rules! syscall_list {
    ($($name:ident,)*) => {
        /// The syscalls ferry injects into a stopped task, independent of numbering.
        #[derive(Copy, Clone, Debug, PartialEq, Eq)]
        pub enum Syscall { $($name,)* }

        impl Syscall {
            /// Every syscall ferry may inject (each backend numbers all of them).
            pub const ALL: &'static [Syscall] = &[$(Syscall::$name,)*];
        }
    };
}

syscall_list! {
    Brk,
    Close,
    CloseRange,
    Getitimer,
    Madvise,
    Mmap,
    Mprotect,
    Mremap,
    Mseal,
    Munmap,
    Prctl,
    Preadv,
    Rseq,
    RtSigaction,
    RtSigqueueinfo,
    RtTgsigqueueinfo,
    Setitimer,
    Setfsgid,
    Setfsuid,
    Setgroups,
    Setresgid,
    Setresuid,
    Capset,
    Sigaltstack,
    Userfaultfd,
    Ioctl,
    Clone3,
    SetRobustList,
    SetTidAddress,
    SchedSetattr,
    Setpgid,
    RtSigtimedwait,
    ExitGroup,
    Mlock2,
    Shmat,
    Wait4,
    Fcntl,
    Seccomp,
}

/// ELF note types naming the ptrace register sets (PTRACE_GETREGSET).
pub mod nt {
    pub const PRSTATUS: u32 = 1;
    pub const PRFPREG: u32 = 2;
    pub const X86_XSTATE: u32 = 0x202;
    pub const PPC_VMX: u32 = 0x100;
    pub const PPC_VSX: u32 = 0x102;
    pub const S390_SYSTEM_CALL: u32 = 0x307;
    pub const S390_VXRS_LOW: u32 = 0x309;
    pub const S390_VXRS_HIGH: u32 = 0x30a;
    pub const ARM_TLS: u32 = 0x401;
    pub const ARM_SYSTEM_CALL: u32 = 0x404;
}

/// One register set that is part of a task's CPU state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Regset {
    /// ELF note type passed to PTRACE_GETREGSET / PTRACE_SETREGSET.
    pub nt: u32,
    pub name: &'static str,
    /// Exact size, or the largest size the kernel may return when variable.
    pub size: usize,
    /// Variable-length regsets (x86 xstate) report their real size in iov_len.
    pub variable: bool,
    /// A missing optional regset (e.g. no vector unit) is recorded as absent.
    pub required: bool,
}

/// How a task that was stopped inside a syscall must resume.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// The task was not inside a syscall.
    NotInSyscall,
    /// The syscall had completed; its result stays as it is.
    Completed,
    /// Rewound: the syscall instruction runs again with its original arguments.
    Rerun,
    /// The kernel's per-task restart state cannot survive a checkpoint, so the
    /// syscall returns EINTR (what the kernel does when the restart block is gone).
    Interrupted,
    /// The kernel already rewound the task before the stop (aarch64).
    AlreadyRewound,
}

/// Kernel-internal syscall return values that ask for a restart.
pub mod restart_codes {
    pub const ERESTARTSYS: i64 = 512;
    pub const ERESTARTNOINTR: i64 = 513;
    pub const ERESTARTNOHAND: i64 = 514;
    pub const ERESTART_RESTARTBLOCK: i64 = 516;
    pub const EINTR: i64 = 4;
}

/// Errors of this crate: bad register blobs in images or from the kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchError {
    #[error("unknown architecture {0:?} (known: x86_64, aarch64, ppc64le, s390x)")]
    UnknownArch(String),
    #[error("register set {name} has {got} bytes, expected {expected}")]
    RegsetSize { name: &'static str, got: usize, expected: usize },
    #[error("register set with note type {0:#x} is not part of this architecture")]
    UnknownRegset(u32),
    #[error("image is for {image}, this is {host}")]
    WrongArch { image: Arch, host: Arch },
}

/// What every architecture backend provides. Implementations are zero-sized
/// markers; all functions are pure.
pub trait Backend {
    const ARCH: Arch;
    /// The syscall instruction, as it sits in memory.
    const SYSCALL_INSN: &'static [u8];
    /// An instruction that traps (SIGTRAP) if execution ever runs past an
    /// injected syscall.
    const TRAP_INSN: &'static [u8];
    /// Bytes below the stack pointer that the ABI lets the running code use
    /// without moving the stack pointer; scratch data must stay below them.
    const STACK_RED_ZONE: u64;
    /// Alignment of instruction addresses.
    const INSN_ALIGN: u64;
    /// A loop that runs a table of syscalls inside the task with one stop:
    /// entered (through [`Backend::prepare_syscall`]'s frame) with the
    /// table's address and its number of entries as the first two syscall
    /// arguments; each entry is eight words (number, six arguments, result,
    /// a negative errno on failure); it stops at a trap after the last entry
    /// or after the first that fails. Machine code as data, assembled once
    /// from the source beside it; `None`: one injection per syscall.
    const BATCH_LOOP: Option<&'static [u8]> = None;
    /// s390x's mmap is the old one-argument form: the six values sit in
    /// memory and the syscall gets their address.
    const MMAP_ARGS_IN_MEMORY: bool = false;
    /// The register sets that together form [`Backend::State`].
    const REGSETS: &'static [Regset];
    /// The register sets written to set up each injected syscall.
    const INJECTION_REGSETS: &'static [u32];

    /// The whole CPU state of a task: what goes into the image.
    type State: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + Default;

    fn sysno(call: Syscall) -> u64;

    /// Fill `state` from the bytes of one register set.
    fn load_regset(state: &mut Self::State, nt: u32, bytes: &[u8]) -> Result<(), ArchError>;
    /// The bytes of one register set, as PTRACE_SETREGSET wants them.
    /// `None` when the state does not hold that set (an absent optional one).
    fn store_regset(state: &Self::State, nt: u32) -> Option<Vec<u8>>;

    fn ip(state: &Self::State) -> u64;
    fn sp(state: &Self::State) -> u64;

    /// Turn `state` into the frame that executes syscall `nr` with `args` from
    /// the syscall instruction at `insn`, with no restart pending.
    fn prepare_syscall(state: &mut Self::State, insn: u64, nr: u64, args: [u64; 6]);
    /// The result of a completed injected syscall: the value or the errno.
    fn syscall_result(state: &Self::State) -> Result<u64, i32>;

    /// Apply the kernel's syscall-restart logic for a task that will resume
    /// somewhere its restart block does not exist (a restored task).
    fn restart_fixup(state: &mut Self::State) -> Restart;

    fn wrap(state: Self::State) -> CpuRecord;
    fn unwrap(record: CpuRecord) -> Result<Self::State, ArchError>;
}

/// The per-architecture CPU state record stored in an image. Built once
/// per task, so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum CpuRecord {
    X86_64(x86_64::State),
    Aarch64(aarch64::State),
    Ppc64le(ppc64le::State),
    S390x(s390x::State),
}

impl CpuRecord {
    pub fn arch(&self) -> Arch {
        match self {
            CpuRecord::X86_64(_) => Arch::X86_64,
            CpuRecord::Aarch64(_) => Arch::Aarch64,
            CpuRecord::Ppc64le(_) => Arch::Ppc64le,
            CpuRecord::S390x(_) => Arch::S390x,
        }
    }

    /// The stack pointer the thread resumes with.
    pub fn sp(&self) -> u64 {
        match self {
            CpuRecord::X86_64(s) => x86_64::X86_64::sp(s),
            CpuRecord::Aarch64(s) => aarch64::Aarch64::sp(s),
            CpuRecord::Ppc64le(s) => ppc64le::Ppc64le::sp(s),
            CpuRecord::S390x(s) => s390x::S390x::sp(s),
        }
    }
}

/// Map ferry's syscall list onto one architecture's numbering.
macro_rules! sysno_table {
    ($table:path, $call:expr) => {{
        use $crate::Syscall as S;
        use $table as T;
        (match $call {
            S::Brk => T::SYS_brk,
            S::Close => T::SYS_close,
            S::CloseRange => T::SYS_close_range,
            S::Getitimer => T::SYS_getitimer,
            S::Madvise => T::SYS_madvise,
            S::Mmap => T::SYS_mmap,
            S::Mprotect => T::SYS_mprotect,
            S::Mremap => T::SYS_mremap,
            S::Mseal => T::SYS_mseal,
            S::Munmap => T::SYS_munmap,
            S::Prctl => T::SYS_prctl,
            S::Preadv => T::SYS_preadv,
            S::Rseq => T::SYS_rseq,
            S::RtSigaction => T::SYS_rt_sigaction,
            S::RtSigqueueinfo => T::SYS_rt_sigqueueinfo,
            S::RtTgsigqueueinfo => T::SYS_rt_tgsigqueueinfo,
            S::Setitimer => T::SYS_setitimer,
            S::Setfsgid => T::SYS_setfsgid,
            S::Setfsuid => T::SYS_setfsuid,
            S::Setgroups => T::SYS_setgroups,
            S::Setresgid => T::SYS_setresgid,
            S::Setresuid => T::SYS_setresuid,
            S::Capset => T::SYS_capset,
            S::Sigaltstack => T::SYS_sigaltstack,
            S::Userfaultfd => T::SYS_userfaultfd,
            S::Ioctl => T::SYS_ioctl,
            S::Clone3 => T::SYS_clone3,
            S::SetRobustList => T::SYS_set_robust_list,
            S::SetTidAddress => T::SYS_set_tid_address,
            S::SchedSetattr => T::SYS_sched_setattr,
            S::Setpgid => T::SYS_setpgid,
            S::RtSigtimedwait => T::SYS_rt_sigtimedwait,
            S::ExitGroup => T::SYS_exit_group,
            S::Mlock2 => T::SYS_mlock2,
            S::Shmat => T::SYS_shmat,
            S::Wait4 => T::SYS_wait4,
            S::Fcntl => T::SYS_fcntl,
            S::Seccomp => T::SYS_seccomp,
        }) as u64
    }};
}
pub(crate) use sysno_table;

/// A `#[repr(C)]` register block of 64-bit registers, shown as hex in images.
macro_rules! hex_regs {
    ($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(
            Copy, Clone, Debug, Default, PartialEq, Eq,
            bytemuck::Pod, bytemuck::Zeroable, serde::Serialize, serde::Deserialize,
        )]
        pub struct $name {
            $( #[serde(with = "crate::hex::u64")] pub $f: u64, )*
        }
    };
}
pub(crate) use hex_regs;

pub(crate) fn wrong_arch(image: Arch, host: Arch) -> ArchError {
    ArchError::WrongArch { image, host }
}

/// Copy a register blob into a plain-old-data struct, checking its size.
pub(crate) fn pod_from<T: bytemuck::Pod + bytemuck::Zeroable>(
    name: &'static str,
    bytes: &[u8],
) -> Result<T, ArchError> {
    let expected = std::mem::size_of::<T>();
    if bytes.len() != expected {
        return Err(ArchError::RegsetSize { name, got: bytes.len(), expected });
    }
    Ok(bytemuck::pod_read_unaligned(bytes))
}

pub(crate) fn pod_bytes<T: bytemuck::Pod>(v: &T) -> Vec<u8> {
    bytemuck::bytes_of(v).to_vec()
}

/// Linux-style error decoding shared by the architectures that return
/// `-errno` in a register.
/// A raw syscall return: the value, or the errno of a -4095..-1 return.
pub fn negative_errno(ret: u64) -> Result<u64, i32> {
    let v = ret as i64;
    if (-4095..0).contains(&v) {
        Err((-v) as i32)
    } else {
        Ok(ret)
    }
}

#[cfg(target_arch = "x86_64")]
pub type Native = x86_64::X86_64;
#[cfg(target_arch = "aarch64")]
pub type Native = aarch64::Aarch64;
#[cfg(target_arch = "powerpc64")]
pub type Native = ppc64le::Ppc64le;
#[cfg(target_arch = "s390x")]
pub type Native = s390x::S390x;

/// The CPU state type of the architecture ferry runs on.
pub type NativeState = <Native as Backend>::State;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
        }
        assert!("sparc".parse::<Arch>().is_err());
    }

    #[test]
    fn native_numbers_match_libc_headers() {
        // The tables come from the `syscall-numbers` crate; the host's own C headers
        // must agree for the backend ferry runs on.
        let pairs: &[(Syscall, libc::c_long)] = &[
            (Syscall::Mmap, libc::SYS_mmap),
            (Syscall::Munmap, libc::SYS_munmap),
            (Syscall::Mremap, libc::SYS_mremap),
            (Syscall::Rseq, libc::SYS_rseq),
            (Syscall::Preadv, libc::SYS_preadv),
            (Syscall::Prctl, libc::SYS_prctl),
            (Syscall::CloseRange, libc::SYS_close_range),
            (Syscall::RtTgsigqueueinfo, libc::SYS_rt_tgsigqueueinfo),
        ];
        for (call, nr) in pairs {
            assert_eq!(Native::sysno(*call) as libc::c_long, *nr, "{call:?}");
        }
    }
}
