//! `cargo xtask dist`: the sources packagers build from, in target/dist/:
//! `ferry-VERSION.tar.gz` (ferry and ferry-arch as a two-member workspace,
//! the packaging files, and man pages and completions generated from the
//! CLI in dist/) and `ferry-VERSION-vendor.tar.gz` (vendor/ with every
//! crate they link, and the .cargo/config.toml that points cargo there), so
//! `cargo build --offline --frozen` works with no network.

use crate::package::docs;
use crate::project_root;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Dist {}

/// What `dist` made.
pub struct Tarballs {
    pub version: String,
    /// The last commit's time, every mtime inside.
    pub source_date: u64,
    pub source: PathBuf,
    pub vendor: PathBuf,
}

/// Top-level entries of the repository that go into the source tarball;
/// the xtask, test programs and host tests need root and a real kernel and
/// are not what a distribution builds.
const SHIPPED: &[&str] =
    &["Cargo.toml", "Cargo.lock", "LICENSE-APACHE", "LICENSE-MIT", "README.md", "arch", "docs", "packaging", "src"];

pub fn dist_dir() -> PathBuf {
    project_root().join("target/dist")
}

/// ferry's version, from its Cargo.toml.
fn version(sh: &Shell) -> Result<String> {
    let meta = cmd!(sh, "cargo metadata --no-deps --format-version 1 --offline").quiet().read()?;
    let meta: serde_json::Value = serde_json::from_str(&meta)?;
    meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "ferry"))
        .and_then(|p| p["version"].as_str())
        .map(String::from)
        .context("cargo metadata names no ferry package")
}

/// The last commit's time: tarball mtimes, so two runs give the same bytes.
fn source_date(sh: &Shell) -> Result<u64> {
    let t = cmd!(sh, "git log -1 --format=%ct").quiet().read()?;
    Ok(t.trim().parse()?)
}

/// The root Cargo.toml with only the shipped members.
fn trimmed_manifest(text: &str) -> Result<String> {
    let mut out = String::new();
    let mut found = 0;
    for line in text.lines() {
        if line.starts_with("members = ") || line.starts_with("default-members = ") {
            let key = line.split(' ').next().unwrap_or_default();
            out += &format!("{key} = [\".\", \"arch\"]\n");
            found += 1;
        } else {
            out += line;
            out.push('\n');
        }
    }
    if found != 2 {
        bail!("Cargo.toml: expected members and default-members lines in [workspace]");
    }
    Ok(out)
}

fn copy_tree(sh: &Shell, from: &Path, to: &Path) -> Result<()> {
    let files = {
        let _d = sh.push_dir(from);
        cmd!(sh, "git ls-files -z --cached --others --exclude-standard").quiet().read()?
    };
    for f in files.split('\0').filter(|f| !f.is_empty()) {
        let top = f.split('/').next().unwrap_or_default();
        // Tracked files deleted in the working tree are not shipped.
        if !SHIPPED.contains(&top) || !from.join(f).exists() {
            continue;
        }
        let dest = to.join(f);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::copy(from.join(f), &dest).with_context(|| format!("copying {f}"))?;
    }
    Ok(())
}

/// tar + gzip with fixed owners, order and times.
fn tarball(sh: &Shell, dir: &Path, entries: &[&str], out: &Path, mtime: u64) -> Result<()> {
    let _d = sh.push_dir(dir);
    let mtime = format!("--mtime=@{mtime}");
    let tar = out.with_extension("");
    cmd!(sh, "tar --sort=name {mtime} --owner=0 --group=0 --numeric-owner --format=gnu -cf {tar} {entries...}")
        .quiet()
        .run()?;
    cmd!(sh, "gzip -9 -n -f {tar}").quiet().run()?;
    Ok(())
}

pub fn make(sh: &Shell) -> Result<Tarballs> {
    let version = version(sh)?;
    let mtime = source_date(sh)?;
    let name = format!("ferry-{version}");
    let stage = project_root().join("target/xtask/dist");
    let _ = std::fs::remove_dir_all(&stage);
    let tree = stage.join(&name);
    std::fs::create_dir_all(&tree)?;
    copy_tree(sh, &project_root(), &tree)?;
    let manifest = std::fs::read_to_string(tree.join("Cargo.toml"))?;
    std::fs::write(tree.join("Cargo.toml"), trimmed_manifest(&manifest)?)?;
    docs::generate(&tree.join("dist"))?;
    // Vendoring the two-member workspace also drops the xtask's and test
    // programs' crates from Cargo.lock, keeping every other version.
    let config = {
        let _d = sh.push_dir(&tree);
        cmd!(sh, "cargo vendor --versioned-dirs vendor").quiet().read().context("cargo vendor")?
    };
    std::fs::create_dir_all(tree.join(".cargo"))?;
    std::fs::write(tree.join(".cargo/config.toml"), format!("# Written by `cargo xtask dist`.\n{config}\n"))?;
    let out = dist_dir();
    std::fs::create_dir_all(&out)?;
    let source = out.join(format!("{name}.tar.gz"));
    let vendor = out.join(format!("{name}-vendor.tar.gz"));
    let top: Vec<String> = std::fs::read_dir(&tree)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "vendor" && n != ".cargo")
        .map(|n| format!("{name}/{n}"))
        .collect();
    let top: Vec<&str> = top.iter().map(String::as_str).collect();
    tarball(sh, &stage, &top, &source, mtime)?;
    // Unpacked inside the source tree (rpm's `%autosetup -a 1`).
    tarball(sh, &tree, &["vendor", ".cargo"], &vendor, mtime)?;
    Ok(Tarballs { version, source_date: mtime, source, vendor })
}

impl Dist {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let t = make(sh)?;
        for f in [&t.source, &t.vendor] {
            let size = std::fs::metadata(f)?.len();
            println!("{} ({:.1} MB)", f.display(), size as f64 / 1e6);
        }
        Ok(())
    }
}
