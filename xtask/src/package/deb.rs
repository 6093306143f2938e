//! `ferry_VERSION-1_DEBARCH.deb` with cargo-deb (its CLI, installed once
//! under target/xtask/tools). What goes in is declared in Cargo.toml's
//! [package.metadata.deb]; the binary comes from the payload's own target
//! directory, so cargo-deb neither builds nor strips anything.

use super::Payload;
use crate::arch::BuildNames;
use crate::project_root;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

const CARGO_DEB_VERSION: &str = "3.8.0";

/// cargo-deb, installed from crates.io on first use.
fn cargo_deb(sh: &Shell) -> Result<PathBuf> {
    let root = project_root().join("target/xtask/tools");
    let bin = root.join("bin/cargo-deb");
    let current = cmd!(sh, "{bin} --version").quiet().ignore_stderr().read().unwrap_or_default();
    if !current.contains(CARGO_DEB_VERSION) {
        eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION}");
        cmd!(sh, "cargo install --locked --quiet cargo-deb --version {CARGO_DEB_VERSION} --root {root}").run()?;
    }
    Ok(bin)
}

pub fn build(sh: &Shell, p: &Payload, out: &Path) -> Result<PathBuf> {
    let tool = cargo_deb(sh)?;
    let triple = p.arch.triple();
    let target_dir = &p.target_dir;
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("ferry_{}-1_{}.deb", p.version, p.arch.debian()));
    let _env = sh.push_env("CARGO_TARGET_DIR", target_dir);
    let _date = sh.push_env("SOURCE_DATE_EPOCH", p.source_date.to_string());
    cmd!(sh, "{tool} deb -p ferry --target {triple} --no-build --no-strip --output {path}")
        .run()
        .with_context(|| format!("cargo deb for {}", p.arch))?;
    Ok(path)
}
