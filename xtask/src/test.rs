//! `cargo xtask test`: everything CI runs.

use crate::{apt, require_root};
use anyhow::Result;
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Test {
    /// Skip `cargo fmt --check` and clippy
    #[arg(long)]
    no_lint: bool,
    /// Skip the QEMU guests of the four architectures (`cargo xtask vm-test`)
    #[arg(long)]
    no_vm: bool,
    /// Skip building and checking the packages (`cargo xtask package --check`)
    #[arg(long)]
    no_package: bool,
    /// Skip runc's own checkpoint tests (`cargo xtask runc-bats`)
    #[arg(long)]
    no_bats: bool,
    /// Passed on to `cargo test` (e.g. a test name filter)
    #[arg(trailing_var_arg = true)]
    args: Vec<String>,
}

impl Test {
    pub fn run(self, sh: &Shell) -> Result<()> {
        require_root("the test suite")?;
        // python3, setpriv and unshare (util-linux) and a JDK run as test
        // targets, redis-server, memcached and PostgreSQL real servers
        // (Debian's postgresql also sets up a cluster of its own, which
        // the tests leave alone: each makes its own with initdb); mount makes a
        // small tmpfs for the disk-full test; nftables and iptables hold
        // TCP connections' packets (the network lock, both backends);
        // nginx, curl and socat serve and fetch across a migration; runc
        // and podman run busybox-static containers that ferry checkpoints
        // as criu (zstd lists podman's exported checkpoints).
        apt::ensure(
            sh,
            &[
                "python3",
                "util-linux",
                "mount",
                "coreutils",
                "iproute2",
                "default-jdk-headless",
                "redis-server",
                "redis-tools",
                "memcached",
                "postgresql",
                "nftables",
                "iptables",
                "nginx",
                "curl",
                "socat",
                "runc",
                "busybox-static",
                "podman",
                "zstd",
            ],
        )?;
        let _insta = sh.push_env("INSTA_UPDATE", "no");
        if !self.no_lint {
            if cmd!(sh, "cargo fmt --version").quiet().ignore_stdout().run().is_err() {
                cmd!(sh, "rustup component add rustfmt clippy").run()?;
            }
            cmd!(sh, "cargo fmt --all --check").run()?;
            cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings").run()?;
        }
        cmd!(sh, "cargo build --release -p ferry-testprogs").run()?;
        let args = self.args;
        // A filter asks for some tests only: not the guests and packages.
        let filtered = !args.is_empty();
        cmd!(sh, "cargo test --workspace {args...}").run()?;
        if !self.no_bats && !filtered {
            // The ferry `cargo test` just built and tested.
            let ferry = crate::project_root().join("target/debug/ferry");
            let suite = crate::bats::Suite::prepare(sh)?;
            crate::bats::check(&suite.run(sh, "ferry", &ferry)?)?;
        }
        if !self.no_vm && !filtered {
            crate::vm::VmTest::all().run(sh)?;
        }
        if !self.no_package && !filtered {
            // After the guests: the packages must hold the binaries they ran.
            crate::package::check::run(sh, &ferry_arch::Arch::ALL)?;
        }
        Ok(())
    }
}
