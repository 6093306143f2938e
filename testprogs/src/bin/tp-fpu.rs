//! Mid-computation with live vector and FPU state: a loop that keeps its
//! state only in ymm/xmm registers (and a non-default MXCSR) for ITERS
//! iterations, then checks the result. A dump and restore in the middle
//! must not disturb a single bit.
use ferry_testprogs::{check, say};

#[cfg(target_arch = "x86_64")]
fn run(iters: u64) -> ([u64; 4], [u64; 2], u32) {
    let init: [u64; 4] = [1, 0x1000_0000_0000, 3, 0x7777_0000_0000_0000];
    let inc: [u64; 4] = [3, 5, 7, 0x11];
    let xinit: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
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

fn main() {
    let iters: u64 = ferry_testprogs::arg(1).parse().unwrap();
    say("ready");
    let (out, xout, mxcsr) = run(iters);
    let init: [u64; 4] = [1, 0x1000_0000_0000, 3, 0x7777_0000_0000_0000];
    let inc: [u64; 4] = [3, 5, 7, 0x11];
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
    check(mxcsr & 0xffc0 == 0x7f80, 21, &format!("mxcsr {mxcsr:#x}"));
    say("ok");
}
