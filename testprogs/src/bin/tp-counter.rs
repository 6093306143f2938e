//! Counts, writing each number to FILE (at its own offset), napping 5 ms in
//! nanosleep between numbers, and exits 0 after N. A restore that loses the
//! offset, the counter or the nap shows as a gap or a repeat in FILE.
use std::io::Write;

fn main() {
    let path = ferry_testprogs::arg(1);
    let n: u64 = ferry_testprogs::arg(2).parse().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path).unwrap();
    for i in 0..n {
        writeln!(f, "{i}").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ferry_testprogs::say("done");
}
