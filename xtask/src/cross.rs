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

/// Where a foreign architecture's standard library comes from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StdRoute {
    /// Prebuilt if the archive has it today, otherwise compiled from source
    #[default]
    Auto,
    /// Debian's prebuilt libstd-rust-web-dev:ARCH (bookworm-security, then trixie)
    Prebuilt,
    /// Compiled from Debian's rust-web-src with -Zbuild-std
    Source,
}

/// What `Cross::ensure` found, per architecture and route, for this xtask
/// run: one `cargo xtask test` builds each architecture for the guests and
/// again for the packages, and need not look for a standard library twice.
static ENSURED: std::sync::Mutex<Vec<(StdRoute, Cross)>> = std::sync::Mutex::new(Vec::new());

impl Cross {
    /// Install (idempotently) what building for `arch` by `route` needs.
    pub fn ensure(sh: &Shell, arch: Arch, route: StdRoute) -> Result<Cross> {
        if let Some((_, c)) = ENSURED.lock().unwrap().iter().find(|(r, c)| c.arch == arch && *r == route) {
            return Ok(c.clone());
        }
        let c = Self::find(sh, arch, route)?;
        ENSURED.lock().unwrap().push((route, c.clone()));
        Ok(c)
    }

    fn find(sh: &Shell, arch: Arch, route: StdRoute) -> Result<Cross> {
        let pkgs = host_packages(arch);
        let pkgs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
        apt::ensure(sh, &pkgs)?;
        let triple_env = arch.triple().to_uppercase().replace('-', "_");
        let mut flags = "-C target-feature=+crt-static".to_string();
        let mut env = Vec::new();
        let mut build_std = false;
        let cargo = if arch.runs_here() {
            if route != StdRoute::Auto {
                eprintln!("xtask: x86_64 builds with rustup's own standard library; --std applies to the other three");
            }
            // rustup's x86_64 target would make a static-pie: the plain
            // static executable is what the other three produce.
            flags += " -C relocation-model=static";
            PathBuf::from("cargo")
        } else {
            ensure_debian_rustc(sh)?;
            let prebuilt = match route {
                StdRoute::Source => None,
                _ => Some(foreign_sysroot(sh, arch).and_then(|s| check_std(&s, arch).map(|_| s))),
            };
            match prebuilt {
                Some(Ok(sysroot)) => {
                    eprintln!("xtask: {}: prebuilt standard library from {}", arch.name(), sysroot.display());
                    flags += &format!(" --sysroot {}", sysroot.display());
                }
                Some(Err(e)) if route == StdRoute::Prebuilt => {
                    bail!(
                        "{}: no prebuilt standard library: {e:#} (--std source compiles it from rust-web-src)",
                        arch.name()
                    );
                }
                failed => {
                    if let Some(Err(e)) = failed {
                        // The mirror's index for this architecture can be
                        // broken (mid-sync) for days.
                        eprintln!("xtask: {}: no prebuilt standard library: {e:#}", arch.name());
                    }
                    eprintln!("xtask: {}: compiling the standard library from rust-web-src (-Zbuild-std)", arch.name());
                    apt::ensure(sh, &["rust-web-src"])?;
                    build_std = true;
                    // -Zbuild-std on a stable compiler, as Debian's own
                    // cross builds of Rust packages do; the only use of
                    // RUSTC_BOOTSTRAP in the project.
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
        // One target dir per architecture and standard library: host
        // artifacts of two compilers, or crates built against two std
        // builds, would otherwise invalidate each other on every switch.
        let dir = if build_std { format!("{}-std-source", arch.name()) } else { arch.name().to_string() };
        let target_dir = project_root().join("target/cross").join(dir);
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
