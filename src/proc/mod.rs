//! Parsers for the /proc files ferry reads. Each parser is a pure function
//! over the file's text; [`ProcDir`] only adds reading with an error that
//! names the file.

pub mod fdinfo;
pub mod limits;
pub mod maps;
pub mod mountinfo;
pub mod pagemap;
pub mod stat;
pub mod status;
pub mod tcp_table;
pub mod unix_diag;

use anyhow::{Context, Result};
use std::path::PathBuf;

/// `/proc/PID` of one task.
#[derive(Clone, Debug)]
pub struct ProcDir {
    pub pid: i32,
    root: PathBuf,
}

impl ProcDir {
    pub fn new(pid: i32) -> Self {
        ProcDir { pid, root: PathBuf::from(format!("/proc/{pid}")) }
    }

    /// `/proc/self`, resolved to our own PID so paths in errors are stable.
    pub fn current() -> Self {
        Self::new(std::process::id() as i32)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    pub fn read(&self, rel: &str) -> Result<String> {
        let p = self.path(rel);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    pub fn read_bytes(&self, rel: &str) -> Result<Vec<u8>> {
        let p = self.path(rel);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    pub fn read_link(&self, rel: &str) -> Result<PathBuf> {
        let p = self.path(rel);
        std::fs::read_link(&p).with_context(|| format!("reading link {}", p.display()))
    }

    pub fn status(&self) -> Result<status::Status> {
        let text = self.read("status")?;
        status::Status::parse(&text).with_context(|| format!("parsing {}", self.path("status").display()))
    }

    pub fn stat(&self) -> Result<stat::Stat> {
        let text = self.read("stat")?;
        stat::Stat::parse(&text).with_context(|| format!("parsing {}", self.path("stat").display()))
    }

    pub fn smaps(&self) -> Result<Vec<maps::Mapping>> {
        let text = self.read("smaps")?;
        maps::parse(&text).with_context(|| format!("parsing {}", self.path("smaps").display()))
    }

    pub fn maps(&self) -> Result<Vec<maps::Mapping>> {
        let text = self.read("maps")?;
        maps::parse(&text).with_context(|| format!("parsing {}", self.path("maps").display()))
    }

    pub fn limits(&self) -> Result<Vec<limits::Limit>> {
        let text = self.read("limits")?;
        limits::parse(&text).with_context(|| format!("parsing {}", self.path("limits").display()))
    }

    /// fdinfo of `fd`: its common fields parsed, and the text they came
    /// from (a kind of file adds fields of its own).
    pub fn fdinfo(&self, fd: i32) -> Result<(fdinfo::FdInfo, String)> {
        let rel = format!("fdinfo/{fd}");
        let text = self.read(&rel)?;
        let info = fdinfo::FdInfo::parse(&text).with_context(|| format!("parsing {}", self.path(&rel).display()))?;
        Ok((info, text))
    }

    /// Open file descriptors, ascending.
    pub fn fds(&self) -> Result<Vec<i32>> {
        let dir = self.path("fd");
        let mut fds = Vec::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                fds.push(n);
            }
        }
        fds.sort_unstable();
        Ok(fds)
    }

    /// Child PIDs of the task's main thread.
    pub fn children(&self) -> Result<Vec<i32>> {
        let text = self.read(&format!("task/{}/children", self.pid))?;
        Ok(text.split_whitespace().filter_map(|s| s.parse().ok()).collect())
    }

    /// The process's threads (TIDs), ascending; empty once it is gone.
    pub fn threads(&self) -> Result<Vec<i32>> {
        let dir = self.path("task");
        let mut tids = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(tids),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for e in entries.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                tids.push(n);
            }
        }
        tids.sort_unstable();
        Ok(tids)
    }

    /// Children of every thread (a child belongs to the thread that forked it).
    pub fn all_children(&self) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        for tid in self.threads()? {
            // A thread that exited since the listing has no children left.
            if let Ok(text) = self.read(&format!("task/{tid}/children")) {
                out.extend(text.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// `/proc/PID/task/TID`: one thread's own files.
    pub fn thread(&self, tid: i32) -> ProcDir {
        ProcDir { pid: tid, root: self.root.join("task").join(tid.to_string()) }
    }
}

/// Parse a `key:\tvalue` file (status, fdinfo) into ordered pairs.
pub(crate) fn key_values(text: &str) -> Vec<(&str, &str)> {
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect()
}
