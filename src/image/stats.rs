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

/// lazy-stats.json: what the lazy-pages daemon did after the task resumed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyStats {
    /// Faults that had to fetch their page from the source.
    pub faults: u64,
    /// From reading a fault to its page being in place, in the daemon.
    pub fault_p50_us: u64,
    pub fault_p99_us: u64,
    pub fault_max_us: u64,
    /// Bytes placed by the background push (faults not counted).
    pub pushed_bytes: u64,
    /// From the task's resumption to the last page in place.
    pub elapsed_us: u64,
    /// Processes served (a userfaultfd each), and children they forked
    /// meanwhile (served too, from their parent's pages).
    #[serde(default)]
    pub processes: u64,
    #[serde(default)]
    pub forks: u64,
    /// Pre-copied pages the daemon placed from the local images after the
    /// task resumed, and the faults among them.
    #[serde(default)]
    pub local_bytes: u64,
    #[serde(default)]
    pub local_faults: u64,
    /// Of those, bytes fetched from the source instead: their block of the
    /// local images did not match its hash.
    #[serde(default)]
    pub refetched_bytes: u64,
}

impl LazyStats {
    /// Percentile `p` (0..=100) of sorted `v`.
    fn percentile(v: &[std::time::Duration], p: usize) -> u64 {
        if v.is_empty() {
            return 0;
        }
        v[((v.len() - 1) * p).div_ceil(100)].as_micros() as u64
    }

    /// Write to `dir`/lazy-stats.json, beside (not in) the image it is about.
    pub fn save(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("stats always serialize");
        std::fs::write(dir.join(super::LAZY_STATS), bytes)
    }

    pub fn new(
        faults: u64,
        latencies: &[std::time::Duration],
        pushed_bytes: u64,
        elapsed: std::time::Duration,
    ) -> Self {
        let mut v = latencies.to_vec();
        v.sort();
        LazyStats {
            faults,
            fault_p50_us: Self::percentile(&v, 50),
            fault_p99_us: Self::percentile(&v, 99),
            fault_max_us: Self::percentile(&v, 100),
            pushed_bytes,
            elapsed_us: elapsed.as_micros() as u64,
            processes: 0,
            forks: 0,
            local_bytes: 0,
            local_faults: 0,
            refetched_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_of_fault_latencies() {
        let lat: Vec<Duration> = (1..=200).rev().map(Duration::from_micros).collect();
        let s = LazyStats::new(200, &lat, 1 << 20, Duration::from_millis(5));
        insta::assert_json_snapshot!(s);
        assert_eq!(LazyStats::new(0, &[], 0, Duration::ZERO).fault_p99_us, 0);
    }
}
