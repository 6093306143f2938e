//! `ferry migrate -t PID --to HOST:PORT`: pre-copy rounds until the dirty
//! set converges, a final lazy dump, then post-copy from the frozen task.

use super::{end_round, send_image, status, GO, RESUME, START};
use crate::dump::{self, DumpOptions, LazyServe};
use crate::image::inventory::ImageKind;
use crate::image::pages_file;
use crate::image::show::human_bytes;
use crate::lazy::serve::{self, Ended};
use crate::net::wire::{read_frame, Kind};
use crate::net::{Credentials, Link};
use crate::ptrace::{O_EXITKILL, O_TRACESYSGOOD};
use crate::track;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::info;

#[derive(Clone, Debug)]
pub struct MigrateOptions {
    pub pid: i32,
    pub to: String,
    pub creds: Credentials,
    /// Stop pre-copy when a round copies at most this many pages…
    pub converge_pages: u64,
    /// …or copies more than this fraction of the round before (not shrinking)…
    pub shrink: f64,
    /// …or after this many rounds.
    pub max_rounds: u32,
    pub tracker: track::Choice,
    pub work_dir: PathBuf,
    pub shell_job: bool,
    /// `--file-locks`, as with dump.
    pub file_locks: bool,
    /// `--ext-unix-sk`, as with dump.
    pub ext_unix_sk: crate::objects::ExtUnixSk,
    /// `--ghost-limit`, as with dump.
    pub ghost_limit: u64,
    /// How long to try to reach the destination again after a cut.
    pub reconnect: Duration,
    /// `--tcp-established`, `--skip-in-flight`, `--network-lock` and
    /// `--action-script`, as with dump.
    pub tcp_established: bool,
    pub skip_in_flight: bool,
    pub network_lock: crate::netlock::Method,
    pub scripts: crate::action_script::Scripts,
}

impl MigrateOptions {
    /// A dump with this migration's options.
    fn dump_options(&self, dir: PathBuf) -> DumpOptions {
        let mut d = DumpOptions::new(self.pid, dir);
        d.shell_job = self.shell_job;
        d.file_locks = self.file_locks;
        d.ext_unix_sk = self.ext_unix_sk.clone();
        d.ghost_limit = self.ghost_limit;
        d.tcp_established = self.tcp_established;
        d.skip_in_flight = self.skip_in_flight;
        d.network_lock = self.network_lock;
        d
    }
}

/// Connect and say `hello`; a START link carries pre-copy first, where
/// nobody waits on single pages, so a busy destination may keep its window
/// shut for a while without ending the migration.
fn connect(to: &str, creds: &Credentials, hello: &str) -> Result<Link> {
    let mut s = Link::connect(to, creds, Duration::from_secs(3))?;
    if hello == START {
        s.set_user_timeout(crate::net::BULK_USER_TIMEOUT)?;
    }
    status(&mut s, hello)?;
    Ok(s)
}

fn say(msg: &str) {
    crate::progress::above(|| println!("migrate: {msg}"));
}

/// This run's staging directory under `dir` (removed when it ends), named
/// after our PID; first, those of runs that were killed (their PID is gone
/// or is not ferry's any more) are removed: on tmpfs they hold memory.
fn staging_dir(dir: &std::path::Path) -> Result<tempfile::TempDir> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(owner) = name.to_str().and_then(stale_owner) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{owner}/comm")).unwrap_or_default();
        // ferry, or ferry installed as criu.
        if !["ferry", "criu"].contains(&comm.trim_end()) {
            info!(dir = %e.path().display(), "removing the staging directory of a migration that was killed");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let prefix = format!("{STAGING}{}-", std::process::id());
    tempfile::Builder::new().prefix(&prefix).tempdir_in(dir).with_context(|| format!("staging in {}", dir.display()))
}

const STAGING: &str = "ferry-migrate-";

/// The PID in a staging directory's name `ferry-migrate-PID-XXXXXX`.
fn stale_owner(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix(STAGING)?.split_once('-')?;
    (!rest.is_empty()).then_some(())?;
    pid.parse().ok()
}

pub fn run(o: &MigrateOptions) -> Result<()> {
    let t0 = Instant::now();
    let pid = o.pid;
    let mut first = o.dump_options(o.work_dir.clone());
    first.lazy = Some(LazyServe::Caller);
    dump::check(&first)?;
    std::fs::create_dir_all(&o.work_dir).with_context(|| format!("creating {}", o.work_dir.display()))?;
    let work = staging_dir(&o.work_dir)?;
    let mut stream = connect(&o.to, &o.creds, START)?;
    say(&format!("connected to {}", o.to));

    // Pre-copy: the task runs; each round sends what changed since the last.
    let mut round = 0u32;
    let mut last_pages = u64::MAX;
    let mut precopy_bytes = 0u64;
    let result = (|| -> Result<(u32, u64)> {
        loop {
            round += 1;
            let dir = work.path().join(round.to_string());
            let mut d = DumpOptions::new(pid, dir.clone());
            d.kind = ImageKind::PreDump;
            d.leave_running = true;
            d.shell_job = true;
            d.file_locks = o.file_locks;
            d.ext_unix_sk = o.ext_unix_sk.clone();
            d.ghost_limit = o.ghost_limit;
            d.tcp_established = true;
            d.skip_in_flight = true;
            d.tracker = o.tracker;
            d.track_owner = Some(std::process::id() as i32);
            if round > 1 {
                d.prev = Some(PathBuf::from(format!("../{}", round - 1)));
            }
            let t = Instant::now();
            let stats = dump::dump(&d)?;
            let sent = send_image(&mut stream, &dir, &round.to_string())?;
            end_round(&mut stream, &round.to_string(), false)?;
            // The next round needs this one's page list, not its pages.
            let _ = std::fs::remove_file(dir.join(pages_file(pid)));
            precopy_bytes += sent;
            let secs = t.elapsed().as_secs_f64();
            say(&format!(
                "round {round}: {} dirty pages, {} sent in {:.0} ms ({}/s), task frozen {:.1} ms",
                stats.pages_written,
                human_bytes(sent),
                secs * 1e3,
                human_bytes((sent as f64 / secs) as u64),
                stats.frozen_us as f64 / 1e3
            ));
            crate::testhook::stage("round");
            let pages = stats.pages_written;
            let converged = round > 1 && pages <= o.converge_pages;
            let stuck = round > 1 && pages as f64 > last_pages as f64 * o.shrink;
            if converged || stuck || round >= o.max_rounds {
                let why = if converged {
                    "dirty set small enough"
                } else if stuck {
                    "dirty set stopped shrinking"
                } else {
                    "round limit"
                };
                say(&format!("pre-copy done after {round} rounds ({why})"));
                return Ok((round, precopy_bytes));
            }
            last_pages = pages;
        }
    })();
    let (rounds, precopy_bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = status(&mut stream, &format!("{e:#}"));
            return Err(e.context("pre-copy failed; the task runs on here, untracked"));
        }
    };

    crate::testhook::stage("precopy-done");
    // Final: frozen from here on; only the pages changed since the last round
    // stay behind, served lazily.
    let final_dir = work.path().join("final");
    let mut d = o.dump_options(final_dir.clone());
    d.prev = Some(PathBuf::from(format!("../{rounds}")));
    d.track_mem = true;
    d.scripts = o.scripts.clone();
    d.lazy = Some(LazyServe::Caller);
    let dumped = dump::dump_frozen(&d)?;
    let frozen = dumped.frozen.expect("a lazy dump keeps the task frozen");
    let final_bytes = send_image(&mut stream, &final_dir, "final")?;
    end_round(&mut stream, "final", true)?;
    let reply = read_frame(&mut stream).context("waiting for the destination to restore");
    match reply {
        Ok(r) if r.kind == Kind::Status && r.text().starts_with("ready") => {}
        other => {
            // The destination never ran the task: it goes on here.
            frozen.release();
            let why = other.map(|f| f.said()).unwrap_or_else(|e| format!("{e:#}"));
            bail!("the destination could not restore the task ({why}); it runs on here");
        }
    }
    // From now on the task must never run here again, even if ferry dies;
    // then the destination may let its copy run.
    frozen.set_options(O_TRACESYSGOOD | O_EXITKILL)?;
    status(&mut stream, GO)?;
    let reply = read_frame(&mut stream).context("waiting for the destination to run the task")?;
    if reply.kind != Kind::Status || !reply.text().starts_with("running") {
        frozen.kill()?;
        bail!("the destination failed after taking over the task ({}); both copies are gone", reply.said());
    }
    let downtime = frozen.since.elapsed();
    say(&format!(
        "task running on {} after {:.1} ms of downtime; {} left to send lazily",
        o.to,
        downtime.as_secs_f64() * 1e3,
        human_bytes(frozen.lazy_bytes())
    ));

    // Post-copy: the task waits on faults, so a cut must show at once.
    stream.set_user_timeout(crate::net::USER_TIMEOUT)?;
    let store = frozen.store()?;
    let stats = serve::ServeStats::default();
    // Nothing lazy: the destination says Done and hangs up at once; its
    // hang-up may come before the Done is read (TLS), which is not a lost
    // connection.
    if frozen.lazy_bytes() == 0 {
        let _ = read_frame(&mut stream);
    } else {
        let total = Some(frozen.lazy_bytes());
        crate::progress::follow("post-copy", total, &stats.bytes, || -> Result<()> {
            loop {
                match serve::serve_conn(stream, &store, &stats) {
                    Ended::Done => break,
                    Ended::Disconnected => {
                        say("connection lost during post-copy; reconnecting");
                        let start = Instant::now();
                        stream = loop {
                            match connect(&o.to, &o.creds, RESUME) {
                                Ok(s) => break s,
                                Err(e) if start.elapsed() > o.reconnect => {
                                    frozen.kill()?;
                                    bail!(
                                        "the destination is unreachable ({e:#}) for {} s during post-copy: \
                                     the source copy of task {pid} was killed",
                                        o.reconnect.as_secs()
                                    );
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                            }
                        };
                    }
                }
            }
            Ok(())
        })?;
    }
    frozen.kill()?;
    let lazy_bytes = stats.bytes.load(std::sync::atomic::Ordering::Relaxed);
    say(&format!(
        "done in {:.2} s: downtime {:.1} ms; sent {} pre-copy ({rounds} rounds), {} final images, {} post-copy ({} faults)",
        t0.elapsed().as_secs_f64(),
        downtime.as_secs_f64() * 1e3,
        human_bytes(precopy_bytes),
        human_bytes(final_bytes),
        human_bytes(lazy_bytes),
        stats.urgent.load(std::sync::atomic::Ordering::Relaxed)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::stale_owner;

    #[test]
    fn staging_names_carry_their_owner() {
        assert_eq!(stale_owner("ferry-migrate-4242-Ab3dEf"), Some(4242));
        assert_eq!(stale_owner("ferry-migrate-Ab3dEf"), None);
        assert_eq!(stale_owner("ferry-migrate-4242-"), None);
        assert_eq!(stale_owner("other-4242-x"), None);
    }
}
