//! uffd-wp async tracking: arm write-protection over the task's memory,
//! then read (and re-arm) what was written with PAGEMAP_SCAN.

use crate::proc::pagemap::{self, category, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING};
use crate::uffd::{feature, Uffd, REGISTER_MODE_WP};
use anyhow::Result;
use std::fs::File;
use tracing::debug;

/// Features asked of a tracking userfaultfd: writes resolve themselves, no
/// handler needed. Not WP_UNPOPULATED: it plants a marker in every empty
/// page-table entry, which pagemap reports as swapped, and never-touched
/// pages would look like data. A first write to an empty page makes an
/// entry without the protection bit, which the scan reports as written.
pub const FEATURES: u64 = feature::WP_ASYNC;

/// Register and write-protect each range; returns the ranges that cannot
/// be tracked (they are copied in full every round).
pub fn arm(uffd: &Uffd, ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut untracked = Vec::new();
    for &(start, end) in ranges {
        let r =
            uffd.register(start, end - start, REGISTER_MODE_WP).and_then(|_| uffd.write_protect(start, end - start));
        if let Err(e) = r {
            debug!("not tracking {start:#x}-{end:#x}: {e:#}");
            untracked.push((start, end));
        }
    }
    untracked
}

/// Pages of `[start, end)` written since the last scan, write-protected
/// again in the same step when `rearm` (a round follows; otherwise the
/// protection is not worth a page-table write per page inside the freeze).
/// None when the range is not (or no longer) registered: everything in it
/// must be treated as written.
pub fn written(pagemap_file: &File, start: u64, end: u64, rearm: bool) -> Result<Option<Vec<(u64, u64)>>> {
    let flags = if rearm { PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC } else { PM_SCAN_CHECK_WPASYNC };
    match pagemap::scan(pagemap_file, start, end, flags, category::WRITTEN) {
        Ok(mut r) => {
            // The scan walks upwards; sorted order is what lookups rely on.
            r.sort_unstable();
            Ok(Some(r))
        }
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("PAGEMAP_SCAN {start:#x}-{end:#x}: {}", e.desc())),
    }
}
