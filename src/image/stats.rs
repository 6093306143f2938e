//! stats.json: how long the task was frozen and what the dump cost.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpStats {
    /// From PTRACE_INTERRUPT to the task's release (detach or kill).
    pub frozen_us: u64,
    /// Spent copying memory out of the task.
    pub memdump_us: u64,
    /// Spent writing image files (overlaps memdump for pages).
    pub write_us: u64,
    /// Whole command, start to end.
    pub total_us: u64,
    pub vmas: u64,
    pub pages_scanned: u64,
    /// Pages copied into this image's pages file.
    pub pages_written: u64,
    /// Pages unchanged since the parent image.
    #[serde(default)]
    pub pages_in_parent: u64,
    /// Pages left on the source for lazy transfer.
    #[serde(default)]
    pub pages_lazy: u64,
    pub bytes_written: u64,
}

impl DumpStats {
    /// Dump throughput of page data in bytes per second.
    pub fn page_rate(&self) -> f64 {
        if self.memdump_us == 0 {
            return 0.0;
        }
        self.bytes_written as f64 / (self.memdump_us as f64 / 1e6)
    }
}
