//! Installing Debian packages, and fetching from other suites without
//! touching the host's apt state.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

fn installed(sh: &Shell, pkg: &str) -> bool {
    let format = "-f=${Status}";
    cmd!(sh, "dpkg-query -W {format} {pkg}")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|s| s.trim() == "install ok installed")
        .unwrap_or(false)
}

/// `apt-get install` whatever of `pkgs` is missing (idempotent).
pub fn ensure(sh: &Shell, pkgs: &[&str]) -> Result<()> {
    let missing: Vec<String> = pkgs.iter().filter(|p| !installed(sh, p)).map(|p| p.to_string()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    let pkgs = &missing;
    let install = || run_quiet(cmd!(sh, "apt-get install -y -q --no-install-recommends {pkgs...}"));
    if let Err(e) = install() {
        // A fresh machine may have no package lists yet, or stale ones.
        eprintln!("xtask: apt-get install failed ({e}); updating the package lists and trying again");
        run_quiet(cmd!(sh, "apt-get update -q")).context("apt-get update")?;
        install().with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    }
    Ok(())
}

/// Run an apt command with its output held back. On failure the error is
/// one line: what apt said after `E:` (the first such line, and how many
/// more), or its last line when it said no `E:`.
fn run_quiet(c: xshell::Cmd<'_>) -> Result<()> {
    let out = c.quiet().ignore_status().output()?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let errors: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("E: ")).collect();
    let why = match errors.as_slice() {
        [] => text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    };
    bail!("{why}")
}

/// The Debian mirror the host uses (from /etc/apt/sources.list.d or
/// sources.list), so nothing here names a registry host.
pub fn host_mirror() -> Result<String> {
    host_uri("/debian")
}

/// The host's mirror URI whose path ends in `suffix` ("/debian",
/// "/debian-security").
fn host_uri(suffix: &str) -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources" || x == "list") {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for line in text.lines() {
            let line = line.trim();
            if let Some(uris) = line.strip_prefix("URIs:") {
                if let Some(u) = uris.split_whitespace().find(|u| u.ends_with(suffix)) {
                    return Ok(u.to_string());
                }
            }
            if line.starts_with("deb ") {
                if let Some(u) = line.split_whitespace().find(|u| u.contains("://") && u.ends_with(suffix)) {
                    return Ok(u.to_string());
                }
            }
        }
    }
    bail!("no Debian mirror ending in {suffix} found in the host's apt sources")
}

/// A private apt configuration under `dir` for one suite: its own sources
/// list, lists and cache, so the host's apt state never changes.
pub struct PrivateApt {
    dir: PathBuf,
    /// The suites its sources list names, preferred first.
    suites: Vec<String>,
    /// Debian architectures the indexes cover (empty: the host's).
    archs: Vec<String>,
    /// The suite whose packages win over the others' (apt's default release).
    prefer: Option<String>,
}

impl PrivateApt {
    pub fn new(sh: &Shell, dir: &Path, suite: &str, types: &str) -> Result<PrivateApt> {
        Self::with_archs(sh, dir, suite, types, &[])
    }

    /// As [`PrivateApt::new`], with binary indexes for `archs` (foreign
    /// packages are only downloaded and unpacked, never installed).
    pub fn with_archs(sh: &Shell, dir: &Path, suite: &str, types: &str, archs: &[&str]) -> Result<PrivateApt> {
        Self::with_suites(sh, dir, &[suite], types, archs)
    }

    /// As [`PrivateApt::with_archs`] over several suites; when there are
    /// several, the first is preferred (apt's default release), so
    /// `["bookworm-backports", "bookworm"]` takes backports' kernel and
    /// bookworm's everything else.
    pub fn with_suites(sh: &Shell, dir: &Path, suites: &[&str], types: &str, archs: &[&str]) -> Result<PrivateApt> {
        let line = |uri: &str, suite: &str| {
            format!("{types} [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main\n")
        };
        let mirror = host_mirror()?;
        let security = host_uri("/debian-security").ok();
        let mut list = String::new();
        for suite in suites {
            list += &line(&mirror, suite);
            // The security suite too, when the host uses one: it carries
            // the newest kernels and toolchains, and a second place to find
            // a package when one index is broken on the mirror.
            if let (Some(security), false) = (&security, suite.contains('-')) {
                list += &line(security, &format!("{suite}-security"));
            }
        }
        let mut apt = PrivateApt::with_list(dir, &list)?;
        apt.suites = suites.iter().map(|s| s.to_string()).collect();
        apt.archs = archs.iter().map(|a| a.to_string()).collect();
        apt.prefer = (suites.len() > 1).then(|| suites[0].to_string());
        let stamp = dir.join("updated");
        if !stamp.exists() {
            let o = &apt.opts();
            let what =
                format!("{} ({})", suites.join(" + "), if archs.is_empty() { "host".into() } else { archs.join(" ") });
            eprintln!("xtask: updating the private package index of {what}");
            // Mirrors mid-sync serve indexes of the wrong size now and then:
            // retry, then go on with the indexes that did arrive (a missing
            // package is reported by the download that needs it).
            let mut tries = 0;
            loop {
                match run_quiet(cmd!(sh, "apt-get {o...} update")) {
                    Ok(()) => {
                        // Only a complete update is final; otherwise the
                        // next run tries again.
                        std::fs::write(&stamp, "")?;
                        break;
                    }
                    Err(e) => {
                        tries += 1;
                        if tries == 3 {
                            eprintln!("xtask: {what}: index incomplete ({e:#}); going on with what arrived");
                            break;
                        }
                        eprintln!("xtask: {what}: index update failed ({e:#}); retrying in {} s", 5 * tries);
                        std::thread::sleep(std::time::Duration::from_secs(5 * tries));
                    }
                }
            }
        }
        Ok(apt)
    }

    /// Private lists and cache under `dir` for the sources in `list`
    /// (one-line-style), with no update run yet.
    pub fn with_list(dir: &Path, list: &str) -> Result<PrivateApt> {
        std::fs::create_dir_all(dir.join("lists/partial"))?;
        std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
        std::fs::write(dir.join("sources.list"), list)?;
        Ok(PrivateApt { dir: dir.to_path_buf(), suites: Vec::new(), archs: Vec::new(), prefer: None })
    }

    /// The suites this configuration fetches from, preferred first.
    pub fn suites(&self) -> Vec<&str> {
        self.suites.iter().map(String::as_str).collect()
    }

    /// Options that point apt at this configuration's sources, lists and
    /// cache; the dpkg database stays the host's.
    pub fn state_opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-o=Dir::Etc::SourceList={d}/sources.list"),
            "-o=Dir::Etc::SourceParts=/dev/null".into(),
            format!("-o=Dir::State::Lists={d}/lists"),
            format!("-o=Dir::Cache={d}/cache"),
        ]
    }

    /// `state_opts` for fetching only (nothing is installed, so no lock).
    pub fn opts(&self) -> Vec<String> {
        let mut o = self.state_opts();
        o.push("-o=Debug::NoLocking=1".into());
        // Downloads go to directories under target/ that apt's `_apt` user
        // cannot enter; fetching as root is intended, not worth a warning.
        o.push("-o=APT::Sandbox::User=root".into());
        o.extend(self.archs.iter().map(|a| format!("-o=APT::Architectures::={a}")));
        o.extend(self.prefer.iter().map(|s| format!("-o=APT::Default-Release={s}")));
        o
    }

    /// Download `pkgs` (NAME:ARCH allowed) into `into` and unpack each with
    /// dpkg-deb into `root`. Downloads are kept, so this runs once.
    pub fn fetch_and_unpack(&self, sh: &Shell, pkgs: &[String], into: &Path, root: &Path) -> Result<()> {
        std::fs::create_dir_all(into)?;
        std::fs::create_dir_all(root)?;
        let o = self.opts();
        {
            let _d = sh.push_dir(into);
            run_quiet(cmd!(sh, "apt-get {o...} download {pkgs...}")).context("apt-get download")?;
        }
        for e in std::fs::read_dir(into)?.flatten() {
            let deb = e.path();
            if deb.extension().is_some_and(|x| x == "deb") {
                cmd!(sh, "dpkg-deb -x {deb} {root}").quiet().run()?;
            }
        }
        Ok(())
    }
}

/// Try each set of suites in turn (one private configuration per first
/// suite and architecture, under target/xtask) until `fetch` succeeds;
/// otherwise the error of each, joined.
pub fn try_suites(
    sh: &Shell,
    candidates: &[&[&str]],
    debarch: &str,
    mut fetch: impl FnMut(&PrivateApt) -> Result<()>,
) -> Result<()> {
    let mut errors = Vec::new();
    for suites in candidates {
        let dir = crate::project_root().join(format!("target/xtask/apt-{}", suites[0])).join(debarch);
        match PrivateApt::with_suites(sh, &dir, suites, "deb", &[debarch]).and_then(|p| fetch(&p)) {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("xtask: {debarch}: not from {}: {e:#}", suites[0]);
                errors.push(format!("not from {}: {e:#}", suites[0]));
            }
        }
    }
    bail!("{}", errors.join("; "))
}
