//! `cargo xtask fuzz` and `cargo xtask soak`: the fuzzers (tests/fuzz_images.rs,
//! tests/fuzz_network.rs) and the soak (tests/soak.rs) at full size. The
//! default test run runs the same tests with a few hundred cases and a
//! short soak.

use crate::require_root;
use anyhow::Result;
use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Fuzz {
    /// Cases per target (each image kind, each listening endpoint)
    #[arg(long, default_value_t = 10_000)]
    cases: u32,
    /// Seed of the case generator: the same seed makes the same cases
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these targets (images: single, tree, chain, lazy; endpoints:
    /// page-server, receive, lazy dump, lazy-pages handoff)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Fuzz {
    pub fn run(self, sh: &Shell) -> Result<()> {
        require_root("fuzzing")?;
        cmd!(sh, "cargo build --release -p ferry-testprogs").run()?;
        let _c = sh.push_env("FERRY_FUZZ_CASES", self.cases.to_string());
        let _s = sh.push_env("FERRY_FUZZ_SEED", self.seed.to_string());
        let _o = (!self.only.is_empty()).then(|| sh.push_env("FERRY_FUZZ_ONLY", self.only.join(",")));
        // One target at a time: the figures each prints stay readable.
        cmd!(sh, "cargo test -p ferry --test fuzz_images --test fuzz_network -- --nocapture --test-threads 1").run()?;
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Soak {
    /// Dump/restore cycles of one process (its memory checked each time)
    #[arg(long, default_value_t = 200)]
    cycles: u32,
    /// Migrations back and forth between two namespaces
    #[arg(long, default_value_t = 50)]
    migrations: u32,
    /// Go on repeating each part for at least this many minutes
    #[arg(long)]
    minutes: Option<u32>,
}

impl Soak {
    pub fn run(self, sh: &Shell) -> Result<()> {
        require_root("the soak run")?;
        cmd!(sh, "cargo build --release -p ferry-testprogs").run()?;
        let _c = sh.push_env("FERRY_SOAK_CYCLES", self.cycles.to_string());
        let _m = sh.push_env("FERRY_SOAK_MIGRATIONS", self.migrations.to_string());
        let _t = sh.push_env("FERRY_SOAK_MINUTES", self.minutes.unwrap_or(0).to_string());
        cmd!(sh, "cargo test -p ferry --test soak -- --nocapture --test-threads 1").run()?;
        Ok(())
    }
}
