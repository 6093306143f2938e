//! aarch64: `svc #0`, number in x8, arguments in x0-x5, result in x0 as
//! -errno. FP/SIMD state is NT_PRFPREG (`user_fpsimd_state`), TLS is
//! tpidr_el0 (NT_ARM_TLS). Page size is 4K, 16K or 64K: read it at run time.
//!
//! Restart: arm64's do_signal() rewinds pc and restores x0 *before* the
//! ptrace stop, so a tracer already sees the restarted frame. The kernel
//! re-arms ERESTART_RESTARTBLOCK only after the stop, and only when pc still
//! equals the rewound address: an injected syscall must therefore never be
//! placed at that address (ferry uses the vDSO's `svc`). A restored
//! restart-block syscall (nanosleep) runs again with its original arguments.

use crate::{
    negative_errno, nt, pod_bytes, pod_from, sysno_table, wrong_arch, ArchError, Backend, CpuRecord, Regset, Restart,
    Syscall,
};
use serde::{Deserialize, Serialize};

/// `struct user_pt_regs`, the NT_PRSTATUS regset.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize)]
pub struct UserPtRegs {
    #[serde(with = "crate::hex::u64s")]
    pub regs: [u64; 31],
    #[serde(with = "crate::hex::u64")]
    pub sp: u64,
    #[serde(with = "crate::hex::u64")]
    pub pc: u64,
    #[serde(with = "crate::hex::u64")]
    pub pstate: u64,
}

/// `struct user_fpsimd_state`, the NT_PRFPREG regset.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize)]
pub struct FpsimdState {
    #[serde(with = "crate::hex::u128s")]
    pub vregs: [u128; 32],
    #[serde(with = "crate::hex::u32")]
    pub fpsr: u32,
    #[serde(with = "crate::hex::u32")]
    pub fpcr: u32,
    #[serde(with = "crate::hex::u32s")]
    pub reserved: [u32; 2],
}

impl Default for FpsimdState {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub regs: UserPtRegs,
    pub fpsimd: FpsimdState,
    #[serde(with = "crate::hex::u64")]
    pub tpidr_el0: u64,
    /// SME's second TLS register; only kernels with SME report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpidr2_el0: Option<u64>,
}

pub struct Aarch64;

const GP_SIZE: usize = std::mem::size_of::<UserPtRegs>();
const FP_SIZE: usize = std::mem::size_of::<FpsimdState>();

impl Backend for Aarch64 {
    const ARCH: crate::Arch = crate::Arch::Aarch64;
    const SYSCALL_INSN: &'static [u8] = &0xd400_0001u32.to_le_bytes(); // svc #0
    const TRAP_INSN: &'static [u8] = &0xd420_0000u32.to_le_bytes(); // brk #0
    /// Assembled from:
    ///
    /// ```text
    ///         mov x9, x0
    ///         mov x10, x1
    ///     1:  cbz x10, 2f
    ///         ldp x8, x0, [x9]
    ///         ldp x1, x2, [x9, #16]
    ///         ldp x3, x4, [x9, #32]
    ///         ldr x5, [x9, #48]
    ///         svc #0
    ///         str x0, [x9, #56]
    ///         cmn x0, #4095
    ///         b.cs 2f
    ///         add x9, x9, #64
    ///         sub x10, x10, #1
    ///         b 1b
    ///     2:  brk #0
    /// ```
    const BATCH_LOOP: Option<&'static [u8]> = Some(&[
        0xe9, 0x03, 0x00, 0xaa, 0xea, 0x03, 0x01, 0xaa, 0x8a, 0x01, 0x00, 0xb4, 0x28, 0x01, 0x40, 0xa9, 0x21, 0x09,
        0x41, 0xa9, 0x23, 0x11, 0x42, 0xa9, 0x25, 0x19, 0x40, 0xf9, 0x01, 0x00, 0x00, 0xd4, 0x20, 0x1d, 0x00, 0xf9,
        0x1f, 0xfc, 0x3f, 0xb1, 0x82, 0x00, 0x00, 0x54, 0x29, 0x01, 0x01, 0x91, 0x4a, 0x05, 0x00, 0xd1, 0xf5, 0xff,
        0xff, 0x17, 0x00, 0x00, 0x20, 0xd4,
    ]);
    const STACK_RED_ZONE: u64 = 0;
    const INSN_ALIGN: u64 = 4;
    const REGSETS: &'static [Regset] = &[
        Regset { nt: nt::PRSTATUS, name: "NT_PRSTATUS", size: GP_SIZE, variable: false, required: true },
        Regset { nt: nt::PRFPREG, name: "NT_PRFPREG", size: FP_SIZE, variable: false, required: true },
        Regset { nt: nt::ARM_TLS, name: "NT_ARM_TLS", size: 16, variable: true, required: true },
    ];
    const INJECTION_REGSETS: &'static [u32] = &[nt::PRSTATUS];

    type State = State;

    fn sysno(call: Syscall) -> u64 {
        sysno_table!(syscall_numbers::aarch64, call)
    }

    fn load_regset(state: &mut State, nt: u32, bytes: &[u8]) -> Result<(), ArchError> {
        match nt {
            nt::PRSTATUS => state.regs = pod_from("NT_PRSTATUS", bytes)?,
            nt::PRFPREG => state.fpsimd = pod_from("NT_PRFPREG", bytes)?,
            nt::ARM_TLS => match bytes.len() {
                8 => state.tpidr_el0 = pod_from("NT_ARM_TLS", bytes)?,
                16 => {
                    let [a, b]: [u64; 2] = pod_from("NT_ARM_TLS", bytes)?;
                    state.tpidr_el0 = a;
                    state.tpidr2_el0 = Some(b);
                }
                got => return Err(ArchError::RegsetSize { name: "NT_ARM_TLS", got, expected: 8 }),
            },
            other => return Err(ArchError::UnknownRegset(other)),
        }
        Ok(())
    }

    fn store_regset(state: &State, nt: u32) -> Option<Vec<u8>> {
        match nt {
            nt::PRSTATUS => Some(pod_bytes(&state.regs)),
            nt::PRFPREG => Some(pod_bytes(&state.fpsimd)),
            nt::ARM_TLS => Some(match state.tpidr2_el0 {
                Some(t2) => pod_bytes(&[state.tpidr_el0, t2]),
                None => pod_bytes(&state.tpidr_el0),
            }),
            _ => None,
        }
    }

    fn ip(state: &State) -> u64 {
        state.regs.pc
    }

    fn sp(state: &State) -> u64 {
        state.regs.sp
    }

    fn prepare_syscall(state: &mut State, insn: u64, nr: u64, args: [u64; 6]) {
        let r = &mut state.regs;
        r.regs[8] = nr;
        r.regs[..6].copy_from_slice(&args);
        r.pc = insn;
    }

    fn syscall_result(state: &State) -> Result<u64, i32> {
        negative_errno(state.regs.regs[0])
    }

    fn restart_fixup(_state: &mut State) -> Restart {
        Restart::AlreadyRewound
    }

    fn wrap(state: State) -> CpuRecord {
        CpuRecord::Aarch64(state)
    }

    fn unwrap(record: CpuRecord) -> Result<State, ArchError> {
        match record {
            CpuRecord::Aarch64(s) => Ok(s),
            other => Err(wrong_arch(other.arch(), Self::ARCH)),
        }
    }
}
