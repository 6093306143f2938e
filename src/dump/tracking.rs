//! Dirty tracking around one dump round: what was written since the last
//! round (read while the task is frozen), and arming for the next one.

use super::injected::with_injector;
use super::memory::PlannedVma;
use super::pages::EarlyPageTables;
use crate::image::task::VmaKind;
use crate::proc::maps::Mapping;
use crate::proc::ProcDir;
use crate::ptrace::Tracee;
use crate::track::holder::{self, HolderRef};
use crate::track::{uffd_wp, Method, Written};
use crate::uffd::{self, Uffd};
use anyhow::{Context, Result};
use ferry_arch::NativeState;
use std::fs::File;
use std::time::Duration;
use tracing::{debug, info};

/// Areas whose pages the trackers follow (others are copied in full or not at all).
fn trackable(pv: &PlannedVma) -> bool {
    match pv.vma.kind {
        VmaKind::Anon => true,
        VmaKind::File { .. } | VmaKind::Object { .. } => !pv.map.shared,
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock => false,
    }
}

/// Whether this round reads written pages with uffd-wp.
pub fn scans_written(method: Method, holder: Option<&HolderRef>) -> bool {
    method == Method::UffdWp && holder.is_some_and(HolderRef::alive)
}

/// uffd-wp: per planned area, the pages written since the last round
/// (re-protected in the same step when tracking goes on; taken from
/// `early` where it scanned them). None overall when nothing is tracked.
pub fn written(
    method: Method,
    holder: Option<&HolderRef>,
    proc: &ProcDir,
    planned: &[PlannedVma],
    goes_on: bool,
    early: &mut EarlyPageTables,
) -> Result<Option<Written>> {
    if !scans_written(method, holder) {
        return Ok(None);
    }
    let path = proc.path("pagemap");
    let pm = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::with_capacity(planned.len());
    for pv in planned {
        out.push(match early.take_written(pv.map.start, pv.map.end) {
            _ if !trackable(pv) => None,
            Some(w) if !goes_on => w,
            _ => uffd_wp::written(&pm, pv.vma.start, pv.vma.end, goes_on)?,
        });
    }
    Ok(Some(out))
}

/// Arm tracking of one process for the next round while it is still
/// frozen; returns the holder of its userfaultfd (uffd-wp).
#[allow(clippy::too_many_arguments)]
pub fn arm(
    method: Method,
    holder: Option<HolderRef>,
    written: &Option<Written>,
    tracee: &Tracee,
    maps: &[Mapping],
    planned: &[PlannedVma],
    regs: &NativeState,
    mask: u64,
    idle: Duration,
    owner: Option<i32>,
) -> Result<Option<HolderRef>> {
    let pid = tracee.pid;
    match method {
        Method::UffdWp => {
            let (uffd, holder) = match holder.filter(HolderRef::alive) {
                Some(h) => (Uffd::from_fd(h.take_uffd()?), h),
                None => {
                    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::USER_MODE_ONLY;
                    let (u, _) = with_injector(tracee, maps, regs, mask, |inj, _, _| uffd::create_in(inj, flags))?;
                    u.api(uffd_wp::FEATURES)?;
                    let h = holder::spawn(u.fd(), pid, idle, owner)?;
                    info!(pid, holder = h.pid, "dirty tracking armed (uffd-wp)");
                    (u, h)
                }
            };
            // Areas the scan did not cover (new, moved, or never armed).
            let ranges: Vec<(u64, u64)> = planned
                .iter()
                .enumerate()
                .filter(|(i, pv)| trackable(pv) && written.as_ref().is_none_or(|w| w[*i].is_none()))
                .map(|(_, pv)| (pv.vma.start, pv.vma.end))
                .collect();
            let untracked = uffd_wp::arm(&uffd, &ranges);
            debug!(pid, armed = ranges.len() - untracked.len(), untracked = untracked.len(), "areas write-protected");
            Ok(Some(holder))
        }
        Method::SoftDirty => {
            let p = ProcDir::new(pid).path("clear_refs");
            std::fs::write(&p, "4").with_context(|| format!("resetting soft-dirty bits: {}", p.display()))?;
            Ok(None)
        }
        Method::Hashing => Ok(None),
    }
}
