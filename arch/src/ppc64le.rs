//! ppc64le: `sc`, number in r0, arguments in r3-r8, result in r3 with
//! CR0.SO set on error (r3 then holds a positive errno). FP is NT_PRFPREG
//! (32 FPRs + FPSCR), vectors NT_PPC_VMX and NT_PPC_VSX; TLS is r13.
//! Debian's 6.12 kernels use 4K pages, Fedora/RHEL's 64K.

use crate::{
    nt, pod_bytes, pod_from, restart_codes as rc, sysno_table, wrong_arch, ArchError, Backend, CpuRecord, Regset,
    Restart, Syscall,
};
use serde::{Deserialize, Serialize};

/// The user-visible `struct pt_regs` (NT_PRSTATUS, ELF_NGREG = 48 slots).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize)]
pub struct PtRegs {
    #[serde(with = "crate::hex::u64s")]
    pub gpr: [u64; 32],
    #[serde(with = "crate::hex::u64")]
    pub nip: u64,
    #[serde(with = "crate::hex::u64")]
    pub msr: u64,
    #[serde(with = "crate::hex::u64")]
    pub orig_gpr3: u64,
    #[serde(with = "crate::hex::u64")]
    pub ctr: u64,
    #[serde(with = "crate::hex::u64")]
    pub link: u64,
    #[serde(with = "crate::hex::u64")]
    pub xer: u64,
    #[serde(with = "crate::hex::u64")]
    pub ccr: u64,
    #[serde(with = "crate::hex::u64")]
    pub softe: u64,
    #[serde(with = "crate::hex::u64")]
    pub trap: u64,
    #[serde(with = "crate::hex::u64")]
    pub dar: u64,
    #[serde(with = "crate::hex::u64")]
    pub dsisr: u64,
    #[serde(with = "crate::hex::u64")]
    pub result: u64,
    #[serde(with = "crate::hex::u64s")]
    pub reserved: [u64; 4],
}

/// NT_PPC_VMX: 32 vector registers, VSCR and VRSAVE, 16 bytes each.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize)]
pub struct VmxState {
    #[serde(with = "crate::hex::u128s")]
    pub vr: [u128; 32],
    #[serde(with = "crate::hex::u128s")]
    pub vscr_vrsave: [u128; 2],
}

/// NT_PRFPREG: FPR0-31 and FPSCR.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize)]
pub struct FpRegs {
    #[serde(with = "crate::hex::u64s")]
    pub fpr: [u64; 32],
    #[serde(with = "crate::hex::u64")]
    pub fpscr: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub regs: PtRegs,
    pub fp: FpRegs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmx: Option<VmxState>,
    /// The doubleword halves of VSR0-31 that the FPRs do not hold.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_vsx")]
    pub vsx: Option<[u64; 32]>,
}

mod opt_vsx {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    #[derive(Serialize, Deserialize)]
    struct Vsx(#[serde(with = "crate::hex::u64s")] [u64; 32]);
    pub fn serialize<S: Serializer>(v: &Option<[u64; 32]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Vsx).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u64; 32]>, D::Error> {
        Ok(Option::<Vsx>::deserialize(d)?.map(|v| v.0))
    }
}

pub struct Ppc64le;

/// CR0's summary-overflow bit: set by `sc` when r3 holds an errno.
const CR0_SO: u64 = 0x1000_0000;
const TRAP_SC: u64 = 0xc00;
const TRAP_SCV: u64 = 0x3000;

const GP_SIZE: usize = std::mem::size_of::<PtRegs>();
const VMX_SIZE: usize = std::mem::size_of::<VmxState>();

impl Backend for Ppc64le {
    const ARCH: crate::Arch = crate::Arch::Ppc64le;
    const SYSCALL_INSN: &'static [u8] = &0x4400_0002u32.to_le_bytes(); // sc
    const TRAP_INSN: &'static [u8] = &0x0fe0_0000u32.to_le_bytes(); // twi 31,0,0
    /// Assembled from:
    ///
    /// ```text
    ///         mr 14, 3
    ///         mr 15, 4
    ///     1:  cmpdi 15, 0
    ///         beq 2f
    ///         ld 0, 0(14)
    ///         ld 3, 8(14)
    ///         ld 4, 16(14)
    ///         ld 5, 24(14)
    ///         ld 6, 32(14)
    ///         ld 7, 40(14)
    ///         ld 8, 48(14)
    ///         sc
    ///         bns 3f
    ///         neg 3, 3
    ///         std 3, 56(14)
    ///         b 2f
    ///     3:  std 3, 56(14)
    ///         addi 14, 14, 64
    ///         addi 15, 15, -1
    ///         b 1b
    ///     2:  twi 31,0,0
    /// ```
    const BATCH_LOOP: Option<&'static [u8]> = Some(&[
        0x78, 0x1b, 0x6e, 0x7c, 0x78, 0x23, 0x8f, 0x7c, 0x00, 0x00, 0x2f, 0x2c, 0x44, 0x00, 0x82, 0x41, 0x00, 0x00,
        0x0e, 0xe8, 0x08, 0x00, 0x6e, 0xe8, 0x10, 0x00, 0x8e, 0xe8, 0x18, 0x00, 0xae, 0xe8, 0x20, 0x00, 0xce, 0xe8,
        0x28, 0x00, 0xee, 0xe8, 0x30, 0x00, 0x0e, 0xe9, 0x02, 0x00, 0x00, 0x44, 0x10, 0x00, 0x83, 0x40, 0xd0, 0x00,
        0x63, 0x7c, 0x38, 0x00, 0x6e, 0xf8, 0x14, 0x00, 0x00, 0x48, 0x38, 0x00, 0x6e, 0xf8, 0x40, 0x00, 0xce, 0x39,
        0xff, 0xff, 0xef, 0x39, 0xbc, 0xff, 0xff, 0x4b, 0x00, 0x00, 0xe0, 0x0f,
    ]);
    // The ELFv2 ABI's protected zone below r1.
    const STACK_RED_ZONE: u64 = 288;
    const INSN_ALIGN: u64 = 4;
    const REGSETS: &'static [Regset] = &[
        Regset { nt: nt::PRSTATUS, name: "NT_PRSTATUS", size: GP_SIZE, variable: false, required: true },
        Regset {
            nt: nt::PRFPREG,
            name: "NT_PRFPREG",
            size: std::mem::size_of::<FpRegs>(),
            variable: false,
            required: true,
        },
        Regset { nt: nt::PPC_VMX, name: "NT_PPC_VMX", size: VMX_SIZE, variable: false, required: false },
        Regset { nt: nt::PPC_VSX, name: "NT_PPC_VSX", size: 32 * 8, variable: false, required: false },
    ];
    const INJECTION_REGSETS: &'static [u32] = &[nt::PRSTATUS];

    type State = State;

    fn sysno(call: Syscall) -> u64 {
        sysno_table!(syscall_numbers::powerpc64, call)
    }

    fn load_regset(state: &mut State, nt: u32, bytes: &[u8]) -> Result<(), ArchError> {
        match nt {
            nt::PRSTATUS => state.regs = pod_from("NT_PRSTATUS", bytes)?,
            nt::PRFPREG => state.fp = pod_from("NT_PRFPREG", bytes)?,
            nt::PPC_VMX => state.vmx = Some(pod_from("NT_PPC_VMX", bytes)?),
            nt::PPC_VSX => state.vsx = Some(pod_from("NT_PPC_VSX", bytes)?),
            other => return Err(ArchError::UnknownRegset(other)),
        }
        Ok(())
    }

    fn store_regset(state: &State, nt: u32) -> Option<Vec<u8>> {
        match nt {
            nt::PRSTATUS => Some(pod_bytes(&state.regs)),
            nt::PRFPREG => Some(pod_bytes(&state.fp)),
            nt::PPC_VMX => state.vmx.as_ref().map(pod_bytes),
            nt::PPC_VSX => state.vsx.as_ref().map(pod_bytes),
            _ => None,
        }
    }

    fn ip(state: &State) -> u64 {
        state.regs.nip
    }

    fn sp(state: &State) -> u64 {
        state.regs.gpr[1]
    }

    fn prepare_syscall(state: &mut State, insn: u64, nr: u64, args: [u64; 6]) {
        let r = &mut state.regs;
        r.gpr[0] = nr;
        r.gpr[3..9].copy_from_slice(&args);
        r.orig_gpr3 = args[0];
        r.nip = insn;
        // Not a syscall trap: the kernel's restart check leaves the frame alone.
        r.trap = 0;
    }

    fn syscall_result(state: &State) -> Result<u64, i32> {
        let r = &state.regs;
        if r.ccr & CR0_SO != 0 {
            Err(r.gpr[3] as i32)
        } else {
            Ok(r.gpr[3])
        }
    }

    fn restart_fixup(state: &mut State) -> Restart {
        let r = &mut state.regs;
        let trap = r.trap & !0xf;
        let scv = trap == TRAP_SCV;
        if trap != TRAP_SC && !scv {
            return Restart::NotInSyscall;
        }
        // Low bit of trap: the kernel marked this syscall as not restartable.
        if r.trap & 1 != 0 {
            return Restart::Completed;
        }
        let code = if scv {
            -(r.gpr[3] as i64)
        } else if r.ccr & CR0_SO != 0 {
            r.gpr[3] as i64
        } else {
            return Restart::Completed;
        };
        match code {
            rc::ERESTARTSYS | rc::ERESTARTNOINTR | rc::ERESTARTNOHAND => {
                r.gpr[3] = r.orig_gpr3;
                r.nip -= 4;
                r.result = 0;
                r.ccr &= !CR0_SO;
                r.trap = 0;
                Restart::Rerun
            }
            rc::ERESTART_RESTARTBLOCK => {
                if scv {
                    r.gpr[3] = (-rc::EINTR) as u64;
                } else {
                    r.gpr[3] = rc::EINTR as u64;
                    r.ccr |= CR0_SO;
                }
                r.result = (-rc::EINTR) as u64;
                Restart::Interrupted
            }
            _ => Restart::Completed,
        }
    }

    fn wrap(state: State) -> CpuRecord {
        CpuRecord::Ppc64le(state)
    }

    fn unwrap(record: CpuRecord) -> Result<State, ArchError> {
        match record {
            CpuRecord::Ppc64le(s) => Ok(s),
            other => Err(wrong_arch(other.arch(), Self::ARCH)),
        }
    }
}
