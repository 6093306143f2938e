//! Shared bits of the test programs: each reports on stdout (a file the
//! test reads), waits for SIGUSR1 to check its own state after a restore,
//! and exits 0 only if everything it remembers is intact.

use std::io::Write;

/// Print a line and flush: the test polls the output file.
pub fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

/// Exit with `code` after saying why, if `ok` is false.
pub fn check(ok: bool, code: i32, what: &str) {
    if !ok {
        say(&format!("FAIL {code}: {what}"));
        std::process::exit(code);
    }
}

/// Block SIGUSR1 and wait for it: "the restore is done, check yourself".
pub fn wait_for_usr1() {
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        while libc::sigwait(&set, &mut sig) != 0 || sig != libc::SIGUSR1 {}
    }
}

/// A fast deterministic byte pattern (xorshift64*).
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// An order-sensitive checksum of a buffer.
pub fn checksum(buf: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for chunk in buf.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x1000_0000_01b3).rotate_left(5);
    }
    h
}

pub fn arg(n: usize) -> String {
    std::env::args().nth(n).unwrap_or_else(|| panic!("argument {n} missing"))
}
