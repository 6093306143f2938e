//! Holds MIB mebibytes. On each SIGUSR1 it checks that they still hold
//! generation N's pattern, says "ok N", and rewrites them with generation
//! N+1, so every checkpoint in a long series has new memory to carry: a
//! page lost, stale or mixed up shows as "FAIL" (and exit 3).
use ferry_testprogs::{check, checksum, fill_pattern, say, wait_for_usr1};

fn main() {
    let mib: usize = ferry_testprogs::arg(1).parse().unwrap();
    let mut mem = vec![0u8; mib << 20];
    let mut generation = 0u64;
    fill_pattern(&mut mem, 0x50a4);
    let mut sum = checksum(&mem);
    say("ready");
    loop {
        wait_for_usr1();
        let now = checksum(&mem);
        check(now == sum, 3, &format!("generation {generation}: checksum {now:016x}, expected {sum:016x}"));
        say(&format!("ok {generation}"));
        generation += 1;
        fill_pattern(&mut mem, 0x50a4 + generation);
        sum = checksum(&mem);
    }
}
