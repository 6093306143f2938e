//! CRIU 4.1.1 as the benchmark peer, built from Debian trixie's source
//! package (Debian 12's criu 3.17 does not run on recent kernels). Cached
//! under target/xtask/criu; never part of ferry.

use crate::{apt, project_root};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use xshell::{cmd, Shell};

const BUILD_DEPS: &[&str] = &[
    "build-essential",
    "pkg-config",
    "xz-utils",
    "libprotobuf-dev",
    "libprotobuf-c-dev",
    "protobuf-c-compiler",
    "protobuf-compiler",
    "python3-protobuf",
    "libnl-3-dev",
    "libnet1-dev",
    "libcap-dev",
    "libbsd-dev",
    "libgnutls28-dev",
    "libaio-dev",
    "uuid-dev",
    "libnftables-dev",
];

/// Path of a working `criu` binary, building it on first use.
pub fn ensure(sh: &Shell) -> Result<PathBuf> {
    let base = project_root().join("target/xtask/criu");
    let built = std::fs::read_dir(&base)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path().join("criu/criu")).find(|p| p.exists()));
    // Also for a cached build: it links to the libraries these bring, and
    // they may have been removed since (checking costs a dpkg query each).
    apt::ensure(sh, BUILD_DEPS)?;
    if let Some(bin) = built {
        return Ok(bin);
    }
    let private = apt::PrivateApt::new(sh, &base.join("apt"), "trixie", "deb-src")?;
    let src = base.join("src");
    std::fs::create_dir_all(&src)?;
    {
        let _d = sh.push_dir(&src);
        let o = private.opts();
        // This mirror serves the upstream tarball but not always the .dsc or
        // Debian diff; the tarball is all the build needs, so apt's
        // complaint about the rest is not fatal.
        let _ = cmd!(sh, "apt-get {o...} source --download-only criu").run();
    }
    let tarball = std::fs::read_dir(&src)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("criu_") && n.contains(".orig.tar"))
        })
        .context("downloading the criu source: no criu_*.orig.tar.* arrived")?;
    cmd!(sh, "tar -C {base} -xf {tarball}").run()?;
    let tree = std::fs::read_dir(&base)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("criu-")))
        .context("the criu tarball did not unpack to criu-*")?;
    {
        let _d = sh.push_dir(&tree);
        cmd!(sh, "make -j2 criu").run().context("building criu")?;
    }
    let bin = tree.join("criu/criu");
    if !bin.exists() {
        bail!("criu built, but {} is missing", bin.display());
    }
    Ok(bin)
}
