//! Blocks in read() on its terminal (stdin), answers "got: LINE".
use std::io::{Read, Write};

fn main() {
    // SAFETY: plain isatty.
    ferry_testprogs::check(unsafe { libc::isatty(0) } == 1, 2, "stdin is not a terminal");
    let mut out = std::io::stdout();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut buf = [0u8; 256];
    let n = std::io::stdin().read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    writeln!(out, "got: {}", line.trim_end()).unwrap();
    out.flush().unwrap();
}
