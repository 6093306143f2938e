//! `ferry-VERSION-1.ARCH.rpm` with the rpm crate: the static binary, man
//! pages (gzipped), completions, license and README, owned by root, signed
//! when a key is given.

use super::Payload;
use crate::arch::BuildNames;
use anyhow::{Context, Result};
use rpm::{FileOptions, PackageBuilder};
use std::path::{Path, PathBuf};

const SUMMARY: &str = "Checkpoint, restore and live-migrate Linux processes";
/// Lines of at most 79 characters, as rpm descriptions are wrapped.
const DESCRIPTION: &str = "\
ferry checkpoints a running process into an image directory and restores it
at its original PID, on the same machine or another one. Live migration
copies memory while the process runs, then lets the restored process fault
its remaining pages in from the source over userfaultfd. Its commands and
flags follow CRIU's.";

/// ferry's own code is MIT OR Apache-2.0; the CRIU RPC messages it
/// carries (src/rpc, from CRIU's images/rpc.proto) are MIT.
pub const LICENSE: &str = "(MIT OR Apache-2.0) AND MIT";

/// Build the rpm of `p` into `out`; returns its path.
pub fn build(p: &Payload, out: &Path, sign_key: Option<&Path>) -> Result<PathBuf> {
    let mut b = builder(p, "ferry", p.arch.rpm(), SUMMARY, DESCRIPTION);
    b.with_file(&p.binary, FileOptions::new("/usr/bin/ferry").permissions(0o755).user("root").group("root"))?;
    for page in &p.man_pages_gz {
        let name = page.file_name().unwrap().to_string_lossy();
        b.with_file(page, FileOptions::new(format!("/usr/share/man/man1/{name}")).permissions(0o644).doc())?;
    }
    let c = &p.completions;
    b.with_file(
        c.join("ferry.bash"),
        FileOptions::new("/usr/share/bash-completion/completions/ferry").permissions(0o644),
    )?;
    b.with_file(c.join("_ferry"), FileOptions::new("/usr/share/zsh/site-functions/_ferry").permissions(0o644))?;
    b.with_file(
        c.join("ferry.fish"),
        FileOptions::new("/usr/share/fish/vendor_completions.d/ferry.fish").permissions(0o644),
    )?;
    for (lic, from) in [
        ("LICENSE-MIT", "LICENSE-MIT"),
        ("LICENSE-APACHE", "LICENSE-APACHE"),
        ("LICENSE-CRIU-images", "src/rpc/LICENSE-CRIU-images"),
    ] {
        b.with_file(
            p.root.join(from),
            FileOptions::new(format!("/usr/share/licenses/ferry/{lic}")).permissions(0o644).license(),
        )?;
    }
    b.with_file(p.root.join("README.md"), FileOptions::new("/usr/share/doc/ferry/README.md").permissions(0o644).doc())?;
    // The package owns the directories only it creates.
    for dir in ["/usr/share/licenses/ferry", "/usr/share/doc/ferry"] {
        b.with_dir_entry(FileOptions::dir(dir).permissions(0o755))?;
    }
    // A static binary links nothing: no library Requires (rpm adds the
    // package's own Provides).
    finish(b, sign_key, &out.join(format!("ferry-{}-1.{}.rpm", p.version, p.arch.rpm())))
}

/// A package of `p`'s version with ferry's fields (release 1, vendor,
/// packager, the first changelog entry), reproducible: every timestamp is
/// the last commit's.
pub fn builder(p: &Payload, name: &str, arch: &str, summary: &str, description: &str) -> PackageBuilder {
    let config = rpm::BuildConfig::v4().compression(rpm::CompressionType::Zstd).source_date(p.source_date as u32);
    let mut b = PackageBuilder::new(name, &p.version, LICENSE, arch, summary);
    b.using_config(config)
        .release("1")
        .description(description)
        .url(p.homepage.clone())
        .vendor("ferry developers")
        .packager(p.maintainer.clone())
        .group("System/Management")
        .build_host("ferry-xtask");
    b.add_changelog_entry(format!("{} - {}-1", p.maintainer, p.version), "- First package", p.source_date as u32);
    b
}

/// Build (signed when a key is given) and write to `path`.
pub fn finish(mut b: PackageBuilder, sign_key: Option<&Path>, path: &Path) -> Result<PathBuf> {
    let pkg = match sign_key {
        Some(key) => {
            let signer = rpm::signature::pgp::Signer::from_asc_file(key)
                .with_context(|| format!("{}: not an ASCII-armored PGP secret key", key.display()))?;
            b.build_and_sign(signer)?
        }
        None => b.build()?,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    pkg.write_file(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}
