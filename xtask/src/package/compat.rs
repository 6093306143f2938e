//! `ferry-criu-compat`: ferry under CRIU's name. It installs
//! `/usr/sbin/criu` as a link to `/usr/bin/ferry` (runc, podman, CRI-O and
//! containerd run `criu` from PATH) and a short man page, depends on ferry
//! of the same version, and takes criu's place the way distributions
//! expect one package to stand in for another: Provides, Conflicts and
//! Replaces criu (Debian) / Provides and Conflicts criu (Fedora). A link
//! is the same on every architecture: one `all` deb and one `noarch` rpm
//! serve the four.

use super::Payload;
use anyhow::{Context, Result};
use rpm::{Dependency, FileOptions};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

pub const NAME: &str = "ferry-criu-compat";
const SUMMARY: &str = "CRIU's name for ferry, for container runtimes";
const DESCRIPTION: &str = "\
Container runtimes (runc, crun, podman, CRI-O, containerd) checkpoint and
restore containers by running criu. This package makes /usr/sbin/criu a
link to ferry, which answers CRIU's command line and its RPC (criu swrk) as
CRIU does, so they use ferry with no other change.";

/// The man page, in section 8 as CRIU's own is.
fn man_page(version: &str) -> String {
    format!(
        ".TH CRIU 8 \"\" \"ferry {version}\" \"System Administration\"\n\
         .SH NAME\ncriu \\- ferry under CRIU's name\n\
         .SH SYNOPSIS\n.B criu\n.I command\n[options]\n\
         .SH DESCRIPTION\n\
         This criu is a link to\n.BR ferry (1),\nwhich checkpoints, restores and live-migrates\n\
         Linux processes and containers. Called criu, it reports its version as CRIU does\n\
         .RB ( \"criu \\-\\-version\" )\nand takes CRIU's commands and options\n\
         .RB ( check \", \" dump \", \" pre\\-dump \", \" restore \", \" page\\-server \", \" lazy\\-pages \", \" swrk ).\n\
         See\n.BR ferry (1)\nand its subcommands' pages.\n"
    )
}

fn write_gz(sh: &Shell, text: &str, to: &Path) -> Result<()> {
    let plain = to.with_extension("");
    std::fs::write(&plain, text)?;
    let gz = cmd!(sh, "gzip -9 -n -c {plain}").quiet().output()?.stdout;
    std::fs::remove_file(&plain)?;
    std::fs::write(to, gz)?;
    Ok(())
}

/// `ferry-criu-compat_VERSION-1_all.deb`, with dpkg-deb.
pub fn build_deb(sh: &Shell, p: &Payload, out: &Path) -> Result<PathBuf> {
    let stage = tempfile::tempdir()?;
    let root = stage.path().join("pkg");
    let doc = root.join(format!("usr/share/doc/{NAME}"));
    for d in ["DEBIAN", "usr/sbin", "usr/share/man/man8", "usr/share/lintian/overrides"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::create_dir_all(&doc)?;
    std::os::unix::fs::symlink("../bin/ferry", root.join("usr/sbin/criu"))?;
    write_gz(sh, &man_page(&p.version), &root.join("usr/share/man/man8/criu.8.gz"))?;
    std::fs::copy(p.root.join("packaging/debian/copyright"), doc.join("copyright"))?;
    let at = format!("@{}", p.source_date);
    let date = cmd!(sh, "date -u -R -d {at}").quiet().read()?;
    let changelog = format!(
        "{NAME} ({v}-1) unstable; urgency=medium\n\n  * Initial release.\n\n -- {m}  {date}\n",
        v = p.version,
        m = p.maintainer
    );
    write_gz(sh, &changelog, &doc.join("changelog.Debian.gz"))?;
    std::fs::copy(
        p.root.join("packaging/compat-lintian-overrides"),
        root.join(format!("usr/share/lintian/overrides/{NAME}")),
    )?;
    let description: String = DESCRIPTION.lines().map(|l| format!(" {l}\n")).collect();
    let control = format!(
        "Package: {NAME}\nVersion: {v}-1\nArchitecture: {a}\nMaintainer: {m}\nSection: admin\nPriority: optional\n\
         Depends: ferry (= {v}-1)\nProvides: criu\nConflicts: criu\nReplaces: criu\nHomepage: {h}\n\
         Description: {SUMMARY}\n{description}",
        v = p.version,
        a = "all",
        m = p.maintainer,
        h = p.homepage
    );
    std::fs::write(root.join("DEBIAN/control"), control)?;
    let sums = {
        let _d = sh.push_dir(&root);
        cmd!(sh, "sh -c 'find usr -type f | sort | xargs md5sum'").quiet().read()?
    };
    std::fs::write(root.join("DEBIAN/md5sums"), sums + "\n")?;
    // Every file at the last commit's time: two builds are the same bytes.
    let placeholder = "{}";
    cmd!(sh, "find {root} -exec touch -h -d {at} {placeholder} +").quiet().run()?;
    cmd!(sh, "chmod -R u=rwX,go=rX {root}").quiet().run()?;
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("{NAME}_{}-1_all.deb", p.version));
    let _date = sh.push_env("SOURCE_DATE_EPOCH", p.source_date.to_string());
    cmd!(sh, "dpkg-deb --root-owner-group -Zxz --build {root} {path}").quiet().run().context("dpkg-deb --build")?;
    Ok(path)
}

/// `ferry-criu-compat-VERSION-1.noarch.rpm`, with the rpm crate.
pub fn build_rpm(sh: &Shell, p: &Payload, out: &Path, sign_key: Option<&Path>) -> Result<PathBuf> {
    let stage = tempfile::tempdir()?;
    let man = stage.path().join("criu.8.gz");
    write_gz(sh, &man_page(&p.version), &man)?;
    let mut b = super::rpm::builder(p, NAME, "noarch", SUMMARY, DESCRIPTION);
    b.requires(Dependency::eq("ferry", p.version.clone()))
        .provides(Dependency::eq("criu", p.version.clone()))
        .conflicts(Dependency::any("criu"));
    b.with_symlink(FileOptions::symlink("/usr/sbin/criu", "../bin/ferry").user("root").group("root"))?;
    b.with_file(&man, FileOptions::new("/usr/share/man/man8/criu.8.gz").permissions(0o644).doc())?;
    for (lic, from) in [("LICENSE-MIT", "LICENSE-MIT"), ("LICENSE-APACHE", "LICENSE-APACHE")] {
        b.with_file(
            p.root.join(from),
            FileOptions::new(format!("/usr/share/licenses/{NAME}/{lic}")).permissions(0o644).license(),
        )?;
    }
    b.with_dir_entry(FileOptions::dir(format!("/usr/share/licenses/{NAME}")).permissions(0o755))?;
    super::rpm::finish(b, sign_key, &out.join(format!("{NAME}-{}-1.noarch.rpm", p.version)))
}
