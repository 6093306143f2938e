//! `cargo xtask`: the project's own commands. main only parses and
//! dispatches; each command lives in its own module.

mod apt;
mod arch;
mod bats;
mod bench;
mod build;
mod criu;
mod cross;
mod demo;
mod dist;
mod fuzz;
mod package;
mod test;
mod vm;

use clap::{Parser, Subcommand};
use xshell::Shell;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ferry's build, test, demo and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a sample process, dump it, restore it, show it continuing
    Demo(demo::Demo),
    /// Install what the tests need, build the test programs, run every test
    Test(test::Test),
    /// Dump and restore a large process with ferry and with CRIU 4.1.1
    Bench(bench::Bench),
    /// Static ferry and test programs for x86_64, aarch64, ppc64le, s390x
    Build(build::Build),
    /// Boot a QEMU guest per architecture and run the migration scenarios in it
    VmTest(vm::VmTest),
    /// .deb and .rpm per architecture, dnf and apt repositories, in target/dist
    Package(package::Package),
    /// Source and vendored-crates tarballs for distribution packagers
    Dist(dist::Dist),
    /// Mutated images and malformed network frames against ferry, many cases
    Fuzz(fuzz::Fuzz),
    /// Hundreds of dump/restore cycles and migrations, counting what could leak
    Soak(fuzz::Soak),
    /// runc's own checkpoint tests (Debian's runc source) with ferry as criu
    RuncBats(bats::RuncBats),
}

fn main() {
    // One line per failure, its causes joined: a backtrace (RUST_BACKTRACE
    // is often set) would bury what went wrong.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match cli.cmd {
        Cmd::Demo(c) => c.run(&sh),
        Cmd::Test(c) => c.run(&sh),
        Cmd::Bench(c) => c.run(&sh),
        Cmd::Build(c) => c.run(&sh),
        Cmd::VmTest(c) => c.run(&sh),
        Cmd::Package(c) => c.run(&sh),
        Cmd::Dist(c) => c.run(&sh),
        Cmd::Fuzz(c) => c.run(&sh),
        Cmd::Soak(c) => c.run(&sh),
        Cmd::RuncBats(c) => c.run(&sh),
    }
}

pub fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// ferry needs root (ptrace any task, clone3 with set_tid, PR_SET_MM_MAP).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("{what} needs root: ferry dumps and restores processes (run it with sudo)");
    }
    Ok(())
}

/// Build ferry and the test programs in release mode.
pub fn build_release(sh: &Shell) -> anyhow::Result<()> {
    xshell::cmd!(sh, "cargo build --release -p ferry -p ferry-testprogs").run()?;
    Ok(())
}
