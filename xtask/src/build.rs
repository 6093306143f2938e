//! `cargo xtask build --arch ARCH|all [--release] [--std auto|prebuilt|source]`: static ferry and test
//! programs for each architecture, checked with `file`.

use crate::arch::{Arch, BuildNames};
use crate::cross::{Cross, StdRoute};
use crate::project_root;
use anyhow::{bail, Result};
use std::path::PathBuf;
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Build {
    /// x86_64, aarch64, ppc64le, s390x (comma-separated), or all
    #[arg(long, default_value = "all")]
    arch: String,
    #[arg(long)]
    release: bool,
    /// Where the standard library of aarch64, ppc64le and s390x comes from
    #[arg(long, value_enum, default_value_t)]
    std: StdRoute,
}

/// The test programs (every file in testprogs/src/bin).
pub fn testprogs() -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(project_root().join("testprogs/src/bin"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(String::from))
        .collect();
    v.sort();
    Ok(v)
}

/// Build ferry and the test programs for `arch`; returns their directory.
pub fn build_arch(sh: &Shell, arch: Arch, release: bool, std: StdRoute) -> Result<PathBuf> {
    let cross = Cross::ensure(sh, arch, std)?;
    let dir = cross.build(sh, &["ferry", "ferry-testprogs"], release)?;
    for bin in std::iter::once("ferry".to_string()).chain(testprogs()?) {
        let path = dir.join(&bin);
        let what = cmd!(sh, "file -b {path}").quiet().read()?;
        if !what.contains(arch.file_machine()) || !what.contains("statically linked") {
            bail!("{}: expected a static {} binary, `file` says: {what}", path.display(), arch.name());
        }
    }
    Ok(dir)
}

impl Build {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let archs = crate::arch::parse_list(&self.arch)?;
        let mut built = Vec::new();
        for arch in archs {
            let dir = build_arch(sh, arch, self.release, self.std)?;
            built.push((arch, dir));
        }
        println!();
        for (arch, dir) in built {
            let ferry = dir.join("ferry");
            let what = cmd!(sh, "file -b {ferry}").quiet().read()?;
            println!("{:<8} {}\n         {what}", arch.name(), ferry.display());
        }
        Ok(())
    }
}
