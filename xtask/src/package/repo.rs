//! The two repositories users install from: a dnf repository (createrepo_c)
//! of the rpms and a flat apt repository (Packages, Release) of the debs,
//! their metadata signed when a key is given.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

fn copy_into(files: &[&Path], dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for f in files {
        std::fs::copy(f, dir.join(f.file_name().unwrap()))?;
    }
    Ok(())
}

/// A GnuPG home holding `key` (an ASCII-armored secret key), for detached
/// and clear signatures of repository metadata.
pub struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    pub fn with_key(sh: &Shell, key: &Path) -> Result<Gpg> {
        let home = tempfile::tempdir()?;
        let h = home.path();
        cmd!(sh, "gpg --batch --quiet --homedir {h} --import {key}")
            .quiet()
            .ignore_stderr()
            .run()
            .with_context(|| format!("{}: gpg cannot import it", key.display()))?;
        Ok(Gpg { home })
    }

    /// `gpg --detach-sign --armor` → FILE.asc
    pub fn detach_sign(&self, sh: &Shell, file: &Path) -> Result<PathBuf> {
        let h = self.home.path();
        let out = PathBuf::from(format!("{}.asc", file.display()));
        cmd!(sh, "gpg --batch --quiet --yes --homedir {h} --armor --detach-sign -o {out} {file}").quiet().run()?;
        Ok(out)
    }

    /// `gpg --clearsign` of FILE into OUT (apt's InRelease).
    pub fn clear_sign(&self, sh: &Shell, file: &Path, out: &Path) -> Result<()> {
        let h = self.home.path();
        cmd!(sh, "gpg --batch --quiet --yes --homedir {h} --clearsign -o {out} {file}").quiet().run()?;
        Ok(())
    }

    /// The public key, armored, into `out` (what users import).
    pub fn export_public(&self, sh: &Shell, out: &Path) -> Result<()> {
        let h = self.home.path();
        let key = cmd!(sh, "gpg --batch --quiet --homedir {h} --armor --export").quiet().read()?;
        std::fs::write(out, key + "\n")?;
        Ok(())
    }
}

/// `createrepo_c` over a copy of the rpms in `dir`; repomd.xml.asc when signed.
pub fn rpm_repo(sh: &Shell, rpms: &[&Path], dir: &Path, gpg: Option<&Gpg>) -> Result<()> {
    copy_into(rpms, dir)?;
    cmd!(sh, "createrepo_c --quiet {dir}").run()?;
    if let Some(gpg) = gpg {
        gpg.detach_sign(sh, &dir.join("repodata/repomd.xml"))?;
        gpg.export_public(sh, &dir.join("RPM-GPG-KEY-ferry"))?;
    }
    Ok(())
}

/// A flat apt repository: `deb [signed-by=…] file:DIR ./` finds the debs.
pub fn apt_repo(sh: &Shell, debs: &[&Path], dir: &Path, gpg: Option<&Gpg>) -> Result<()> {
    copy_into(debs, dir)?;
    let _d = sh.push_dir(dir);
    let packages = cmd!(sh, "dpkg-scanpackages --multiversion .").quiet().ignore_stderr().read()?;
    std::fs::write(dir.join("Packages"), packages + "\n")?;
    cmd!(sh, "gzip -9 -n -k -f Packages").quiet().run()?;
    let release = cmd!(
        sh,
        "apt-ftparchive -o APT::FTPArchive::Release::Origin=ferry -o APT::FTPArchive::Release::Label=ferry release ."
    )
    .quiet()
    .read()?;
    std::fs::write(dir.join("Release"), release + "\n")?;
    if let Some(gpg) = gpg {
        gpg.clear_sign(sh, &dir.join("Release"), &dir.join("InRelease"))?;
        gpg.export_public(sh, &dir.join("ferry-archive-key.asc"))?;
    }
    Ok(())
}
