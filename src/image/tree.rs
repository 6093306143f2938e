//! tree.json: the processes of the dumped tree, how they relate, and
//! which threads each has. PIDs are those of the tree's own PID namespace
//! (the same as ferry's unless the root is the init of its own namespace).

use serde::{Deserialize, Serialize};

pub const TREE: &str = "tree.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Unchecked")]
pub struct TreeImage {
    pub root: i32,
    /// The root was the init (PID 1) of a PID namespace of its own: restore
    /// creates a new one for the tree.
    pub pid_ns: bool,
    /// Every process, parents before their children.
    pub processes: Vec<ProcessEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub pid: i32,
    /// Its name (a zombie keeps one too).
    pub comm: String,
    /// 0 for the root (its parent is not part of the image).
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The signal the parent gets when this process exits (normally SIGCHLD).
    pub exit_signal: i32,
    /// Thread ids, the main thread (= pid) first; empty for a zombie.
    pub threads: Vec<i32>,
    pub state: ProcessState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ProcessState {
    /// Running or sleeping; task-PID.json has the rest.
    Alive,
    /// Exited, not yet reaped by its parent: comes back as a zombie that
    /// its parent can wait for. `status` is the wait(2) status.
    Zombie { status: i32 },
}

/// A tree as it is on disk, before [`TreeImage`] checks it.
#[derive(Deserialize)]
struct Unchecked {
    root: i32,
    pid_ns: bool,
    processes: Vec<ProcessEntry>,
}

impl TryFrom<Unchecked> for TreeImage {
    type Error = String;

    /// Every reader gets a tree: the root first, each other process after
    /// its parent (so no loops), PIDs and thread IDs the kernel could give,
    /// each once.
    fn try_from(u: Unchecked) -> Result<TreeImage, String> {
        let valid = |id: i32| (1..=super::PID_MAX).contains(&id);
        match u.processes.first() {
            Some(first) if first.pid == u.root && valid(u.root) => {}
            _ => return Err(format!("the tree does not start with its root {}", u.root)),
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in u.processes.iter().enumerate() {
            if !valid(p.pid) || (i > 0 && !seen.contains(&p.ppid)) {
                return Err(format!("process {} (parent {}) is not listed after its parent", p.pid, p.ppid));
            }
            let mut tids = std::collections::HashSet::new();
            if p.threads.iter().any(|t| !valid(*t) || !tids.insert(*t))
                || p.threads.first().is_some_and(|t| *t != p.pid)
            {
                return Err(format!("process {} has thread IDs {:?}", p.pid, p.threads));
            }
            if !seen.insert(p.pid) {
                return Err(format!("process {} is listed twice", p.pid));
            }
        }
        Ok(TreeImage { root: u.root, pid_ns: u.pid_ns, processes: u.processes })
    }
}

impl TreeImage {
    pub fn get(&self, pid: i32) -> Option<&ProcessEntry> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    pub fn children(&self, pid: i32) -> impl Iterator<Item = &ProcessEntry> {
        self.processes.iter().filter(move |p| p.ppid == pid && p.pid != pid)
    }

    /// The processes that have a task-PID.json (not zombies).
    pub fn alive(&self) -> impl Iterator<Item = &ProcessEntry> {
        self.processes.iter().filter(|p| p.state == ProcessState::Alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(processes: &str) -> Result<TreeImage, String> {
        serde_json::from_str(&format!(r#"{{"root": 10, "pid_ns": false, "processes": [{processes}]}}"#))
            .map_err(|e| e.to_string())
    }

    fn p(pid: i32, ppid: i32) -> String {
        format!(
            r#"{{"pid": {pid}, "comm": "x", "ppid": {ppid}, "pgid": 10, "sid": 10, "exit_signal": 17, "threads": [{pid}], "state": {{"state": "alive"}}}}"#
        )
    }

    #[test]
    fn trees_with_loops_or_unlisted_parents_are_refused() {
        assert!(tree(&[p(10, 0), p(11, 10), p(12, 11)].join(",")).is_ok());
        // 11 and 12 are each other's parents: a loop a reader would follow forever.
        assert!(tree(&[p(10, 0), p(11, 12), p(12, 11)].join(",")).unwrap_err().contains("not listed after its parent"));
        assert!(tree(&[p(11, 10), p(10, 0)].join(",")).unwrap_err().contains("does not start with its root"));
        assert!(tree(&[p(10, 0), p(10, 10)].join(",")).unwrap_err().contains("listed twice"));
        assert!(tree(&[p(10, 0), p(0, 10)].join(",")).is_err());
        assert!(tree("").is_err());
    }
}
