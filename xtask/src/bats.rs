//! runc's own checkpoint tests (tests/integration/checkpoint.bats of
//! Debian's runc source package) with `criu` being ferry, and with
//! `--peer` CRIU 4.1.1 beside it. The source comes from the archive through
//! a private apt configuration; recvtty (the console socket the tests
//! use) is built from that source with Debian's Go; the busybox rootfs
//! tarball the tests would download is made from busybox-static.
//! Cached under target/xtask/runc.

use crate::{apt, project_root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

const DEPS: &[&str] = &[
    "bats",
    "jq",
    "gawk",
    "iproute2",
    "runc",
    "busybox-static",
    "xz-utils",
    "golang-go",
    "golang-github-containerd-console-dev",
    "golang-github-urfave-cli-dev",
    "golang-golang-x-sys-dev",
];

#[derive(clap::Args)]
pub struct RuncBats {
    /// Also run them with CRIU 4.1.1 (built from trixie's source) and
    /// print both results side by side
    #[arg(long)]
    peer: bool,
}

impl RuncBats {
    pub fn run(self, sh: &Shell) -> Result<()> {
        crate::require_root("runc's checkpoint tests")?;
        cmd!(sh, "cargo build --release -p ferry").run()?;
        let ferry = project_root().join("target/release/ferry");
        let suite = Suite::prepare(sh)?;
        let ours = suite.run(sh, "ferry", &ferry)?;
        let peer = if self.peer { Some(suite.run(sh, "criu-4.1.1", &crate::criu::ensure(sh)?)?) } else { None };
        println!("\n{:<64} {:<10} {}", "checkpoint.bats", "ferry", if peer.is_some() { "CRIU 4.1.1" } else { "" });
        for (i, (name, outcome)) in ours.iter().enumerate() {
            let theirs = peer.as_ref().map(|p| p[i].1.as_str()).unwrap_or("");
            println!("{name:<64} {outcome:<10} {theirs}");
        }
        check(&ours)
    }
}

/// Every test passed or was skipped (a machine without what it requires).
pub fn check(results: &[(String, String)]) -> Result<()> {
    let failed: Vec<&str> = results.iter().filter(|(_, o)| o != "ok" && o != "skip").map(|(n, _)| n.as_str()).collect();
    if !failed.is_empty() {
        bail!("runc's checkpoint.bats with ferry as criu: {} failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

pub struct Suite {
    base: PathBuf,
    /// tests/integration of the runc source.
    tests: PathBuf,
}

impl Suite {
    pub fn prepare(sh: &Shell) -> Result<Suite> {
        apt::ensure(sh, DEPS)?;
        let base = project_root().join("target/xtask/runc");
        let tree = match source_tree(&base) {
            Some(t) => t,
            None => {
                fetch_source(sh, &base)?;
                source_tree(&base).context("the runc source did not unpack to runc-*/tests/integration")?
            }
        };
        build_recvtty(sh, &base, &tree)?;
        let tests = tree.join("tests/integration");
        rootfs_tarballs(sh, &base, &tests.join("testdata"))?;
        Ok(Suite { base, tests })
    }

    /// Each test of checkpoint.bats on its own (a hung one is stopped
    /// without losing the others), with `criu` in PATH being `criu`:
    /// (name, "ok" | "skip" | "FAILED" | "TIMEOUT").
    pub fn run(&self, sh: &Shell, label: &str, criu: &Path) -> Result<Vec<(String, String)>> {
        let bin = self.base.join(format!("bin-{label}"));
        std::fs::create_dir_all(&bin)?;
        let link = bin.join("criu");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(criu, &link)?;
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let _dir = sh.push_dir(&self.tests);
        let _path = sh.push_env("PATH", &path);
        let _runc = sh.push_env("RUNC", "/usr/sbin/runc");
        let text = std::fs::read_to_string(self.tests.join("checkpoint.bats"))?;
        let mut out = Vec::new();
        for name in test_names(&text) {
            let filter = format!("^{}$", regex_escape(&name));
            let run = cmd!(sh, "timeout 120 bats -t -f {filter} checkpoint.bats").ignore_status().quiet().output()?;
            let stdout = String::from_utf8_lossy(&run.stdout);
            let outcome = if run.status.code() == Some(124) {
                "TIMEOUT"
            } else if stdout.lines().any(|l| l.starts_with("ok ") && l.contains("# skip")) {
                "skip"
            } else if run.status.success() && stdout.lines().any(|l| l.starts_with("ok ")) {
                "ok"
            } else {
                "FAILED"
            };
            if outcome != "ok" && outcome != "skip" {
                eprintln!("xtask: {label}: {name}: {outcome}\n{stdout}{}", String::from_utf8_lossy(&run.stderr));
            }
            eprintln!("xtask: checkpoint.bats with {label}: {name}: {outcome}");
            out.push((name, outcome.to_string()));
        }
        Ok(out)
    }
}

/// The names of `@test "..."` lines, in order.
fn test_names(bats: &str) -> Vec<String> {
    bats.lines()
        .filter_map(|l| l.strip_prefix("@test \""))
        .filter_map(|l| l.rsplit_once("\" {").map(|(name, _)| name.to_string()))
        .collect()
}

/// `name` as a literal in bats' extended regular expression.
fn regex_escape(name: &str) -> String {
    name.chars().fold(String::new(), |mut s, c| {
        if "\\^$.|?*+()[]{}".contains(c) {
            s.push('\\');
        }
        s.push(c);
        s
    })
}

fn source_tree(base: &Path) -> Option<PathBuf> {
    std::fs::read_dir(base).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("runc-"))
            && p.join("tests/integration/checkpoint.bats").exists()
    })
}

/// Debian 12's runc source (its upstream tarball: the tests and recvtty
/// are in it), through a private apt configuration.
fn fetch_source(sh: &Shell, base: &Path) -> Result<()> {
    let private = apt::PrivateApt::new(sh, &base.join("apt"), "bookworm", "deb-src")?;
    let src = base.join("src");
    std::fs::create_dir_all(&src)?;
    {
        let _d = sh.push_dir(&src);
        let o = private.opts();
        // As for criu (xtask/src/criu.rs): the tarball is all that is used.
        let _ = cmd!(sh, "apt-get {o...} source --download-only runc").run();
    }
    let tarball = std::fs::read_dir(&src)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("runc_") && n.contains(".orig.tar"))
        })
        .context("downloading the runc source: no runc_*.orig.tar.* arrived")?;
    cmd!(sh, "tar -C {base} -xf {tarball}").run()?;
    Ok(())
}

/// recvtty, from the source's own contrib/cmd and libcontainer/utils
/// (the source tree stands in GOPATH as github.com/opencontainers/runc;
/// Debian's -dev packages give the other imports).
fn build_recvtty(sh: &Shell, base: &Path, tree: &Path) -> Result<()> {
    let dir = tree.join("contrib/cmd/recvtty");
    if dir.join("recvtty").exists() {
        return Ok(());
    }
    let gopath = base.join("gopath");
    let org = gopath.join("src/github.com/opencontainers");
    std::fs::create_dir_all(&org)?;
    let link = org.join("runc");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(tree, &link)?;
    let _gopath = sh.push_env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()));
    let _modules = sh.push_env("GO111MODULE", "off");
    let _cache = sh.push_env("GOCACHE", base.join("gocache"));
    let _flags = sh.push_env("GOFLAGS", "");
    let _d = sh.push_dir(link.join("contrib/cmd/recvtty"));
    cmd!(sh, "go build -o recvtty .").run().context("building recvtty from runc's source")?;
    Ok(())
}

/// busybox-ARCH.tar.xz where get-images.sh looks before downloading: a
/// rootfs of Debian's static busybox and its applet links. The Debian
/// image no checkpoint test uses is an empty placeholder.
fn rootfs_tarballs(sh: &Shell, base: &Path, testdata: &Path) -> Result<()> {
    let arch = cmd!(sh, "go env GOARCH").read()?;
    let busybox = testdata.join(format!("busybox-{arch}.tar.xz"));
    if !busybox.exists() {
        let root = base.join("busybox-root");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static's /bin/busybox")?;
        for applet in cmd!(sh, "/bin/busybox --list").read()?.lines() {
            let l = root.join("bin").join(applet);
            if !l.exists() {
                std::os::unix::fs::symlink("busybox", l)?;
            }
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
        cmd!(sh, "tar -C {root} -cJf {busybox} .").run()?;
    }
    let debian = testdata.join(format!("debian-{arch}.tar.xz"));
    if !debian.exists() {
        std::fs::write(&debian, "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters() {
        let text =
            "@test \"checkpoint and restore\" {\n\tsimple_cr\n}\n\n@test \"checkpoint and restore (cgroupns)\" {\n";
        let names = test_names(text);
        assert_eq!(names, ["checkpoint and restore", "checkpoint and restore (cgroupns)"]);
        assert_eq!(regex_escape(&names[1]), "checkpoint and restore \\(cgroupns\\)");
    }
}
