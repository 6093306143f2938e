//! `ferry swrk FD`: CRIU's RPC on a socket the caller hands in (see
//! [`crate::rpc`]).

use crate::rpc::{channel::Channel, service};
use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::socket::{getsockopt, sockopt, SockType};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Example (what runc does): criu swrk 3, with a SOCK_SEQPACKET socket as fd 3")]
pub struct SwrkArgs {
    /// The inherited SOCK_SEQPACKET socket that carries the requests
    #[arg(value_name = "FD")]
    pub fd: i32,
}

pub fn run(a: SwrkArgs) -> Result<ExitCode> {
    if !crate::handed_fd::is_open(a.fd) {
        bail!("fd {} is not open: start ferry swrk with the RPC socket as that descriptor", a.fd);
    }
    // SAFETY: checked open above; borrowed for this one call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(a.fd) };
    let ty = getsockopt(&borrowed, sockopt::SockType).with_context(|| format!("fd {}: not a socket", a.fd))?;
    if ty != SockType::SeqPacket {
        bail!("fd {}: a {ty:?} socket, not the SOCK_SEQPACKET socket CRIU's RPC runs on", a.fd);
    }
    // SAFETY: the caller handed this descriptor to us; nothing else in
    // this process uses it.
    let fd = unsafe { OwnedFd::from_raw_fd(a.fd) };
    service::serve(&std::sync::Arc::new(Channel::new(fd)))?;
    Ok(ExitCode::SUCCESS)
}
