//! ferry: checkpoint, restore and live-migrate Linux processes.
//!
//! - [`dump`] freezes a process tree and writes its image; [`restore`]
//!   rebuilds it at its PIDs by injecting syscalls into fresh children.
//! - [`objects`] holds one module per kind of object processes share
//!   (open files, shared memory), each behind one trait.
//! - [`image`] is the image directory format, [`proc`] the /proc parsers,
//!   [`ptrace`] the tracing and injection engine, [`probe`] the kernel
//!   feature probes behind `ferry check`.

pub mod action_script;
pub mod cli;
pub mod dump;
pub mod handed_fd;
pub mod image;
pub mod lazy;
pub mod loopback;
pub mod migrate;
pub mod net;
pub mod netlock;
pub mod objects;
pub mod pidfd;
pub mod probe;
pub mod proc;
pub mod progress;
pub mod ptrace;
pub mod restore;
pub mod rpc;
pub mod testhook;
pub mod track;
pub mod uffd;

/// The kernel's page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}
