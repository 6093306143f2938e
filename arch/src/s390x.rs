//! s390x: `svc 0` with the number in r1, arguments in r2-r7, result in r2 as
//! -errno. The PSW holds the instruction address. FP is NT_PRFPREG, vectors
//! NT_S390_VXRS_LOW/HIGH, TLS the access registers a0/a1 (part of the GP
//! set). Whether the task sits in a syscall, and the length of the
//! instruction that entered it, is NT_S390_SYSTEM_CALL. mmap is the old
//! one-argument form.

use crate::{
    negative_errno, nt, pod_bytes, pod_from, restart_codes as rc, sysno_table, wrong_arch, ArchError, Backend,
    CpuRecord, Regset, Restart, Syscall,
};
use serde::{Deserialize, Serialize};

/// `s390_regs`: PSW, 16 GPRs, 16 access registers, orig_gpr2 (NT_PRSTATUS).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize)]
pub struct S390Regs {
    #[serde(with = "crate::hex::u64")]
    pub psw_mask: u64,
    #[serde(with = "crate::hex::u64")]
    pub psw_addr: u64,
    #[serde(with = "crate::hex::u64s")]
    pub gprs: [u64; 16],
    #[serde(with = "crate::hex::u32s")]
    pub acrs: [u32; 16],
    #[serde(with = "crate::hex::u64")]
    pub orig_gpr2: u64,
}

/// `s390_fp_regs` (NT_PRFPREG).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize)]
pub struct FpRegs {
    #[serde(with = "crate::hex::u32")]
    pub fpc: u32,
    #[serde(with = "crate::hex::u32")]
    pub pad: u32,
    #[serde(with = "crate::hex::u64s")]
    pub fprs: [u64; 16],
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub regs: S390Regs,
    pub fp: FpRegs,
    /// Right halves of V0-V15 (the left halves are the FPRs).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_low")]
    pub vxrs_low: Option<[u64; 16]>,
    /// V16-V31.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_high")]
    pub vxrs_high: Option<[u128; 16]>,
    /// Non-zero while the task is inside a syscall: instruction length << 16 | svc code.
    #[serde(with = "crate::hex::u32")]
    pub system_call: u32,
}

mod opt_low {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    #[derive(Serialize, Deserialize)]
    struct Low(#[serde(with = "crate::hex::u64s")] [u64; 16]);
    pub fn serialize<S: Serializer>(v: &Option<[u64; 16]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Low).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u64; 16]>, D::Error> {
        Ok(Option::<Low>::deserialize(d)?.map(|v| v.0))
    }
}

mod opt_high {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    #[derive(Serialize, Deserialize)]
    struct High(#[serde(with = "crate::hex::u128s")] [u128; 16]);
    pub fn serialize<S: Serializer>(v: &Option<[u128; 16]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(High).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u128; 16]>, D::Error> {
        Ok(Option::<High>::deserialize(d)?.map(|v| v.0))
    }
}

pub struct S390x;

const GP_SIZE: usize = std::mem::size_of::<S390Regs>();
const FP_SIZE: usize = std::mem::size_of::<FpRegs>();

impl Backend for S390x {
    const ARCH: crate::Arch = crate::Arch::S390x;
    const SYSCALL_INSN: &'static [u8] = &[0x0a, 0x00]; // svc 0
    const TRAP_INSN: &'static [u8] = &[0x00, 0x01]; // illegal op, the kernel's breakpoint
    /// Assembled from:
    ///
    /// ```text
    ///         lgr %r8, %r2
    ///         lgr %r9, %r3
    ///     1:  ltgr %r9, %r9
    ///         jz 2f
    ///         lg %r1, 0(%r8)
    ///         lg %r2, 8(%r8)
    ///         lg %r3, 16(%r8)
    ///         lg %r4, 24(%r8)
    ///         lg %r5, 32(%r8)
    ///         lg %r6, 40(%r8)
    ///         lg %r7, 48(%r8)
    ///         svc 0
    ///         stg %r2, 56(%r8)
    ///         lghi %r0, -4095
    ///         clgr %r2, %r0
    ///         jhe 2f
    ///         la %r8, 64(%r8)
    ///         aghi %r9, -1
    ///         j 1b
    ///     2:  .word 0x0001
    /// ```
    const BATCH_LOOP: Option<&'static [u8]> = Some(&[
        0xb9, 0x04, 0x00, 0x82, 0xb9, 0x04, 0x00, 0x93, 0xb9, 0x02, 0x00, 0x99, 0xa7, 0x84, 0x00, 0x27, 0xe3, 0x10,
        0x80, 0x00, 0x00, 0x04, 0xe3, 0x20, 0x80, 0x08, 0x00, 0x04, 0xe3, 0x30, 0x80, 0x10, 0x00, 0x04, 0xe3, 0x40,
        0x80, 0x18, 0x00, 0x04, 0xe3, 0x50, 0x80, 0x20, 0x00, 0x04, 0xe3, 0x60, 0x80, 0x28, 0x00, 0x04, 0xe3, 0x70,
        0x80, 0x30, 0x00, 0x04, 0x0a, 0x00, 0xe3, 0x20, 0x80, 0x38, 0x00, 0x24, 0xa7, 0x09, 0xf0, 0x01, 0xb9, 0x21,
        0x00, 0x20, 0xa7, 0xa4, 0x00, 0x08, 0x41, 0x80, 0x80, 0x40, 0xa7, 0x9b, 0xff, 0xff, 0xa7, 0xf4, 0xff, 0xd9,
        0x00, 0x01,
    ]);
    const STACK_RED_ZONE: u64 = 0;
    const INSN_ALIGN: u64 = 2;
    const MMAP_ARGS_IN_MEMORY: bool = true;
    const REGSETS: &'static [Regset] = &[
        Regset { nt: nt::PRSTATUS, name: "NT_PRSTATUS", size: GP_SIZE, variable: false, required: true },
        Regset { nt: nt::PRFPREG, name: "NT_PRFPREG", size: FP_SIZE, variable: false, required: true },
        Regset { nt: nt::S390_VXRS_LOW, name: "NT_S390_VXRS_LOW", size: 16 * 8, variable: false, required: false },
        Regset { nt: nt::S390_VXRS_HIGH, name: "NT_S390_VXRS_HIGH", size: 16 * 16, variable: false, required: false },
        Regset { nt: nt::S390_SYSTEM_CALL, name: "NT_S390_SYSTEM_CALL", size: 4, variable: false, required: true },
    ];
    // The system_call word must be cleared too, or the kernel rewinds the PSW.
    const INJECTION_REGSETS: &'static [u32] = &[nt::PRSTATUS, nt::S390_SYSTEM_CALL];

    type State = State;

    fn sysno(call: Syscall) -> u64 {
        sysno_table!(syscall_numbers::s390x, call)
    }

    fn load_regset(state: &mut State, nt: u32, bytes: &[u8]) -> Result<(), ArchError> {
        match nt {
            nt::PRSTATUS => state.regs = pod_from("NT_PRSTATUS", bytes)?,
            nt::PRFPREG => state.fp = pod_from("NT_PRFPREG", bytes)?,
            nt::S390_VXRS_LOW => state.vxrs_low = Some(pod_from("NT_S390_VXRS_LOW", bytes)?),
            nt::S390_VXRS_HIGH => state.vxrs_high = Some(pod_from("NT_S390_VXRS_HIGH", bytes)?),
            nt::S390_SYSTEM_CALL => state.system_call = pod_from("NT_S390_SYSTEM_CALL", bytes)?,
            other => return Err(ArchError::UnknownRegset(other)),
        }
        Ok(())
    }

    fn store_regset(state: &State, nt: u32) -> Option<Vec<u8>> {
        match nt {
            nt::PRSTATUS => Some(pod_bytes(&state.regs)),
            nt::PRFPREG => Some(pod_bytes(&state.fp)),
            nt::S390_VXRS_LOW => state.vxrs_low.as_ref().map(pod_bytes),
            nt::S390_VXRS_HIGH => state.vxrs_high.as_ref().map(pod_bytes),
            nt::S390_SYSTEM_CALL => Some(pod_bytes(&state.system_call)),
            _ => None,
        }
    }

    fn ip(state: &State) -> u64 {
        state.regs.psw_addr
    }

    fn sp(state: &State) -> u64 {
        state.regs.gprs[15]
    }

    fn prepare_syscall(state: &mut State, insn: u64, nr: u64, args: [u64; 6]) {
        let r = &mut state.regs;
        r.gprs[1] = nr;
        r.gprs[2..8].copy_from_slice(&args);
        r.orig_gpr2 = args[0];
        r.psw_addr = insn;
        state.system_call = 0;
    }

    fn syscall_result(state: &State) -> Result<u64, i32> {
        negative_errno(state.regs.gprs[2])
    }

    fn restart_fixup(state: &mut State) -> Restart {
        if state.system_call == 0 {
            return Restart::NotInSyscall;
        }
        let r = &mut state.regs;
        let outcome = match -(r.gprs[2] as i64) {
            rc::ERESTARTSYS | rc::ERESTARTNOINTR | rc::ERESTARTNOHAND => {
                r.gprs[2] = r.orig_gpr2;
                let ilc = match u64::from(state.system_call >> 16) {
                    0 => S390x::SYSCALL_INSN.len() as u64,
                    n => n,
                };
                r.psw_addr -= ilc;
                Restart::Rerun
            }
            rc::ERESTART_RESTARTBLOCK => {
                r.gprs[2] = (-rc::EINTR) as u64;
                Restart::Interrupted
            }
            _ => Restart::Completed,
        };
        state.system_call = 0;
        outcome
    }

    fn wrap(state: State) -> CpuRecord {
        CpuRecord::S390x(state)
    }

    fn unwrap(record: CpuRecord) -> Result<State, ArchError> {
        match record {
            CpuRecord::S390x(s) => Ok(s),
            other => Err(wrong_arch(other.arch(), Self::ARCH)),
        }
    }
}
