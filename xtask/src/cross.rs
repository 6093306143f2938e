//! Cross toolchains: Debian's rustc 1.96 (rustup here has x86_64 only and
//! cannot download targets) with the foreign standard libraries taken from
//! Debian trixie's libstd-rust-web-dev:ARCH, unpacked into a private
//! sysroot under target/xtask (the host's dpkg never sees a foreign
//! package), and Debian's cross gcc as linker. x86_64 uses rustup's
//! toolchain. Every binary is static (+crt-static).

use crate::arch::{Arch, BuildNames};
use crate::{apt, project_root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// How to run cargo for one architecture.
#[derive(Clone)]
pub struct Cross {
    pub arch: Arch,
    cargo: PathBuf,
    env: Vec<(String, String)>,
    /// Compile the standard library from rust-web-src (-Zbuild-std).
    build_std: bool,
    pub target_dir: PathBuf,
}

fn xtask_dir() -> PathBuf {
    project_root().join("target/xtask")
}

/// The Debian packages a cross build of `arch` needs on the host.
fn host_packages(arch: Arch) -> Vec<String> {
    let mut p = vec!["file".to_string()];
    if !arch.runs_here() {
        p.extend(["rustc-web", "cargo-web", "dpkg-dev"].map(String::from));
        p.push(format!("gcc-{}", arch.gnu()));
        p.push(format!("libc6-dev-{}-cross", arch.debian()));
    }
    p
}

/// trixie's standard library for `arch`, unpacked once: returns the sysroot.
fn foreign_sysroot(sh: &Shell, arch: Arch) -> Result<PathBuf> {
    let base = xtask_dir().join("rust-std").join(arch.debian());
    let sysroot = base.join("root/usr");
    let rustlib = sysroot.join("lib/rustlib").join(arch.triple());
    if !rustlib.join("lib").exists() {
        // bookworm-security's build matches the host's rustc exactly;
        // trixie has the same release where bookworm lacks one (s390x).
        // One index per architecture and suite: a foreign index that fails
        // to download makes apt refuse everything else.
        let pkgs: Vec<String> =
            ["libstd-rust-web-dev", "libstd-rust-web-1.96"].iter().map(|p| format!("{p}:{}", arch.debian())).collect();
        let got = apt::try_suites(sh, &[&["bookworm"], &["trixie"]], arch.debian(), |private| {
            private.fetch_and_unpack(sh, &pkgs, &base.join("debs"), &base.join("root"))
        });
        if !rustlib.join("lib").exists() {
            let why = got.err().map(|e| format!("{e:#}")).unwrap_or_default();
            bail!("the {} standard library did not unpack to {} ({why})", arch.name(), rustlib.display());
        }
    }
    // Build scripts and proc macros run on the host: the sysroot must have
    // the host's standard library too.
    let host = sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu");
    if !host.exists() {
        std::os::unix::fs::symlink("/usr/lib/rustlib/x86_64-unknown-linux-gnu", &host)?;
    }
    Ok(sysroot)
}

/// Debian's rustc must be the release of the foreign std (1.96, from
/// bookworm-security); stale package lists on a fresh machine offer 1.85.
pub fn ensure_debian_rustc(sh: &Shell) -> Result<()> {
    let version = || cmd!(sh, "{DEBIAN_RUSTC} --version").quiet().read().unwrap_or_default();
    if version().contains(" 1.96") {
        return Ok(());
    }
    eprintln!("xtask: Debian's rustc is not 1.96 ({}): updating it", version().trim());
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update").run()?;
    cmd!(sh, "apt-get install -y --no-install-recommends rustc-web cargo-web").run()?;
    if !version().contains(" 1.96") {
        bail!("Debian's rustc is {}, but the cross builds need 1.96 (bookworm-security)", version().trim());
    }
    Ok(())
}

/// Check the unpacked std has its libraries.
fn check_std(sysroot: &Path, arch: Arch) -> Result<()> {
    let libs = sysroot.join("lib/rustlib").join(arch.triple()).join("lib");
    let has_std = std::fs::read_dir(&libs)?
        .flatten()
        .any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("libstd-") && n.ends_with(".rlib")));
    if !has_std {
        bail!("{} has no libstd rlib", libs.display());
    }
    Ok(())
}

/// What `Cross::ensure` found, per architecture, for this xtask run: one
/// `cargo xtask test` builds each architecture for the guests and again
/// for the packages, and need not look for a standard library twice.
static ENSURED: std::sync::Mutex<Vec<Cross>> = std::sync::Mutex::new(Vec::new());

impl Cross {
    /// Install (idempotently) what building for `arch` needs.
    pub fn ensure(sh: &Shell, arch: Arch) -> Result<Cross> {
        if let Some(c) = ENSURED.lock().unwrap().iter().find(|c| c.arch == arch) {
            return Ok(c.clone());
        }
        let c = Self::find(sh, arch)?;
        ENSURED.lock().unwrap().push(c.clone());
        Ok(c)
    }

    fn find(sh: &Shell, arch: Arch) -> Result<Cross> {
        let pkgs = host_packages(arch);
        let pkgs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
        apt::ensure(sh, &pkgs)?;
        let triple_env = arch.triple().to_uppercase().replace('-', "_");
        let mut flags = "-C target-feature=+crt-static".to_string();
        let mut env = Vec::new();
        let mut build_std = false;
        let cargo = if arch.runs_here() {
            // rustup's x86_64 target would make a static-pie: the plain
            // static executable is what the other three produce.
            flags += " -C relocation-model=static";
            PathBuf::from("cargo")
        } else {
            ensure_debian_rustc(sh)?;
            match foreign_sysroot(sh, arch).and_then(|s| check_std(&s, arch).map(|_| s)) {
                Ok(sysroot) => flags += &format!(" --sysroot {}", sysroot.display()),
                Err(e) => {
                    // The mirror's index for this architecture can be broken
                    // (mid-sync) for days: compile the standard library from
                    // Debian's own source package instead (arch: all).
                    eprintln!(
                        "xtask: no prebuilt {} standard library ({e:#}); building it from rust-web-src",
                        arch.name()
                    );
                    apt::ensure(sh, &["rust-web-src"])?;
                    build_std = true;
                    // -Zbuild-std on a stable compiler, as Debian's own
                    // cross builds of Rust packages do.
                    env.push(("RUSTC_BOOTSTRAP".into(), "1".into()));
                }
            }
            // ~/.cargo/bin comes first in PATH: without RUSTC, Debian's
            // cargo would run rustup's rustc, which cannot use this std.
            env.push(("RUSTC".into(), DEBIAN_RUSTC.into()));
            env.push((format!("CARGO_TARGET_{triple_env}_LINKER"), format!("{}-gcc", arch.gnu())));
            PathBuf::from(DEBIAN_CARGO)
        };
        env.push((format!("CARGO_TARGET_{triple_env}_RUSTFLAGS"), flags));
        // One target dir per architecture: host artifacts of two compilers
        // would otherwise invalidate each other on every switch.
        let target_dir = project_root().join("target/cross").join(arch.name());
        Ok(Cross { arch, cargo, env, build_std, target_dir })
    }

    /// `cargo build` of `packages` for this architecture.
    pub fn build(&self, sh: &Shell, packages: &[&str], release: bool) -> Result<PathBuf> {
        let cargo = &self.cargo;
        let triple = self.arch.triple();
        let target_dir = &self.target_dir;
        let mut args = vec!["build".to_string(), "--target".into(), triple.into()];
        args.push("--target-dir".into());
        args.push(target_dir.display().to_string());
        for p in packages {
            args.push("-p".into());
            args.push(p.to_string());
        }
        if release {
            args.push("--release".into());
        }
        if self.build_std {
            args.push("-Zbuild-std=std,panic_abort".into());
        }
        let mut c = cmd!(sh, "{cargo} {args...}");
        for (k, v) in &self.env {
            c = c.env(k, v);
        }
        c.run().with_context(|| format!("building for {}", self.arch.name()))?;
        Ok(target_dir.join(triple).join(if release { "release" } else { "debug" }))
    }
}
