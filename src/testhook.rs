//! A hook for the failure tests: `FERRY_TEST_HOLD_AT=STAGE[:MS]` makes ferry
//! announce the stage on stderr and hold there (for MS milliseconds, or
//! until killed), so a test can kill ferry or the target at that exact point.

use std::time::Duration;

pub fn stage(name: &str) {
    let Ok(spec) = std::env::var("FERRY_TEST_HOLD_AT") else { return };
    let (stage, ms) = match spec.split_once(':') {
        Some((s, ms)) => (s.to_string(), ms.parse::<u64>().ok()),
        None => (spec, None),
    };
    if stage != name {
        return;
    }
    eprintln!("ferry: test hold at {name}");
    match ms {
        Some(ms) => std::thread::sleep(Duration::from_millis(ms)),
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}
