//! podman (Debian 12's 4.3.1) checkpoints and restores a container through
//! ferry: podman runs runc, runc runs `criu` from PATH, which is ferry
//! here. The image is imported from Debian's busybox-static (no
//! downloads). What this machine needs (see README, "Containers"):
//! `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096`, as podman asks
//! runc to raise the limits to their hard values and root here lacks
//! CAP_SYS_RESOURCE; `--runtime runc` (Debian's crun has no CRIU);
//! `--network none`, which needs no bridge or firewall here. The
//! containers run under podman's default seccomp profile, which ferry
//! takes along.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/ferry-test-busybox:latest";
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

/// podman with ferry first in PATH as `criu`.
struct Podman {
    bin: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        assert!(nix::unistd::geteuid().is_root(), "the end-to-end tests need root");
        let bin = tempfile::Builder::new().prefix("ferry-podman-").tempdir().unwrap();
        std::os::unix::fs::symlink(common::ferry(), bin.path().join("criu")).unwrap();
        let p = Podman { bin };
        p.image();
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let path = format!("{}:{}", self.bin.path().display(), std::env::var("PATH").unwrap_or_default());
        let mut c = Command::new("podman");
        c.args(args).env("PATH", path).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("podman is installed")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The busybox image, imported once from the host's busybox-static.
    fn image(&self) {
        if self.run(&["image", "exists", IMAGE]).status.success() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        for d in ["bin", "tmp", "proc", "dev", "sys", "etc"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).expect("busybox-static is installed");
        for c in ["sh", "sleep", "cat", "echo", "ps"] {
            std::os::unix::fs::symlink("busybox", root.path().join("bin").join(c)).unwrap();
        }
        let tar = Command::new("tar").arg("-C").arg(root.path()).args(["-c", "."]).stdout(Stdio::piped()).spawn();
        let mut tar = tar.unwrap();
        let out =
            self.cmd(&["import", "-", IMAGE]).stdin(tar.stdout.take().unwrap()).output().expect("podman is installed");
        assert!(tar.wait().unwrap().success());
        assert!(out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
    }
}

struct Ctr<'a> {
    podman: &'a Podman,
    name: String,
}

impl Ctr<'_> {
    fn start<'a>(podman: &'a Podman, name: &str) -> Ctr<'a> {
        let name = format!("ferry-{name}-{}", std::process::id());
        let c = Ctr { podman, name };
        c.podman.ok(&[
            "run",
            "-d",
            "--name",
            &c.name,
            "--runtime",
            "runc",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            IMAGE,
            "sh",
            "-c",
            COUNTER,
        ]);
        c
    }

    fn count(&self) -> Option<u64> {
        let out = self.podman.run(&["exec", &self.name, "cat", "/tmp/count"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    fn wait_count(&self, at_least: u64) -> u64 {
        let start = Instant::now();
        loop {
            if let Some(n) = self.count().filter(|&n| n >= at_least) {
                return n;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the counter stays below {at_least}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status(&self) -> String {
        self.podman.ok(&["inspect", "--format", "{{.State.Status}}", &self.name])
    }

    /// The loop goes on from where it was, not from 1: right after the
    /// restore it reads at least what it had before the checkpoint.
    fn counts_on_from(&self, before: u64) {
        let now = self.count().expect("the restored container answers");
        assert!(now >= before && now <= before + 200, "counted {before} before the checkpoint, {now} after");
        self.wait_count(now + 5);
        let ps = self.podman.ok(&["exec", &self.name, "ps"]);
        assert!(ps.lines().any(|l| l.trim_start().starts_with("1 ") && l.contains("sh -c")), "{ps}");
    }

    /// The seccomp filters of the init, as the last checkpoint kept them.
    fn filters(&self) -> serde_json::Value {
        let task = self.userdata().join("checkpoint/task-1.json");
        let task: serde_json::Value = serde_json::from_slice(&std::fs::read(task).unwrap()).unwrap();
        task["threads"][0]["seccomp"].clone()
    }

    fn userdata(&self) -> PathBuf {
        let id = self.podman.ok(&["inspect", "--format", "{{.ID}}", &self.name]);
        Path::new("/var/lib/containers/storage/overlay-containers").join(id).join("userdata")
    }
}

impl Drop for Ctr<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["rm", "-f", &self.name]);
    }
}

#[test]
fn podman_exports_a_checkpoint_and_imports_it() {
    let podman = Podman::new();
    let c = Ctr::start(&podman, "export");
    let before = c.wait_count(30);
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("ctr.tar.zst");
    podman.ok(&["container", "checkpoint", "--export", file.to_str().unwrap(), &c.name]);
    assert_eq!(c.status(), "exited");
    let list = Command::new("tar").args(["--zstd", "-tf"]).arg(&file).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    // ferry's images, with CRIU's inventory.img that podman looks for.
    for f in ["checkpoint/inventory.img", "checkpoint/inventory.json", "checkpoint/container.json"] {
        assert!(list.lines().any(|l| l == f), "{f} not in the archive:\n{list}");
    }
    podman.ok(&["rm", &c.name]);
    podman.ok(&["container", "restore", "--import", file.to_str().unwrap()]);
    assert_eq!(c.status(), "running");
    c.counts_on_from(before);
}

#[test]
fn podman_pre_checkpoint_then_checkpoint_with_previous() {
    let podman = Podman::new();
    let c = Ctr::start(&podman, "precopy");
    c.wait_count(30);
    podman.ok(&["container", "checkpoint", "--pre-checkpoint", &c.name]);
    assert_eq!(c.status(), "running", "a pre-checkpoint leaves the container running");
    c.wait_count(c.count().unwrap() + 5);
    let before = c.count().unwrap();
    podman.ok(&["container", "checkpoint", "--with-previous", "--keep", &c.name]);
    assert_eq!(c.status(), "exited");
    let dir = c.userdata().join("checkpoint");
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("stats.json")).unwrap()).unwrap();
    assert!(stats["pages_in_parent"].as_u64().unwrap() > 0, "the checkpoint used its parent: {stats}");
    assert!(std::fs::read_link(dir.join("parent")).is_ok(), "CRIU's parent link is there");
    let filters = c.filters();
    assert!(filters.as_array().is_some_and(|f| !f.is_empty()), "podman's seccomp profile was dumped: {filters}");
    podman.ok(&["container", "restore", &c.name]);
    assert_eq!(c.status(), "running");
    c.counts_on_from(before);
    // The restored init runs under the same filter: a checkpoint of it
    // reads back the very program.
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", &c.name]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Seccomp:\t2\n"), "{status}");
    podman.ok(&["container", "checkpoint", "--keep", &c.name]);
    assert_eq!(c.filters(), filters, "the filter after the restore is the one dumped");
}
