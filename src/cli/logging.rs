//! CRIU-style verbosity (-v0…-v4, -v, -vv) and log file, on top of tracing.

use anyhow::{Context, Result};
use std::path::Path;
use tracing::level_filters::LevelFilter;

/// One -v occurrence: either a level (-v4) or a raise (-v, -vv).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerbosityStep {
    Set(u8),
    Raise(u8),
}

pub fn parse_verbosity(s: &str) -> Result<VerbosityStep, String> {
    if s == "+" {
        return Ok(VerbosityStep::Raise(1));
    }
    if !s.is_empty() && s.bytes().all(|b| b == b'v') {
        // "-vv" reaches us as -v with the value "v".
        return Ok(VerbosityStep::Raise(1 + s.len() as u8));
    }
    s.parse::<u8>().map(VerbosityStep::Set).map_err(|_| format!("{s:?} is not a verbosity level (0-4, or -v/-vv)"))
}

pub const DEFAULT_LEVEL: u8 = 2;

pub fn level(steps: &[VerbosityStep]) -> u8 {
    steps.iter().fold(DEFAULT_LEVEL, |lvl, s| match s {
        VerbosityStep::Set(n) => *n,
        VerbosityStep::Raise(n) => lvl.saturating_add(*n),
    })
}

fn filter(level: u8) -> LevelFilter {
    match level {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Log to stderr, or to `file` (appending, created 0600).
/// At the default level only warnings appear: plain lines, no timestamps.
/// From -v3 on, lines carry the time since start, like CRIU's log.
pub fn init(level: u8, file: Option<&Path>) -> Result<()> {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter(level))
        .with_target(level >= 4)
        .with_ansi(file.is_none() && std::io::stderr().is_terminal());
    if level <= DEFAULT_LEVEL && file.is_none() {
        return set(builder.event_format(Plain).with_writer(|| crate::progress::Stderr).try_init());
    }
    let builder = builder.with_timer(tracing_subscriber::fmt::time::uptime());
    match file {
        Some(path) => {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            // The log usually lives in the images directory, which a dump creates.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            set(builder.with_ansi(false).with_writer(std::sync::Mutex::new(f)).try_init())
        }
        None => set(builder.with_writer(|| crate::progress::Stderr).try_init()),
    }
}

/// Whether logging is set up already (once per process).
pub fn is_set() -> bool {
    tracing::dispatcher::has_been_set()
}

fn set(done: Result<(), Box<dyn std::error::Error + Send + Sync>>) -> Result<()> {
    done.map_err(|e| anyhow::anyhow!("setting up the log: {e}"))
}

/// Default-level lines read like ferry's errors: `ferry: warning: …`.
struct Plain;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let what = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            _ => "note",
        };
        write!(w, "ferry: {what}: ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
