//! `cargo xtask package [--arch ARCH|all] [--sign-key FILE] [--check]`:
//! .deb and .rpm of the static binaries for each architecture, a dnf
//! repository and an apt repository of them, and the packagers' source
//! tarballs, all in target/dist/. `--check` then runs lintian, rpmlint,
//! the signature, install and source-build tests (check.rs).

pub mod check;
pub mod compat;
pub mod deb;
pub mod docs;
pub mod repo;
pub mod rpm;

use crate::arch::{Arch, BuildNames};
use crate::dist::{self, dist_dir};
use crate::{apt, build, project_root};
use anyhow::Result;
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Package {
    /// x86_64, aarch64, ppc64le, s390x (comma-separated), or all
    #[arg(long, default_value = "all")]
    arch: String,
    /// Sign the rpms (and both repositories' metadata) with this
    /// ASCII-armored PGP secret key
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Then check everything: lintian, rpmlint, signatures, a dnf install
    /// into an empty root, a deb install and removal, the packagers' builds
    #[arg(long)]
    check: bool,
}

/// What goes into one architecture's packages.
pub struct Payload {
    pub arch: Arch,
    pub version: String,
    /// Seconds since the epoch of the last commit: every timestamp inside.
    pub source_date: u64,
    /// The stripped static binary...
    pub binary: PathBuf,
    /// ...inside a cargo target directory laid out as cargo-deb expects.
    pub target_dir: PathBuf,
    pub man_pages_gz: Vec<PathBuf>,
    pub completions: PathBuf,
    /// The repository (licenses, README).
    pub root: PathBuf,
    pub homepage: String,
    pub maintainer: String,
}

pub const MAINTAINER: &str = "ferry developers <ferry@example.invalid>";
pub const HOMEPAGE: &str = "https://example.invalid/ferry";

fn host_packages() -> &'static [&'static str] {
    &["dpkg-dev", "apt-utils", "createrepo-c", "gnupg", "rpm", "gzip", "binutils-multiarch"]
}

/// Man pages (gzipped, fixed mtime) and completions, from the CLI.
fn docs(sh: &Shell) -> Result<(Vec<PathBuf>, PathBuf)> {
    let dir = project_root().join("target/xtask/docs");
    docs::generate(&dir)?;
    let gz = dir.join("man-gz");
    let _ = std::fs::remove_dir_all(&gz);
    std::fs::create_dir_all(&gz)?;
    let mut pages = Vec::new();
    for page in docs::man_pages(&dir)? {
        let out = gz.join(format!("{}.gz", page.file_name().unwrap().to_string_lossy()));
        // -n: no name or time in the header, so the bytes depend on the text only.
        let text = cmd!(sh, "gzip -9 -n -c {page}").quiet().output()?.stdout;
        std::fs::write(&out, text)?;
        pages.push(out);
    }
    Ok((pages, dir.join("completions")))
}

/// The binary the guests ran, stripped the way vm-test strips it, placed
/// where cargo-deb looks (TARGET_DIR/TRIPLE/release/ferry).
fn staged_binary(sh: &Shell, arch: Arch, built: &Path) -> Result<(PathBuf, PathBuf)> {
    let target_dir = project_root().join("target/xtask/pkg").join(arch.name());
    let dir = target_dir.join(arch.triple()).join("release");
    std::fs::create_dir_all(&dir)?;
    let (from, to) = (built.join("ferry"), dir.join("ferry"));
    strip(sh, arch, &from, &to)?;
    Ok((to, target_dir))
}

/// `<gnu>-strip -o TO FROM`: what vm-test puts in the guests, and what the
/// packages ship, so the two are the same bytes.
pub fn strip(sh: &Shell, arch: Arch, from: &Path, to: &Path) -> Result<()> {
    let strip = format!("{}-strip", arch.gnu());
    cmd!(sh, "{strip} -o {to} {from}").quiet().run()?;
    Ok(())
}

/// Everything `package` made.
pub struct Made {
    pub debs: Vec<(Arch, PathBuf)>,
    pub rpms: Vec<(Arch, PathBuf)>,
    /// ferry-criu-compat (one for every architecture).
    pub compat_debs: Vec<PathBuf>,
    pub compat_rpms: Vec<PathBuf>,
    pub tarballs: dist::Tarballs,
}

pub fn make(sh: &Shell, archs: &[Arch], sign_key: Option<&Path>) -> Result<Made> {
    apt::ensure(sh, host_packages())?;
    let out = dist_dir();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let (man_pages_gz, completions) = docs(sh)?;
    let tarballs = dist::make(sh)?;
    let (version, source_date) = (tarballs.version.clone(), tarballs.source_date);
    let mut made =
        Made { debs: Vec::new(), rpms: Vec::new(), compat_debs: Vec::new(), compat_rpms: Vec::new(), tarballs };
    for &arch in archs {
        let built = build::build_arch(sh, arch, true, crate::cross::StdRoute::Auto)?;
        let (binary, target_dir) = staged_binary(sh, arch, &built)?;
        let p = Payload {
            arch,
            version: version.clone(),
            source_date,
            binary,
            target_dir,
            man_pages_gz: man_pages_gz.clone(),
            completions: completions.clone(),
            root: project_root(),
            homepage: HOMEPAGE.into(),
            maintainer: MAINTAINER.into(),
        };
        made.debs.push((arch, deb::build(sh, &p, &out)?));
        made.rpms.push((arch, rpm::build(&p, &out, sign_key)?));
        if made.compat_debs.is_empty() {
            made.compat_debs.push(compat::build_deb(sh, &p, &out)?);
            made.compat_rpms.push(compat::build_rpm(sh, &p, &out, sign_key)?);
        }
    }
    let debs = made.debs.iter().map(|(_, p)| p).chain(&made.compat_debs).map(PathBuf::as_path).collect::<Vec<_>>();
    let rpms = made.rpms.iter().map(|(_, p)| p).chain(&made.compat_rpms).map(PathBuf::as_path).collect::<Vec<_>>();
    let gpg = sign_key.map(|key| repo::Gpg::with_key(sh, key)).transpose()?;
    repo::rpm_repo(sh, &rpms, &out.join("rpm"), gpg.as_ref())?;
    repo::apt_repo(sh, &debs, &out.join("apt"), gpg.as_ref())?;
    Ok(made)
}

impl Package {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let archs = crate::arch::parse_list(&self.arch)?;
        if self.check {
            return check::run(sh, &archs);
        }
        let made = make(sh, &archs, self.sign_key.as_deref())?;
        list(&made);
        Ok(())
    }
}

pub fn list(made: &Made) {
    println!();
    for p in made.debs.iter().chain(&made.rpms).map(|(_, p)| p).chain(&made.compat_debs).chain(&made.compat_rpms) {
        println!("{}", p.display());
    }
    println!("{}\n{}", made.tarballs.source.display(), made.tarballs.vendor.display());
    println!("{}/rpm (dnf repository)\n{}/apt (apt repository)", dist_dir().display(), dist_dir().display());
}
