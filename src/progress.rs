//! Live progress on a terminal: bytes, rate and ETA of a transfer that
//! runs for over a second (indicatif). Where stderr is not a terminal (a
//! log, a pipe) nothing is drawn, and the plain lines stay as they were;
//! lines printed while a bar shows go above it.
//!
//! `FERRY_PROGRESS_DELAY_MS` sets how long a transfer runs before its bar
//! appears (1000 by default).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bar on screen now (its id and it): [`above`] prints over it.
static SHOWN: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn delay() -> Duration {
    let ms = std::env::var("FERRY_PROGRESS_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    Duration::from_millis(ms)
}

/// One transfer's bar (nothing at all off a terminal).
pub struct Progress {
    id: u64,
    bar: Option<ProgressBar>,
    start: Instant,
    delay: Duration,
    visible: AtomicBool,
}

impl Progress {
    /// A transfer of `total` bytes (unknown: a running count and rate).
    pub fn new(what: &str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = if total.is_some() {
                "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left"
            } else {
                "{prefix} {spinner} {binary_bytes} {binary_bytes_per_sec}"
            };
            let style = ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ");
            ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden())
                .with_style(style)
                .with_prefix(what.to_string())
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Progress { id, bar, start: Instant::now(), delay: delay(), visible: AtomicBool::new(false) }
    }

    pub fn inc(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
            self.show_if_due(b);
        }
    }

    /// Bytes done so far, for work counted elsewhere.
    pub fn set(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_position(bytes);
            self.show_if_due(b);
        }
    }

    fn show_if_due(&self, b: &ProgressBar) {
        if self.visible.load(Ordering::Relaxed) || self.start.elapsed() < self.delay {
            return;
        }
        if !self.visible.swap(true, Ordering::Relaxed) {
            b.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            *SHOWN.lock().unwrap() = Some((self.id, b.clone()));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            let mut shown = SHOWN.lock().unwrap();
            if shown.as_ref().is_some_and(|(id, _)| *id == self.id) {
                *shown = None;
            }
        }
    }
}

/// Run `f` (which prints) with the bar on screen, if any, moved out of
/// its way.
pub fn above<R>(f: impl FnOnce() -> R) -> R {
    let bar = SHOWN.lock().unwrap().as_ref().map(|(_, b)| b.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// stderr for the log: its lines go above a bar.
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        above(|| std::io::stderr().write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Run `f` with a bar that follows `counter` (bytes done, counted by `f`'s
/// own threads), updated ten times a second.
pub fn follow<R>(what: &str, total: Option<u64>, counter: &AtomicU64, f: impl FnOnce() -> R) -> R {
    if !std::io::stderr().is_terminal() {
        return f();
    }
    let p = Progress::new(what, total);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                p.set(counter.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    })
}
