//! CRIU's RPC, as `ferry swrk FD` serves it: container tools (runc,
//! podman through runc, crun through libcriu, go-criu) start `criu swrk 3`
//! with one end of a SOCK_SEQPACKET socketpair as fd 3 and send one packed
//! `criu_req` per packet; each answer is one packed `criu_resp`, with no
//! length prefix ([`channel`]). The messages are CRIU's own
//! (`images/rpc.proto`, MIT-licensed, generated into [`criu`]).
//!
//! Served so far: VERSION, FEATURE_CHECK, CHECK ([`service`]); DUMP,
//! PRE_DUMP and RESTORE of what ferry's command line can do ([`dump`],
//! [`restore`]: options without a translation are refused by name), with
//! notifications and logs. The page server, WAIT_PID and CPUINFO requests
//! are refused with an answer that says so. VERSION reports the CRIU
//! level whose features ferry has ([`service::CRIU_LEVEL`]).

/// Called as `criu --version` (or `-V`), as the `criu` link to ferry is:
/// CRIU's answer, in CRIU's format, with the level [`service::CRIU_LEVEL`]
/// reports over RPC (scripts and older tools read this line).
pub fn criu_version_line(mut args: impl Iterator<Item = std::ffi::OsString>) -> Option<String> {
    let name = std::path::PathBuf::from(args.next()?);
    let rest: Vec<_> = args.collect();
    if name.file_name()? != "criu" || rest.len() != 1 || !(rest[0] == "--version" || rest[0] == "-V") {
        return None;
    }
    let (major, minor, sublevel) = service::CRIU_LEVEL;
    let level = if sublevel == 0 { format!("{major}.{minor}") } else { format!("{major}.{minor}.{sublevel}") };
    Some(format!("Version: {level}\nGitID: ferry {}", env!("CARGO_PKG_VERSION")))
}

#[allow(clippy::all, missing_docs)]
#[rustfmt::skip]
pub mod criu;
pub mod channel;
pub mod config;
pub mod container;
pub mod dump;
pub mod fields;
pub mod log;
pub mod peer;
pub mod restore;
pub mod service;
