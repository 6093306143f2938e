//! `cargo xtask vm-test --arch ARCH|all`: boot QEMU guests of each
//! architecture (TCG) with Debian's 6.12 kernels (each page size Debian
//! ships) and an initramfs of busybox-static, static ferry and the static
//! test programs, run the
//! migration scenarios inside, stream the guest's console, and fail unless
//! every scenario passed. What a guest runs lives in vm-tests/ (its /init
//! and scenarios.sh); this module is the machinery around it.

use crate::arch::{Arch, BuildNames};
use crate::cross::StdRoute;
use crate::{apt, build, project_root};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct VmTest {
    /// x86_64, aarch64, ppc64le, s390x (comma-separated), or all
    #[arg(long, default_value = "all")]
    arch: String,
    /// Give up on a guest after this many seconds
    #[arg(long, default_value_t = 1500)]
    timeout: u64,
    /// Where the standard library of aarch64, ppc64le and s390x comes from
    #[arg(long, value_enum, default_value_t)]
    std: StdRoute,
    /// Which suite the guests' kernels and busybox come from
    #[arg(long, value_enum, default_value_t)]
    kernel_from: KernelRoute,
}

/// Where a guest's kernel (and busybox) comes from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelRoute {
    /// trixie's, or bookworm-backports' when this mirror's trixie index
    /// for the architecture is broken
    #[default]
    Auto,
    /// trixie's 6.12
    Trixie,
    /// bookworm-backports' 6.12 (with bookworm's busybox)
    BookwormBackports,
}

impl KernelRoute {
    /// The suite lists to try, in order (each list: preferred suite first).
    fn suites(self) -> &'static [&'static [&'static str]] {
        const TRIXIE: &[&str] = &["trixie"];
        const BACKPORTS: &[&str] = &["bookworm-backports", "bookworm"];
        match self {
            KernelRoute::Auto => &[TRIXIE, BACKPORTS],
            KernelRoute::Trixie => &[TRIXIE],
            KernelRoute::BookwormBackports => &[BACKPORTS],
        }
    }
}

/// The guest's side: every file of vm-tests/ (but its README) goes to the
/// initramfs root, executable; `init` is what the kernel starts.
fn guest_side() -> PathBuf {
    project_root().join("vm-tests")
}

fn vm_dir() -> PathBuf {
    project_root().join("target/xtask/vm")
}

/// One guest: an architecture booted with one of Debian's kernel flavours.
#[derive(Copy, Clone)]
struct Guest {
    arch: Arch,
    /// Debian's kernel flavour (linux-image-FLAVOUR).
    flavour: &'static str,
    /// What the summary calls it: the arch, plus the page size when it is
    /// not the arch's usual one.
    name: &'static str,
}

/// Every guest `vm-test` boots: each architecture's standard kernel, and
/// the other page sizes Debian ships (aarch64 16K, ppc64le 64K), since
/// page size is a runtime fact the backends must not assume.
const GUESTS: [Guest; 6] = [
    Guest { arch: Arch::X86_64, flavour: "amd64", name: "x86_64" },
    Guest { arch: Arch::Aarch64, flavour: "arm64", name: "aarch64" },
    Guest { arch: Arch::Aarch64, flavour: "arm64-16k", name: "aarch64-16k" },
    Guest { arch: Arch::Ppc64le, flavour: "powerpc64le", name: "ppc64le" },
    Guest { arch: Arch::Ppc64le, flavour: "powerpc64le-64k", name: "ppc64le-64k" },
    Guest { arch: Arch::S390x, flavour: "s390x", name: "s390x" },
];

fn qemu(arch: Arch, kernel: &Path, initrd: &Path) -> Command {
    let (bin, machine, cpu, console) = match arch {
        Arch::X86_64 => ("qemu-system-x86_64", "q35", "max", "ttyS0"),
        // pauth-impdef: TCG's default pointer authentication is slow.
        Arch::Aarch64 => ("qemu-system-aarch64", "virt", "max,pauth-impdef=on", "ttyAMA0"),
        // x-vof: QEMU's own firmware instead of SLOF boots in seconds.
        Arch::Ppc64le => ("qemu-system-ppc64", "pseries,x-vof=on", "POWER9", "hvc0"),
        Arch::S390x => ("qemu-system-s390x", "s390-ccw-virtio", "max", "ttysclp0"),
    };
    let mut c = Command::new(bin);
    c.args(["-M", machine, "-cpu", cpu, "-smp", "2", "-m", "2048", "-nodefaults", "-display", "none"]);
    c.arg("-no-reboot");
    if arch == Arch::S390x {
        // The SCLP console is s390x's serial line.
        c.args(["-chardev", "stdio,id=s0", "-device", "sclpconsole,chardev=s0"]);
    } else {
        c.args(["-serial", "stdio"]);
    }
    c.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
    c.args(["-append", &format!("console={console} quiet panic=-1")]);
    c
}

fn host_packages() -> &'static [&'static str] {
    &["qemu-system-x86", "qemu-system-arm", "qemu-system-ppc", "qemu-system-misc", "cpio", "gzip"]
}

/// Kernel modules the guests load (from the kernel package; Debian builds
/// them as modules): unix_diag, which ferry asks for unix sockets' peers.
const KEEP_MODULES: &[&str] = &["unix_diag"];

/// Where an unpacked guest root keeps [`KEEP_MODULES`]; its presence also
/// marks a root unpacked by this version of the xtask.
const KEPT_MODULES_DIR: &str = "ferry-modules";

/// Kernel image and busybox of `guest`, unpacked once per suite (under
/// target/xtask/vm/GUEST/SUITE/), from the first suite of `route` that has
/// them; a suite already unpacked is taken without asking the archive.
fn guest_parts(sh: &Shell, guest: Guest, route: KernelRoute) -> Result<(PathBuf, PathBuf)> {
    let found = |root: &Path| -> Option<(PathBuf, PathBuf)> {
        if !root.join(KEPT_MODULES_DIR).is_dir() {
            return None;
        }
        let kernel = std::fs::read_dir(root.join("boot")).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") || n.starts_with("vmlinux-"))
        })?;
        // trixie installs it in /usr/bin, bookworm in /bin.
        let busybox = ["usr/bin/busybox", "bin/busybox"].into_iter().map(|p| root.join(p)).find(|p| p.exists())?;
        Some((kernel, busybox))
    };
    let base = |suites: &[&str]| vm_dir().join(guest.name).join(suites[0]);
    if let Some(parts) = route.suites().iter().find_map(|suites| found(&base(suites).join("root"))) {
        return Ok(parts);
    }
    let debarch = guest.arch.debian();
    let mut unpacked = None;
    let got = apt::try_suites(sh, route.suites(), debarch, |private| {
        let base = base(&private.suites());
        let root = base.join("root");
        let image = kernel_package(sh, private, guest)?;
        let pkgs = vec![image, format!("busybox-static:{debarch}")];
        let _ = std::fs::remove_dir_all(&base);
        private.fetch_and_unpack(sh, &pkgs, &base.join("debs"), &root)?;
        // Only the modules the guests load: keep the cache small.
        keep_modules(&root)?;
        let _ = std::fs::remove_dir_all(root.join("lib/modules"));
        let _ = std::fs::remove_dir_all(root.join("usr/lib/modules"));
        unpacked = Some(found(&root).context("the packages hold no /boot/vmlinu* or busybox")?);
        eprintln!("xtask: {}: kernel and busybox from {}", guest.name, private.suites().join(" + "));
        Ok(())
    });
    match (got, unpacked) {
        (Ok(()), Some(parts)) => Ok(parts),
        (got, _) => {
            bail!("no kernel for the {} guest: {}", guest.name, got.err().map(|e| format!("{e:#}")).unwrap_or_default())
        }
    }
}

/// Move [`KEEP_MODULES`] (any compression) out of the unpacked modules
/// tree into root/ferry-modules/.
fn keep_modules(root: &Path) -> Result<()> {
    let kept = root.join(KEPT_MODULES_DIR);
    std::fs::create_dir_all(&kept)?;
    fn walk(dir: &Path, kept: &Path) -> Result<()> {
        for e in std::fs::read_dir(dir)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, kept)?;
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if KEEP_MODULES.iter().any(|m| name.strip_prefix(m).is_some_and(|rest| rest.starts_with(".ko"))) {
                    std::fs::copy(&p, kept.join(name))?;
                }
            }
        }
        Ok(())
    }
    for dir in ["lib/modules", "usr/lib/modules"] {
        if root.join(dir).is_dir() {
            walk(&root.join(dir), &kept)?;
        }
    }
    Ok(())
}

/// The versioned kernel package the flavour's metapackage points at.
fn kernel_package(sh: &Shell, private: &apt::PrivateApt, guest: Guest) -> Result<String> {
    let meta = format!("linux-image-{}:{}", guest.flavour, guest.arch.debian());
    let o = private.opts();
    let deps = cmd!(sh, "apt-cache {o...} depends {meta}").read()?;
    let image = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-6"))
        .with_context(|| format!("{meta} names no kernel image:\n{deps}"))?;
    Ok(image.to_string())
}

/// The ferry binaries the guests of `arch` last ran (those whose initramfs
/// exists), with the guest's name.
pub fn guest_binaries(arch: Arch) -> Vec<(&'static str, PathBuf)> {
    GUESTS
        .into_iter()
        .filter(|g| g.arch == arch)
        .map(|g| (g.name, vm_dir().join(g.name).join("initramfs/bin/ferry")))
        .filter(|(_, p)| p.exists())
        .collect()
}

/// An initramfs: busybox, ferry, the test programs, the scenarios, /init.
fn initramfs(sh: &Shell, guest: Guest, bins: &Path, busybox: &Path) -> Result<PathBuf> {
    let dir = vm_dir().join(guest.name).join("initramfs");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    // The modules kept beside the kernel (the guest's /init loads them).
    let root = busybox.ancestors().find(|a| a.join(KEPT_MODULES_DIR).is_dir()).context("the guest root's modules")?;
    std::fs::create_dir_all(dir.join("lib/modules"))?;
    for e in std::fs::read_dir(root.join(KEPT_MODULES_DIR))?.flatten() {
        std::fs::copy(e.path(), dir.join("lib/modules").join(e.file_name()))?;
    }
    // Stripped: the guest's memory holds the whole initramfs. ferry is
    // stripped as the packages strip it, so they ship what ran here.
    for bin in std::iter::once("ferry".to_string()).chain(build::testprogs()?) {
        let (from, to) = (bins.join(&bin), dir.join("bin").join(&bin));
        crate::package::strip(sh, guest.arch, &from, &to)?;
    }
    for e in std::fs::read_dir(guest_side())?.flatten() {
        let name = e.file_name();
        if name != "README.md" && e.path().is_file() {
            let text = std::fs::read_to_string(e.path()).with_context(|| format!("{}", e.path().display()))?;
            write_exec(&dir.join(&name), &text)?;
        }
    }
    if !dir.join("init").exists() {
        bail!("{} has no init", guest_side().display());
    }
    let out = vm_dir().join(guest.name).join("initramfs.cpio.gz");
    let _d = sh.push_dir(&dir);
    let pack = format!("find . | cpio -o -H newc --quiet | gzip -1 > {}", out.display());
    cmd!(sh, "sh -c {pack}").run()?;
    Ok(out)
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// What one guest reported.
#[derive(Default)]
struct Report {
    kernel: String,
    page_size: String,
    tracker: String,
    passed: Vec<String>,
    failed: Vec<String>,
    done: bool,
    wall: Duration,
}

/// Boot the guest and read its console until it powers off.
fn boot(guest: Guest, kernel: &Path, initrd: &Path, timeout: Duration) -> Result<Report> {
    let mut c = qemu(guest.arch, kernel, initrd);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = c.spawn().with_context(|| format!("starting {:?}", c.get_program()))?;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut r = Report::default();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                println!("[{}] {line}", guest.name);
                let Some(rest) = line.strip_prefix("VMTEST ") else { continue };
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                match key {
                    "KERNEL" => r.kernel = value.to_string(),
                    "PAGE" => r.page_size = value.to_string(),
                    "TRACKER" => r.tracker = value.to_string(),
                    "PASS" => r.passed.push(value.to_string()),
                    "FAIL" => r.failed.push(value.to_string()),
                    "DONE" => r.done = true,
                    _ => {}
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                r.failed.push(format!("the guest did not finish within {} s", timeout.as_secs()));
                break;
            }
        }
    }
    let _ = child.wait();
    r.wall = start.elapsed();
    if !r.done && r.failed.is_empty() {
        r.failed.push("the guest stopped before running every scenario".into());
    }
    Ok(r)
}

impl VmTest {
    /// Every guest, with the default time limit (what `cargo xtask test` runs).
    pub fn all() -> VmTest {
        VmTest { arch: "all".into(), timeout: 1500, std: StdRoute::Auto, kernel_from: KernelRoute::Auto }
    }

    pub fn run(self, sh: &Shell) -> Result<()> {
        crate::require_root("the VM tests (they build initramfs images with root-owned files)")?;
        apt::ensure(sh, host_packages())?;
        let archs = crate::arch::parse_list(&self.arch)?;
        let mut reports = Vec::new();
        for arch in archs {
            // Release: the binaries the packages ship are the ones tested here.
            let bins = build::build_arch(sh, arch, true, self.std)?;
            for guest in GUESTS.into_iter().filter(|g| g.arch == arch) {
                let (kernel, busybox) = guest_parts(sh, guest, self.kernel_from)?;
                let initrd = initramfs(sh, guest, &bins, &busybox)?;
                eprintln!("xtask: booting the {} guest ({})", guest.name, kernel.display());
                let r = boot(guest, &kernel, &initrd, Duration::from_secs(self.timeout))?;
                reports.push((guest, r));
            }
        }
        println!(
            "\n{:<12} {:<30} {:>6} {:<32} {:>9} {:>8}",
            "arch", "kernel", "page", "dirty tracker", "scenarios", "wall"
        );
        let mut bad = Vec::new();
        for (guest, r) in &reports {
            println!(
                "{:<12} {:<30} {:>6} {:<32} {:>4}/{:<4} {:>7.1}s",
                guest.name,
                r.kernel,
                r.page_size,
                r.tracker,
                r.passed.len(),
                r.passed.len() + r.failed.len(),
                r.wall.as_secs_f64()
            );
            for f in &r.failed {
                println!("         FAILED {f}");
                bad.push(format!("{}: {f}", guest.name));
            }
        }
        if !bad.is_empty() {
            bail!("{} scenario(s) failed in the guests", bad.len());
        }
        Ok(())
    }
}
