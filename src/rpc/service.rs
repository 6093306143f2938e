//! The answer to each request, as CRIU's `swrk` gives it.

use super::channel::Channel;
use super::criu::{CriuFeatures, CriuReq, CriuReqType, CriuResp, CriuVersion};
use anyhow::{bail, Result};
use std::sync::Arc;

/// The CRIU release whose RPC ferry serves, as (major, minor, sublevel):
/// a caller compares it with the release that brought the options it is
/// about to use. Raised as each level's requests and options work: 3.11,
/// runc's containers (30000) with a network namespace from their config
/// (31100); not 3.14 (cgroup v2 freezer) nor 3.15 (external PID namespace).
pub const CRIU_LEVEL: (i32, i32, i32) = (3, 11, 0);

/// Serve requests until one without `keep_open` is answered or the
/// caller closes its end.
pub fn serve(channel: &Arc<Channel>) -> Result<()> {
    // After a PRE_DUMP the session goes on: more pre-dumps, then a dump
    // (CRIU's pre-dump loop), or the caller hangs up.
    let mut pre_dumped = false;
    loop {
        let req = match channel.recv() {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) => {
                // CRIU closes without a word; a caller that waits hears why.
                let _ = channel.send(&refused(CriuReqType::Empty as i32, &format!("{e:#}")));
                return Err(e);
            }
        };
        let keep_open = req.keep_open.unwrap_or(false);
        let kind = CriuReqType::try_from(req.r#type).ok();
        if pre_dumped && !matches!(kind, Some(CriuReqType::PreDump | CriuReqType::Dump)) {
            let why = format!(
                "after PRE_DUMP comes PRE_DUMP or DUMP, not {}",
                kind.map_or("an unknown request", |k| k.as_str_name())
            );
            channel.send(&refused(req.r#type, &why))?;
            bail!("{why}");
        }
        if keep_open && !matches!(kind, Some(CriuReqType::Version | CriuReqType::FeatureCheck)) {
            let name = kind.map_or("this", |k| k.as_str_name());
            let why = format!("keep_open is for VERSION and FEATURE_CHECK requests, not {name}");
            channel.send(&refused(req.r#type, &why))?;
            bail!("{why}");
        }
        let resp = answer(&req, kind, channel);
        if let Some(why) = resp.cr_errmsg.as_deref().filter(|_| !resp.success) {
            // Callers show the log file, not the message (runc: "criu
            // failed: type DUMP errno 0, log file: ...").
            tracing::error!("{why}");
        }
        channel.send(&resp)?;
        if kind == Some(CriuReqType::PreDump) && resp.success {
            pre_dumped = true;
            continue;
        }
        if !keep_open {
            return Ok(());
        }
    }
}

/// The answer to one request (dump and restore notify the caller on
/// `channel` on the way, if it asked).
pub fn answer(req: &CriuReq, kind: Option<CriuReqType>, channel: &Arc<Channel>) -> CriuResp {
    let ok = |r: CriuResp| CriuResp { r#type: req.r#type, success: true, ..r };
    match kind {
        Some(CriuReqType::Version) => ok(CriuResp { version: Some(version()), ..Default::default() }),
        Some(CriuReqType::FeatureCheck) => ok(CriuResp {
            features: Some(features(req.features.as_ref().cloned().unwrap_or_default())),
            ..Default::default()
        }),
        Some(CriuReqType::Check) => {
            let missing = crate::probe::missing(|_, _| {});
            if missing.is_empty() {
                ok(CriuResp::default())
            } else {
                refused(req.r#type, &format!("dump and restore cannot work here: missing {}", missing.join(", ")))
            }
        }
        Some(CriuReqType::Dump) => super::dump::answer(&req.opts.clone().unwrap_or_default(), channel),
        Some(k @ (CriuReqType::PreDump | CriuReqType::SinglePreDump)) => {
            super::dump::answer_pre(k, &req.opts.clone().unwrap_or_default(), channel)
        }
        Some(CriuReqType::Restore) => super::restore::answer(&req.opts.clone().unwrap_or_default(), channel),
        Some(k) => refused(
            req.r#type,
            &format!(
                "ferry swrk does not serve {} requests yet: use ferry's command line (ferry pre-dump, \
                 page-server, lazy-pages)",
                k.as_str_name()
            ),
        ),
        None => refused(CriuReqType::Empty as i32, &format!("invalid request type {}", req.r#type)),
    }
}

fn version() -> CriuVersion {
    let (major, minor, sublevel) = CRIU_LEVEL;
    CriuVersion {
        major_number: major,
        minor_number: minor,
        sublevel: Some(sublevel),
        gitid: None,
        extra: None,
        name: Some(format!("ferry {}", env!("CARGO_PKG_VERSION"))),
    }
}

/// Each feature asked for, probed; the others answered false (as CRIU
/// does). `pidfd_store` (CRIU's PID-reuse check across pre-dumps through
/// a socket the caller keeps) is not implemented: always false.
fn features(asked: CriuFeatures) -> CriuFeatures {
    let probe = |asked: Option<bool>, names: &[&str]| {
        Some(asked == Some(true) && names.iter().all(|n| crate::probe::passes(n)))
    };
    CriuFeatures {
        mem_track: probe(asked.mem_track, &["dirty-tracking"]),
        lazy_pages: probe(asked.lazy_pages, &["uffd", "uffd-events"]),
        pidfd_store: Some(false),
    }
}

fn refused(r#type: i32, why: &str) -> CriuResp {
    CriuResp { r#type, success: false, cr_errmsg: Some(why.to_string()), ..Default::default() }
}
