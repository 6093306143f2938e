//! Mid-computation with live vector and FPU state: a loop that keeps its
//! state only in vector registers (and a non-default floating-point control
//! register: rounding toward zero) for ITERS iterations, then checks the
//! result. A dump and restore in the middle must not disturb a single bit.
//! x86_64: ymm0/ymm1 (xmm without AVX2), xmm9, MXCSR; aarch64: v0-v3, v9,
//! FPCR; ppc64le: v0-v3, v9 (VMX), FPSCR; s390x: v0-v3, v9, FPC.
use ferry_testprogs::{check, say};

/// Start values of the four 64-bit lanes, what each adds per iteration,
/// and the pair of words swapped every iteration.
const INIT: [u64; 4] = [1, 0x1000_0000_0000, 3, 0x7777_0000_0000_0000];
const INC: [u64; 4] = [3, 5, 7, 0x11];
const XINIT: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

#[cfg(target_arch = "x86_64")]
fn run(iters: u64) -> ([u64; 4], [u64; 2], u32) {
    let (init, inc, xinit) = (INIT, INC, XINIT);
    let mut out = [0u64; 4];
    let mut xout = [0u64; 2];
    let mut mxcsr: u32 = 0;
    let avx = std::is_x86_feature_detected!("avx2");
    // Round toward zero, all exceptions masked: not the default 0x1f80.
    let mx: u32 = 0x7f80;
    // SAFETY: the asm only touches the named buffers and declared registers.
    unsafe {
        if avx {
            std::arch::asm!(
                "sub rsp, 8", "stmxcsr [rsp]", "mov dword ptr [rsp], {mx:e}", "ldmxcsr [rsp]",
                "vmovdqu ymm0, [{init}]", "vmovdqu ymm1, [{inc}]", "vmovdqu xmm9, [{xinit}]",
                "2:", "vpaddq ymm0, ymm0, ymm1", "vpshufd xmm9, xmm9, 0x4e", "dec {n}", "jnz 2b",
                "vmovdqu [{out}], ymm0", "vmovdqu [{xout}], xmm9", "vzeroupper",
                "stmxcsr [rsp]", "mov {mxo:e}, dword ptr [rsp]", "add rsp, 8",
                mx = in(reg) mx, init = in(reg) init.as_ptr(), inc = in(reg) inc.as_ptr(), xinit = in(reg) xinit.as_ptr(),
                n = inout(reg) iters => _, out = in(reg) out.as_mut_ptr(), xout = in(reg) xout.as_mut_ptr(),
                mxo = out(reg) mxcsr, out("ymm0") _, out("ymm1") _, out("xmm9") _,
            );
        } else {
            std::arch::asm!(
                "sub rsp, 8", "mov dword ptr [rsp], {mx:e}", "ldmxcsr [rsp]",
                "movdqu xmm0, [{init}]", "movdqu xmm1, [{inc}]", "movdqu xmm9, [{xinit}]",
                "2:", "paddq xmm0, xmm1", "pshufd xmm9, xmm9, 0x4e", "dec {n}", "jnz 2b",
                "movdqu [{out}], xmm0", "movdqu [{xout}], xmm9",
                "stmxcsr [rsp]", "mov {mxo:e}, dword ptr [rsp]", "add rsp, 8",
                mx = in(reg) mx, init = in(reg) init.as_ptr(), inc = in(reg) inc.as_ptr(), xinit = in(reg) xinit.as_ptr(),
                n = inout(reg) iters => _, out = in(reg) out.as_mut_ptr(), xout = in(reg) xout.as_mut_ptr(),
                mxo = out(reg) mxcsr, out("xmm0") _, out("xmm1") _, out("xmm9") _,
            );
            out[2] = init[2].wrapping_add(inc[2].wrapping_mul(iters));
            out[3] = init[3].wrapping_add(inc[3].wrapping_mul(iters));
        }
    }
    (out, xout, mxcsr)
}

/// The control-register bits `run` sets, and the value they must have.
#[cfg(target_arch = "x86_64")]
const CTL: (u32, u32) = (0xffc0, 0x7f80);

#[cfg(target_arch = "aarch64")]
const CTL: (u32, u32) = (0x00c0_0000, 0x00c0_0000);

#[cfg(target_arch = "aarch64")]
fn run(iters: u64) -> ([u64; 4], [u64; 2], u32) {
    let (init, inc, xinit) = (INIT, INC, XINIT);
    let mut out = [0u64; 4];
    let mut xout = [0u64; 2];
    let fpcr: u64;
    // SAFETY: the asm only touches the named buffers and declared registers,
    // and puts FPCR back.
    unsafe {
        std::arch::asm!(
            "mrs {old}, fpcr", "orr {tmp}, {old}, #0xc00000", "msr fpcr, {tmp}",
            "ldr q0, [{init}]", "ldr q2, [{init}, #16]", "ldr q1, [{inc}]", "ldr q3, [{inc}, #16]", "ldr q9, [{xinit}]",
            "2:", "add v0.2d, v0.2d, v1.2d", "add v2.2d, v2.2d, v3.2d", "ext v9.16b, v9.16b, v9.16b, #8",
            "subs {n}, {n}, #1", "b.ne 2b",
            "str q0, [{out}]", "str q2, [{out}, #16]", "str q9, [{xout}]",
            "mrs {fo}, fpcr", "msr fpcr, {old}",
            old = out(reg) _, tmp = out(reg) _, init = in(reg) init.as_ptr(), inc = in(reg) inc.as_ptr(),
            xinit = in(reg) xinit.as_ptr(), n = inout(reg) iters => _, out = in(reg) out.as_mut_ptr(),
            xout = in(reg) xout.as_mut_ptr(), fo = out(reg) fpcr,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v9") _,
        );
    }
    (out, xout, fpcr as u32)
}

#[cfg(target_arch = "powerpc64")]
const CTL: (u32, u32) = (0x3, 0x1);

/// VMX: vaddudm is POWER8, which ppc64le always has. lxvd2x/stxvd2x (no
/// alignment needed) swap doublewords on the way in and out alike, which
/// lane-wise adds and a doubleword swap do not notice.
#[cfg(target_arch = "powerpc64")]
fn run(iters: u64) -> ([u64; 4], [u64; 2], u32) {
    let (init, inc, xinit) = (INIT, INC, XINIT);
    let mut out = [0u64; 4];
    let mut xout = [0u64; 2];
    let mut fpscr = [0u64; 1];
    let sixteen: u64 = 16;
    // SAFETY: the asm only touches the named buffers and declared registers,
    // and puts the rounding mode back (round to nearest).
    unsafe {
        std::arch::asm!(
            "mtfsfi 7, 1",
            "lxvd2x 32, 0, {init}", "lxvd2x 34, {s}, {init}", "lxvd2x 33, 0, {inc}", "lxvd2x 35, {s}, {inc}",
            "lxvd2x 41, 0, {xinit}",
            "mtctr {n}",
            "2:", "vaddudm 0, 0, 1", "vaddudm 2, 2, 3", "vsldoi 9, 9, 9, 8", "bdnz 2b",
            "stxvd2x 32, 0, {out}", "stxvd2x 34, {s}, {out}", "stxvd2x 41, 0, {xout}",
            "mffs 10", "stfd 10, 0({fo})", "mtfsfi 7, 0",
            init = in(reg_nonzero) init.as_ptr(), inc = in(reg_nonzero) inc.as_ptr(), xinit = in(reg_nonzero) xinit.as_ptr(),
            s = in(reg_nonzero) sixteen, n = in(reg) iters, out = in(reg_nonzero) out.as_mut_ptr(),
            xout = in(reg_nonzero) xout.as_mut_ptr(), fo = in(reg_nonzero) fpscr.as_mut_ptr(),
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v9") _, out("f10") _, out("ctr") _,
        );
    }
    (out, xout, fpscr[0] as u32)
}

#[cfg(target_arch = "s390x")]
const CTL: (u32, u32) = (0x7, 0x1);

/// The vector facility (z13 and later; every s390x Linux distribution
/// requires it now).
#[cfg(target_arch = "s390x")]
fn run(iters: u64) -> ([u64; 4], [u64; 2], u32) {
    let (init, inc, xinit) = (INIT, INC, XINIT);
    let mut out = [0u64; 4];
    let mut xout = [0u64; 2];
    let fpc: u64;
    // SAFETY: the asm only touches the named buffers and declared registers,
    // and puts FPC back.
    unsafe {
        std::arch::asm!(
            ".machine push", ".machine z13",
            "efpc {old}", "lhi {tmp}, 1", "sfpc {tmp}",
            "vl %v0, 0({init})", "vl %v2, 16({init})", "vl %v1, 0({inc})", "vl %v3, 16({inc})", "vl %v9, 0({xinit})",
            "2:", "vag %v0, %v0, %v1", "vag %v2, %v2, %v3", "vpdi %v9, %v9, %v9, 4", "brctg {n}, 2b",
            "vst %v0, 0({out})", "vst %v2, 16({out})", "vst %v9, 0({xout})",
            "efpc {fo}", "sfpc {old}",
            ".machine pop",
            old = out(reg) _, tmp = out(reg) _, init = in(reg_addr) init.as_ptr(), inc = in(reg_addr) inc.as_ptr(),
            xinit = in(reg_addr) xinit.as_ptr(), n = inout(reg) iters => _, out = in(reg_addr) out.as_mut_ptr(),
            xout = in(reg_addr) xout.as_mut_ptr(), fo = out(reg) fpc,
            out("f0") _, out("f1") _, out("f2") _, out("f3") _, out("f9") _,
        );
    }
    (out, xout, fpc as u32)
}

fn main() {
    let iters: u64 = ferry_testprogs::arg(1).parse().unwrap();
    say("ready");
    let (out, xout, mxcsr) = run(iters);
    let (init, inc) = (INIT, INC);
    for i in 0..4 {
        check(
            out[i] == init[i].wrapping_add(inc[i].wrapping_mul(iters)),
            10 + i as i32,
            &format!("lane {i}: {:#x}", out[i]),
        );
    }
    let swapped = iters % 2 == 1;
    let xexp = if swapped {
        [0xfedc_ba98_7654_3210, 0x0123_4567_89ab_cdef]
    } else {
        [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]
    };
    check(xout == xexp, 20, &format!("xmm9 {:x?}", xout));
    check(mxcsr & CTL.0 == CTL.1, 21, &format!("floating-point control {mxcsr:#x}"));
    say("ok");
}
