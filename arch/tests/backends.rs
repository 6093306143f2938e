//! Every backend is exercised on every host: injection frames, restart
//! fix-ups, result decoding and the image record, as insta snapshots.

use ferry_arch::{
    aarch64::Aarch64, ppc64le::Ppc64le, restart_codes as rc, s390x::S390x, x86_64::X86_64, Backend, CpuRecord, Restart,
    Syscall,
};
use serde::Serialize;

/// A state with every register distinct. Values are set through the image
/// format (hex strings), so the snapshot is the same on little- and
/// big-endian hosts; then every register set goes through the byte-level
/// parser the ptrace edge uses and must come back unchanged.
fn patterned<B: Backend>() -> B::State {
    let mut state = B::State::default();
    for rs in B::REGSETS.iter().filter(|rs| rs.variable) {
        let len = if rs.nt == ferry_arch::nt::X86_XSTATE { 576 } else { 8 };
        let bytes: Vec<u8> = (0..len).map(|j| (j % 251) as u8).collect();
        B::load_regset(&mut state, rs.nt, &bytes).unwrap();
    }
    let mut value = serde_json::to_value(&state).unwrap();
    let mut counter = 0u64;
    fill(&mut value, &mut counter);
    let state: B::State = serde_json::from_value(value).unwrap();
    for rs in B::REGSETS {
        let Some(bytes) = B::store_regset(&state, rs.nt) else { continue };
        let mut back = state.clone();
        B::load_regset(&mut back, rs.nt, &bytes).unwrap();
        assert_eq!(back, state, "{} round trip", rs.name);
    }
    state
}

fn fill(v: &mut serde_json::Value, counter: &mut u64) {
    use serde_json::Value;
    match v {
        Value::String(s) if s.starts_with("0x") => {
            let digits = s.len() - 2;
            *counter += 1;
            let word = format!("{:016x}", counter.wrapping_mul(0x0101_0101_0101_0101) ^ 0x1000);
            let full = word.repeat(digits.div_ceil(16));
            *s = format!("0x{}", &full[full.len() - digits..]);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| fill(x, counter)),
        Value::Object(o) => o.values_mut().for_each(|x| fill(x, counter)),
        _ => {}
    }
}

/// How each architecture looks right after a syscall returned `ret` to a
/// task stopped by ptrace: the per-arch knowledge the fix-ups rely on.
trait Frames: Backend {
    fn stopped_in_syscall(nr: u64, arg0: u64, ret: i64, ip: u64) -> Self::State;
    fn ret(state: &Self::State) -> i64;
}

impl Frames for X86_64 {
    fn stopped_in_syscall(nr: u64, arg0: u64, ret: i64, ip: u64) -> Self::State {
        let mut s = Self::State::default();
        s.regs.orig_rax = nr;
        s.regs.rdi = arg0;
        s.regs.rax = ret as u64;
        s.regs.rip = ip;
        s
    }
    fn ret(s: &Self::State) -> i64 {
        s.regs.rax as i64
    }
}

impl Frames for Aarch64 {
    fn stopped_in_syscall(nr: u64, arg0: u64, ret: i64, ip: u64) -> Self::State {
        let mut s = Self::State::default();
        s.regs.regs[8] = nr;
        s.regs.regs[0] = if (-516..=-512).contains(&ret) { arg0 } else { ret as u64 };
        s.regs.pc = if (-516..=-512).contains(&ret) { ip - 4 } else { ip };
        s
    }
    fn ret(s: &Self::State) -> i64 {
        s.regs.regs[0] as i64
    }
}

impl Frames for Ppc64le {
    fn stopped_in_syscall(nr: u64, arg0: u64, ret: i64, ip: u64) -> Self::State {
        let mut s = Self::State::default();
        s.regs.gpr[0] = nr;
        s.regs.orig_gpr3 = arg0;
        s.regs.trap = 0xc01 & !1; // sc
        if ret < 0 {
            s.regs.gpr[3] = (-ret) as u64;
            s.regs.ccr = 0x1000_0000;
        } else {
            s.regs.gpr[3] = ret as u64;
        }
        s.regs.nip = ip;
        s
    }
    fn ret(s: &Self::State) -> i64 {
        if s.regs.ccr & 0x1000_0000 != 0 {
            -(s.regs.gpr[3] as i64)
        } else {
            s.regs.gpr[3] as i64
        }
    }
}

impl Frames for S390x {
    fn stopped_in_syscall(nr: u64, arg0: u64, ret: i64, ip: u64) -> Self::State {
        let mut s = Self::State { system_call: (2 << 16) | nr as u32, ..Default::default() };
        s.regs.gprs[1] = nr;
        s.regs.orig_gpr2 = arg0;
        s.regs.gprs[2] = ret as u64;
        s.regs.psw_addr = ip;
        s
    }
    fn ret(s: &Self::State) -> i64 {
        s.regs.gprs[2] as i64
    }
}

#[derive(Serialize)]
struct InjectionFrame<S> {
    syscall_insn: String,
    trap_insn: String,
    mmap_nr: u64,
    mmap_args_in_memory: bool,
    frame: S,
}

fn hexbytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

fn injection_frame<B: Backend>() -> InjectionFrame<B::State> {
    let mut frame = patterned::<B>();
    let before = frame.clone();
    let args = [0x7f00_0000_0000, 0x2000, 7, 0x22, u64::MAX, 0];
    B::prepare_syscall(&mut frame, 0x7fff_f000, B::sysno(Syscall::Mmap), args);
    assert_eq!(B::ip(&frame), 0x7fff_f000);
    assert_eq!(B::sp(&frame), B::sp(&before), "injection must not move the stack");
    // Every register set other than the injected ones stays byte-identical.
    for rs in B::REGSETS {
        if !B::INJECTION_REGSETS.contains(&rs.nt) {
            assert_eq!(B::store_regset(&frame, rs.nt), B::store_regset(&before, rs.nt), "{}", rs.name);
        }
    }
    InjectionFrame {
        syscall_insn: hexbytes(B::SYSCALL_INSN),
        trap_insn: hexbytes(B::TRAP_INSN),
        mmap_nr: B::sysno(Syscall::Mmap),
        mmap_args_in_memory: B::MMAP_ARGS_IN_MEMORY,
        frame,
    }
}

#[derive(Serialize)]
struct RestartCase {
    case: &'static str,
    outcome: Restart,
    ip: String,
    ret: i64,
}

fn restart_cases<B: Frames>() -> Vec<RestartCase> {
    const IP: u64 = 0x40_1000;
    let cases: [(&str, i64); 6] = [
        ("pause: ERESTARTNOHAND", -rc::ERESTARTNOHAND),
        ("read: ERESTARTSYS", -rc::ERESTARTSYS),
        ("wait4: ERESTARTNOINTR", -rc::ERESTARTNOINTR),
        ("nanosleep: ERESTART_RESTARTBLOCK", -rc::ERESTART_RESTARTBLOCK),
        ("write: completed with 5", 5),
        ("open: failed with ENOENT", -2),
    ];
    let mut out = Vec::new();
    for (case, ret) in cases {
        let mut s = B::stopped_in_syscall(35, 0x1234, ret, IP);
        let outcome = B::restart_fixup(&mut s);
        out.push(RestartCase { case, outcome, ip: format!("{:#x}", B::ip(&s)), ret: B::ret(&s) });
        // A fixed-up frame is final: applying the fix-up again changes nothing.
        let again = s.clone();
        let mut twice = s;
        B::restart_fixup(&mut twice);
        assert_eq!(B::ip(&twice), B::ip(&again), "{case}: second fix-up moved ip");
    }
    let mut s = B::State::default();
    out.push(RestartCase {
        case: "running in user space",
        outcome: {
            // x86 marks "no syscall" with orig_rax = -1; the default state is
            // "syscall 0" there, so build the user-space frame explicitly.
            B::prepare_syscall(&mut s, IP, 0, [0; 6]);
            B::restart_fixup(&mut s)
        },
        ip: format!("{:#x}", B::ip(&s)),
        ret: B::ret(&s),
    });
    out
}

fn image_record<B: Backend>() -> String {
    let state = patterned::<B>();
    let json = serde_json::to_string_pretty(&B::wrap(state.clone())).unwrap();
    let back: CpuRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back.arch(), B::ARCH);
    assert_eq!(B::unwrap(back).unwrap(), state, "image record round trip");
    json
}

fn results<B: Frames>() -> Vec<(i64, Result<u64, i32>)> {
    [0i64, 3, -1, -4095, -4096, 0x7f00_0000_0000]
        .into_iter()
        .map(|ret| (ret, B::syscall_result(&B::stopped_in_syscall(1, 0, ret, 0))))
        .collect()
}

macro_rules! backend_tests {
    ($modname:ident, $backend:ty) => {
        mod $modname {
            use super::*;

            #[test]
            fn injection_frame() {
                insta::assert_yaml_snapshot!(super::injection_frame::<$backend>());
            }

            #[test]
            fn syscall_numbers() {
                // Reviewed once against a second table generated from the
                // kernel's (the `syscalls` crate's): every entry agreed. A
                // change here is a change of numbering.
                let table: Vec<String> =
                    Syscall::ALL.iter().map(|c| format!("{c:?} {}", <$backend>::sysno(*c))).collect();
                insta::assert_yaml_snapshot!(table);
            }

            #[test]
            fn restart_cases() {
                insta::assert_yaml_snapshot!(super::restart_cases::<$backend>());
            }

            #[test]
            fn image_record() {
                insta::assert_snapshot!(super::image_record::<$backend>());
            }

            #[test]
            fn syscall_results() {
                let r = super::results::<$backend>();
                assert_eq!(r[0].1, Ok(0));
                assert_eq!(r[1].1, Ok(3));
                assert_eq!(r[2].1, Err(1));
                assert_eq!(r[3].1, Err(4095));
                assert_eq!(r[5].1, Ok(0x7f00_0000_0000));
            }

            #[test]
            fn wrong_sizes_are_rejected() {
                let mut s = <$backend as Backend>::State::default();
                let err = <$backend>::load_regset(&mut s, ferry_arch::nt::PRSTATUS, &[0u8; 3]).unwrap_err();
                assert!(err.to_string().contains("NT_PRSTATUS has 3 bytes"), "{err}");
                assert!(<$backend>::load_regset(&mut s, 0xdead, &[]).is_err());
            }

            #[test]
            fn records_of_other_arches_are_refused() {
                for other in ferry_arch::Arch::ALL {
                    if other == <$backend>::ARCH {
                        continue;
                    }
                    let rec = match other {
                        ferry_arch::Arch::X86_64 => X86_64::wrap(Default::default()),
                        ferry_arch::Arch::Aarch64 => Aarch64::wrap(Default::default()),
                        ferry_arch::Arch::Ppc64le => Ppc64le::wrap(Default::default()),
                        ferry_arch::Arch::S390x => S390x::wrap(Default::default()),
                    };
                    let err = <$backend>::unwrap(rec).unwrap_err();
                    assert_eq!(err.to_string(), format!("image is for {other}, this is {}", <$backend>::ARCH));
                }
            }
        }
    };
}

backend_tests!(x86_64, X86_64);
backend_tests!(aarch64, Aarch64);
backend_tests!(ppc64le, Ppc64le);
backend_tests!(s390x, S390x);
