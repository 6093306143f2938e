//! `cargo xtask test`: everything CI runs.

use crate::{apt, require_root};
use anyhow::Result;
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Test {
    /// Skip `cargo fmt --check` and clippy
    #[arg(long)]
    no_lint: bool,
    /// Passed on to `cargo test` (e.g. a test name filter)
    #[arg(trailing_var_arg = true)]
    args: Vec<String>,
}

impl Test {
    pub fn run(self, sh: &Shell) -> Result<()> {
        require_root("the test suite")?;
        // python3 and setpriv (util-linux) run as test targets; mount makes a
        // small tmpfs for the disk-full test.
        apt::ensure(sh, &["python3", "util-linux", "mount", "coreutils", "iproute2"])?;
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
        cmd!(sh, "cargo test --workspace {args...}").run()?;
        Ok(())
    }
}
