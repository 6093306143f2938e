//! `cargo xtask package --check` (part of `cargo xtask test`): build every
//! package signed with a throwaway key, then check them the way their users
//! and distributions would: lintian, rpmlint, `rpmkeys --checksig`, each
//! package's architecture, the binaries against the ones the QEMU guests
//! ran, dnf into an empty root, apt install and purge on this host, and the
//! packagers' builds (rpmbuild, dpkg-buildpackage) offline.

use super::{compat, make, Made};
use crate::arch::{Arch, BuildNames};
use crate::dist::dist_dir;
use crate::{apt, project_root};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use xshell::{cmd, Shell};

fn tools() -> &'static [&'static str] {
    &["lintian", "rpmlint", "dnf", "rpm", "debhelper", "fakeroot", "cpio", "zstd"]
}

/// A throwaway RSA key (no passphrase), as an armored secret key file.
fn throwaway_key(sh: &Shell, dir: &Path) -> Result<PathBuf> {
    let home = dir.join("gnupg");
    std::fs::create_dir_all(&home)?;
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let params = dir.join("key.params");
    std::fs::write(
        &params,
        "%no-protection\nKey-Type: RSA\nKey-Length: 3072\nName-Real: ferry test signing key\n\
         Name-Email: test@example.invalid\nExpire-Date: 1d\n%commit\n",
    )?;
    cmd!(sh, "gpg --batch --quiet --homedir {home} --gen-key {params}").quiet().ignore_stderr().run()?;
    let key = dir.join("secret.asc");
    let text = cmd!(sh, "gpg --batch --quiet --homedir {home} --armor --export-secret-keys").quiet().read()?;
    std::fs::write(&key, text + "\n")?;
    Ok(key)
}

fn step(name: &str) -> Instant {
    eprintln!("xtask: package check: {name}");
    Instant::now()
}

fn lintian(sh: &Shell, made: &Made) -> Result<()> {
    for deb in made.debs.iter().map(|(_, d)| d).chain(&made.compat_debs) {
        // Errors and warnings fail; info and pedantic tags are printed.
        let out = cmd!(sh, "lintian --fail-on error,warning --display-info {deb}").ignore_status().output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        println!("lintian {}:\n{}", deb.file_name().unwrap().to_string_lossy(), indent(&text));
        ensure!(out.status.success(), "lintian: {} has errors or warnings", deb.display());
    }
    Ok(())
}

/// A HOME whose rpm database (Debian's rpm keeps it in ~/.rpmdb) trusts the
/// repository's key: rpmkeys uses it by path, rpmlint (which checks
/// signatures against the default database) by HOME.
fn rpm_keyring(sh: &Shell, work: &Path) -> Result<PathBuf> {
    let home = work.join("rpm-home");
    let db = home.join(".rpmdb");
    std::fs::create_dir_all(&db)?;
    let public = dist_dir().join("rpm/RPM-GPG-KEY-ferry");
    cmd!(sh, "rpmkeys --dbpath {db} --import {public}").run()?;
    Ok(home)
}

fn rpmlint(sh: &Shell, made: &Made, keyring: &Path) -> Result<()> {
    let config = project_root().join("packaging/rpmlint.toml");
    let rpms: Vec<&PathBuf> = made.rpms.iter().map(|(_, p)| p).chain(&made.compat_rpms).collect();
    let spec = project_root().join("packaging/ferry.spec");
    let out = cmd!(sh, "rpmlint --config {config} {rpms...} {spec}").env("HOME", keyring).ignore_status().output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("rpmlint:\n{}", indent(&text));
    ensure!(out.status.success(), "rpmlint found errors (status {:?})", out.status.code());
    // Every accepted tag is filtered with its reason (packaging/rpmlint.toml).
    ensure!(text.contains(" 0 errors, 0 warnings"), "rpmlint reports errors or warnings");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Every rpm verifies against the key; a changed byte does not.
fn signatures(sh: &Shell, made: &Made, keyring: &Path, work: &Path) -> Result<()> {
    let db = keyring.join(".rpmdb");
    for rpm in made.rpms.iter().map(|(_, r)| r).chain(&made.compat_rpms) {
        let out = cmd!(sh, "rpmkeys --dbpath {db} --checksig -v {rpm}").read()?;
        println!("{}", out.trim_end());
        ensure!(
            out.contains("Signature, key ID") && !out.contains("BAD") && !out.contains("NOKEY"),
            "{}: not signed by the key",
            rpm.display()
        );
    }
    let (_, first) = &made.rpms[0];
    let mut bytes = std::fs::read(first)?;
    let n = bytes.len();
    bytes[n - 100] ^= 0x55;
    let bad = work.join("tampered.rpm");
    std::fs::write(&bad, bytes)?;
    let out = cmd!(sh, "rpmkeys --dbpath {db} --checksig -v {bad}").ignore_status().output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success() && text.contains("BAD"), "a tampered rpm passed rpmkeys --checksig:\n{text}");
    println!(
        "tampered copy: rpmkeys --checksig fails ({})",
        text.lines().find(|l| l.contains("BAD")).unwrap_or("").trim()
    );
    Ok(())
}

fn rpm_binary(sh: &Shell, rpm: &Path) -> Result<Vec<u8>> {
    let script = format!("rpm2cpio '{}' | cpio -i --quiet --to-stdout ./usr/bin/ferry", rpm.display());
    Ok(cmd!(sh, "sh -c {script}").quiet().output()?.stdout)
}

fn deb_binary(sh: &Shell, deb: &Path) -> Result<Vec<u8>> {
    let script = format!("dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/bin/ferry", deb.display());
    Ok(cmd!(sh, "sh -c {script}").quiet().output()?.stdout)
}

/// Each package says its architecture, holds that architecture's binary,
/// and that binary is byte for byte the one the QEMU guests of that
/// architecture ran (when `vm-test` ran before, as in `cargo xtask test`).
fn architectures(sh: &Shell, made: &Made) -> Result<()> {
    for ((arch, deb), (_, rpm)) in made.debs.iter().zip(&made.rpms) {
        let arch = *arch;
        let fmt = "%{ARCH}";
        let r = cmd!(sh, "rpm -qp --qf {fmt} {rpm}").quiet().ignore_stderr().read()?;
        let d = cmd!(sh, "dpkg-deb -f {deb} Architecture").quiet().read()?;
        ensure!(r == arch.rpm(), "{}: ARCH is {r}, not {}", rpm.display(), arch.rpm());
        ensure!(d == arch.debian(), "{}: Architecture is {d}, not {}", deb.display(), arch.debian());
        let from_rpm = rpm_binary(sh, rpm)?;
        ensure!(from_rpm == deb_binary(sh, deb)?, "{arch}: the rpm and the deb hold different binaries");
        let guests = crate::vm::guest_binaries(arch);
        let mut ran = Vec::new();
        for (guest, bin) in &guests {
            let tested = std::fs::read(bin)?;
            ensure!(tested == from_rpm, "{arch}: the packaged ferry is not the one the {guest} guest ran");
            ran.push(*guest);
        }
        let ran = if ran.is_empty() {
            "no guest ran yet".to_string()
        } else {
            format!("the binary the {} guest(s) ran", ran.join(", "))
        };
        println!("{:<8} rpm {r:<8} deb {d:<8} {ran}", arch.name());
    }
    for deb in &made.compat_debs {
        let fields = cmd!(sh, "dpkg-deb -f {deb} Architecture Depends Provides Conflicts Replaces").quiet().read()?;
        let listing = cmd!(sh, "dpkg-deb -c {deb}").quiet().read()?;
        ensure!(
            fields.contains("Architecture: all")
                && fields.contains("Depends: ferry (=")
                && ["Provides: criu", "Conflicts: criu", "Replaces: criu"].iter().all(|f| fields.contains(f))
                && listing.contains("./usr/sbin/criu -> ../bin/ferry"),
            "{}: not ferry under criu's name:\n{fields}\n{listing}",
            deb.display()
        );
        println!("all      {}: /usr/sbin/criu -> ../bin/ferry, Provides/Conflicts/Replaces criu", compat::NAME);
    }
    Ok(())
}

/// dnf, from the signed repository, into an empty root; ferry runs there.
fn dnf_install_root(sh: &Shell, work: &Path) -> Result<()> {
    let root = work.join("dnf-root");
    let repo = dist_dir().join("rpm");
    let url = format!("ferry,file://{}", repo.display());
    let key = format!("ferry.gpgkey=file://{}/RPM-GPG-KEY-ferry", repo.display());
    let arch = format!("--forcearch={}", Arch::X86_64.rpm());
    cmd!(
        sh,
        "dnf -y -q --installroot={root} --releasever=40 {arch} --setopt=reposdir=/dev/null --setopt=cachedir={work}/dnf-cache
         --repofrompath={url} --repo=ferry --setopt=ferry.gpgcheck=1 --setopt=ferry.repo_gpgcheck=1 --setopt={key} install ferry ferry-criu-compat"
    )
    .run()?;
    // ferry-criu-compat: criu is ferry, and says so in CRIU's format.
    let criu = cmd!(sh, "chroot {root} /usr/sbin/criu --version").read()?;
    ensure!(criu.starts_with("Version: ") && criu.contains("GitID: ferry"), "criu --version in the dnf root:\n{criu}");
    println!("dnf --installroot: chroot ROOT /usr/sbin/criu --version: {}", criu.replace('\n', " / "));
    let version = cmd!(sh, "chroot {root} /usr/bin/ferry --version").read()?;
    println!("dnf --installroot: chroot ROOT /usr/bin/ferry --version: {version}");
    // ferry check reads /proc: give the root one, in a private mount namespace.
    let script = format!("mount -t proc proc '{0}/proc' && chroot '{0}' /usr/bin/ferry check", root.display());
    std::fs::create_dir_all(root.join("proc"))?;
    let check = cmd!(sh, "unshare -m --propagation private sh -c {script}").read()?;
    ensure!(check.contains("Looks good"), "ferry check in the dnf root:\n{check}");
    println!("dnf --installroot: chroot ROOT /usr/bin/ferry check: Looks good");
    let files = cmd!(sh, "rpm --root {root} -ql ferry").quiet().read()?;
    ensure!(files.contains("/usr/share/man/man1/ferry.1.gz"), "installed file list:\n{files}");
    Ok(())
}

/// apt installs ferry from the signed flat repository onto this host, and
/// purging it leaves none of its files behind.
fn apt_install_purge(sh: &Shell, made: &Made, work: &Path) -> Result<()> {
    let format = "-f=${Status}";
    let installed = cmd!(sh, "dpkg-query -W {format} ferry").quiet().ignore_stderr().ignore_status().read()?;
    if installed.trim() == "install ok installed" {
        bail!("a ferry package is already installed on this host: the install test would replace it (dpkg --purge ferry first)");
    }
    let criu = cmd!(sh, "dpkg-query -W {format} criu").quiet().ignore_stderr().ignore_status().read()?;
    if criu.trim() == "install ok installed" {
        bail!("a criu package is installed on this host: installing ferry-criu-compat would replace it (apt-get purge criu first)");
    }
    let (_, deb) = made.debs.iter().find(|(a, _)| *a == Arch::X86_64).context("no x86_64 deb")?;
    let repo = dist_dir().join("apt");
    let list = format!("deb [signed-by={0}/ferry-archive-key.asc] file:{0} ./\n", repo.display());
    // Its own sources, lists and cache; installing goes to the host's dpkg.
    let o = &apt::PrivateApt::with_list(&work.join("apt"), &list)?.state_opts();
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get {o...} -q update").run()?;
    cmd!(sh, "apt-get {o...} -y install ferry ferry-criu-compat").run()?;
    let purge = || cmd!(sh, "apt-get -y purge ferry ferry-criu-compat").run();
    let version = cmd!(sh, "/usr/bin/ferry --version").read();
    let man = Path::new("/usr/share/man/man1/ferry-dump.1.gz").exists();
    // With ferry-criu-compat installed, runc (no --criu) checkpoints and
    // restores a container through ferry.
    let runc = cmd!(sh, "cargo test --release -p ferry --test containers runc_checkpoint_and_restore_a_shell_loop")
        .env("FERRY_TEST_CRIU_FROM_PATH", "1")
        .run();
    purge()?;
    let version = version?;
    runc.context("runc with ferry-criu-compat installed")?;
    println!("apt install ferry-criu-compat: runc checkpoint and restore with criu from PATH went through ferry");
    ensure!(man, "the deb did not install ferry-dump.1.gz");
    println!("apt install from the repository: /usr/bin/ferry --version: {version}");
    let mut listing = cmd!(sh, "dpkg-deb -c {deb}").quiet().read()?;
    for compat in &made.compat_debs {
        listing += "\n";
        listing += &cmd!(sh, "dpkg-deb -c {compat}").quiet().read()?;
    }
    let mut left = Vec::new();
    for line in listing.lines() {
        // A link's line ends "PATH -> TARGET": the path is before the arrow.
        let entry = line.split(" -> ").next().unwrap_or_default();
        let path = entry.split_whitespace().last().unwrap_or_default().trim_start_matches('.');
        if !line.starts_with('d') && !path.is_empty() && Path::new(path).exists() {
            left.push(path.to_string());
        }
    }
    ensure!(left.is_empty(), "apt purge left files behind: {left:?}");
    ensure!(!Path::new("/usr/share/doc/ferry").exists(), "apt purge left /usr/share/doc/ferry");
    println!("apt purge ferry: none of the package's files remain");
    Ok(())
}

/// The packagers' routes, from the dist tarballs, with no network
/// (`unshare -n`): rpmbuild -bs and -bb with packaging/ferry.spec, and
/// dpkg-buildpackage -b with packaging/debian.
fn packager_builds(sh: &Shell, made: &Made, work: &Path) -> Result<()> {
    let t = &made.tarballs;
    let spec = project_root().join("packaging/ferry.spec");
    let top = work.join("rpmbuild");
    let (topdir, srcdir) = (format!("_topdir {}", top.display()), format!("_sourcedir {}", dist_dir().display()));
    let started = Instant::now();
    cmd!(sh, "rpmbuild --define {topdir} --define {srcdir} -bs {spec}").run()?;
    let srpm = top.join(format!("SRPMS/ferry-{}-1.src.rpm", t.version));
    ensure!(srpm.exists(), "rpmbuild -bs made no {}", srpm.display());
    // --nodeps: this Debian host has no rpm database of cargo and gcc.
    cmd!(sh, "unshare -n rpmbuild --define {topdir} --define {srcdir} --nodeps -bb {spec}").run()?;
    let built = top.join(format!("RPMS/x86_64/ferry-{}-1.x86_64.rpm", t.version));
    ensure!(built.exists(), "rpmbuild -bb made no {}", built.display());
    println!("rpmbuild -bs and -bb (offline): {} in {:.0} s", built.display(), started.elapsed().as_secs_f64());

    let started = Instant::now();
    let src = work.join("debian-build");
    std::fs::create_dir_all(&src)?;
    let (source, vendor) = (&t.source, &t.vendor);
    cmd!(sh, "tar -xzf {source} -C {src}").run()?;
    let tree = src.join(format!("ferry-{}", t.version));
    cmd!(sh, "tar -xzf {vendor} -C {tree}").run()?;
    cmd!(sh, "cp -r {tree}/packaging/debian {tree}/debian").run()?;
    crate::cross::ensure_debian_rustc(sh)?;
    // Debian's toolchain, as a packager's build chroot has it: not rustup's.
    let path = "/usr/sbin:/usr/bin:/sbin:/bin";
    let _d = sh.push_dir(&tree);
    cmd!(sh, "unshare -n env PATH={path} dpkg-buildpackage -b -us -uc").run()?;
    let deb = src.join(format!("ferry_{}-1_amd64.deb", t.version));
    ensure!(deb.exists(), "dpkg-buildpackage made no {}", deb.display());
    let lint = cmd!(sh, "lintian --display-info {deb}").ignore_status().read()?;
    println!(
        "dpkg-buildpackage -b (offline): {} in {:.0} s; lintian:\n{}",
        deb.display(),
        started.elapsed().as_secs_f64(),
        indent(&lint)
    );
    Ok(())
}

pub fn run(sh: &Shell, archs: &[Arch]) -> Result<()> {
    apt::ensure(sh, tools())?;
    let work = tempfile::tempdir()?;
    let work = work.path();
    let t = step("a throwaway signing key");
    let key = throwaway_key(sh, work)?;
    let made = make(sh, archs, Some(&key))?;
    super::list(&made);
    eprintln!("xtask: packages built in {:.0} s", t.elapsed().as_secs_f64());
    step("lintian");
    lintian(sh, &made)?;
    let keyring = rpm_keyring(sh, work)?;
    step("rpmlint");
    rpmlint(sh, &made, &keyring)?;
    step("signatures");
    signatures(sh, &made, &keyring, work)?;
    step("architectures");
    architectures(sh, &made)?;
    if archs.contains(&Arch::X86_64) {
        step("dnf install into an empty root");
        dnf_install_root(sh, work)?;
        step("apt install and purge");
        apt_install_purge(sh, &made, work)?;
    }
    step("packagers' builds");
    packager_builds(sh, &made, work)?;
    println!("package checks passed");
    Ok(())
}
