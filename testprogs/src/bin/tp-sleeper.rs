//! Sleeps SECS seconds in raw nanosleep, resuming with the time left after
//! each EINTR, then checks that at least SECS seconds passed.
fn main() {
    let secs: i64 = ferry_testprogs::arg(1).parse().unwrap();
    let start = std::time::Instant::now();
    ferry_testprogs::say("ready");
    let mut req = libc::timespec { tv_sec: secs, tv_nsec: 0 };
    let mut interrupted = 0;
    loop {
        let mut rem = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: plain nanosleep with valid pointers.
        if unsafe { libc::nanosleep(&req, &mut rem) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        ferry_testprogs::check(e.raw_os_error() == Some(libc::EINTR), 2, &format!("nanosleep: {e}"));
        interrupted += 1;
        req = rem;
    }
    let slept = start.elapsed().as_secs_f64();
    ferry_testprogs::check(slept >= secs as f64, 3, &format!("slept {slept:.3} s of {secs}"));
    ferry_testprogs::say(&format!("ok slept {slept:.3} s, interrupted {interrupted}"));
}
