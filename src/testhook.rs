//! A hook for the failure tests: `FERRY_TEST_HOLD_AT=STAGE[#N][:MS]` makes
//! ferry announce the stage on stderr and hold there (for MS milliseconds,
//! or until killed), so a test can kill ferry or the target at that exact
//! point. With `#N`, only the Nth time the stage is reached (a stage met
//! once per process of a tree, say).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEEN: AtomicU32 = AtomicU32::new(0);

pub fn stage(name: &str) {
    let Ok(spec) = std::env::var("FERRY_TEST_HOLD_AT") else { return };
    let (stage, ms) = match spec.split_once(':') {
        Some((s, ms)) => (s.to_string(), ms.parse::<u64>().ok()),
        None => (spec, None),
    };
    let (stage, nth) = match stage.split_once('#') {
        Some((s, n)) => (s.to_string(), n.parse::<u32>().unwrap_or(1)),
        None => (stage, 1),
    };
    if stage != name || SEEN.fetch_add(1, Ordering::SeqCst) + 1 != nth {
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
