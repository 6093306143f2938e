//! x86_64: `syscall` (0f 05), number in rax, arguments in rdi rsi rdx r10
//! r8 r9, result in rax as -errno. FPU/SSE/AVX state travels as the
//! kernel's XSAVE blob (NT_X86_XSTATE); TLS is fs_base/gs_base in the GP set.

use crate::{
    hex_regs, negative_errno, nt, pod_bytes, pod_from, restart_codes as rc, sysno_table, wrong_arch, ArchError,
    Backend, CpuRecord, Regset, Restart, Syscall,
};
use serde::{Deserialize, Serialize};

hex_regs! {
    /// `struct user_regs_struct` from <sys/user.h>, the NT_PRSTATUS regset.
    pub struct UserRegs {
        pub r15, pub r14, pub r13, pub r12, pub rbp, pub rbx, pub r11, pub r10,
        pub r9, pub r8, pub rax, pub rcx, pub rdx, pub rsi, pub rdi, pub orig_rax,
        pub rip, pub cs, pub eflags, pub rsp, pub ss, pub fs_base, pub gs_base,
        pub ds, pub es, pub fs, pub gs,
    }
}

/// Everything ferry saves of an x86_64 task's CPU.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub regs: UserRegs,
    /// The XSAVE area exactly as PTRACE_GETREGSET(NT_X86_XSTATE) returned it:
    /// x87, SSE, AVX and whatever else this CPU saves.
    #[serde(with = "crate::hex::bytes")]
    pub xstate: Vec<u8>,
}

/// The x86_64 backend.
pub struct X86_64;

const GP_SIZE: usize = std::mem::size_of::<UserRegs>();

impl Backend for X86_64 {
    const ARCH: crate::Arch = crate::Arch::X86_64;
    const SYSCALL_INSN: &'static [u8] = &[0x0f, 0x05];
    const TRAP_INSN: &'static [u8] = &[0xcc];
    /// Assembled from:
    ///
    /// ```text
    ///         mov %rdi, %r12
    ///         mov %rsi, %r13
    ///     1:  test %r13, %r13
    ///         jz 2f
    ///         mov 0(%r12), %rax
    ///         mov 8(%r12), %rdi
    ///         mov 16(%r12), %rsi
    ///         mov 24(%r12), %rdx
    ///         mov 32(%r12), %r10
    ///         mov 40(%r12), %r8
    ///         mov 48(%r12), %r9
    ///         syscall
    ///         mov %rax, 56(%r12)
    ///         cmp $-4095, %rax
    ///         jae 2f
    ///         add $64, %r12
    ///         dec %r13
    ///         jmp 1b
    ///     2:  int3
    /// ```
    const BATCH_LOOP: Option<&'static [u8]> = Some(&[
        0x49, 0x89, 0xfc, 0x49, 0x89, 0xf5, 0x4d, 0x85, 0xed, 0x74, 0x3a, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c,
        0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d,
        0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x48, 0x3d,
        0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, 0x49, 0x83, 0xc4, 0x40, 0x49, 0xff, 0xcd, 0xeb, 0xc1, 0xcc,
    ]);
    const STACK_RED_ZONE: u64 = 128;
    const INSN_ALIGN: u64 = 1;
    const REGSETS: &'static [Regset] = &[
        Regset { nt: nt::PRSTATUS, name: "NT_PRSTATUS", size: GP_SIZE, variable: false, required: true },
        // Large enough for every XSAVE layout the kernel knows (AMX included).
        Regset { nt: nt::X86_XSTATE, name: "NT_X86_XSTATE", size: 64 * 1024, variable: true, required: true },
    ];
    const INJECTION_REGSETS: &'static [u32] = &[nt::PRSTATUS];

    type State = State;

    fn sysno(call: Syscall) -> u64 {
        sysno_table!(syscall_numbers::x86_64, call)
    }

    fn load_regset(state: &mut State, nt: u32, bytes: &[u8]) -> Result<(), ArchError> {
        match nt {
            nt::PRSTATUS => state.regs = pod_from("NT_PRSTATUS", bytes)?,
            nt::X86_XSTATE => state.xstate = bytes.to_vec(),
            other => return Err(ArchError::UnknownRegset(other)),
        }
        Ok(())
    }

    fn store_regset(state: &State, nt: u32) -> Option<Vec<u8>> {
        match nt {
            nt::PRSTATUS => Some(pod_bytes(&state.regs)),
            nt::X86_XSTATE if !state.xstate.is_empty() => Some(state.xstate.clone()),
            _ => None,
        }
    }

    fn ip(state: &State) -> u64 {
        state.regs.rip
    }

    fn sp(state: &State) -> u64 {
        state.regs.rsp
    }

    fn prepare_syscall(state: &mut State, insn: u64, nr: u64, args: [u64; 6]) {
        let r = &mut state.regs;
        r.rax = nr;
        [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = args;
        r.rip = insn;
        // orig_rax = -1: the kernel must not treat the stop we resume from as
        // an interrupted syscall and "restart" it over our frame.
        r.orig_rax = u64::MAX;
    }

    fn syscall_result(state: &State) -> Result<u64, i32> {
        negative_errno(state.regs.rax)
    }

    fn restart_fixup(state: &mut State) -> Restart {
        let r = &mut state.regs;
        if (r.orig_rax as i64) < 0 {
            return Restart::NotInSyscall;
        }
        let outcome = match -(r.rax as i64) {
            rc::ERESTARTSYS | rc::ERESTARTNOINTR | rc::ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= X86_64::SYSCALL_INSN.len() as u64;
                Restart::Rerun
            }
            rc::ERESTART_RESTARTBLOCK => {
                r.rax = (-rc::EINTR) as u64;
                Restart::Interrupted
            }
            _ => Restart::Completed,
        };
        r.orig_rax = u64::MAX;
        outcome
    }

    fn wrap(state: State) -> CpuRecord {
        CpuRecord::X86_64(state)
    }

    fn unwrap(record: CpuRecord) -> Result<State, ArchError> {
        match record {
            CpuRecord::X86_64(s) => Ok(s),
            other => Err(wrong_arch(other.arch(), Self::ARCH)),
        }
    }
}
