//! Fills MIB mebibytes of anonymous memory with a pattern, prints its
//! checksum, and on SIGUSR1 checks the memory still has it.
fn main() {
    let mib: usize = ferry_testprogs::arg(1).parse().unwrap();
    let mut mem = vec![0u8; mib << 20];
    ferry_testprogs::fill_pattern(&mut mem, 0x5eed);
    let sum = ferry_testprogs::checksum(&mem);
    ferry_testprogs::say(&format!("ready {sum:016x}"));
    ferry_testprogs::wait_for_usr1();
    let now = ferry_testprogs::checksum(&mem);
    ferry_testprogs::check(now == sum, 3, &format!("checksum {now:016x}, expected {sum:016x}"));
    ferry_testprogs::say("ok");
}
