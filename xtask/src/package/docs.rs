//! Man pages and shell completions, generated from ferry's real command
//! line (clap), never written by hand.

use anyhow::Result;
use clap::CommandFactory;
use std::path::Path;

/// Write `man/ferry.1`, `man/ferry-SUBCOMMAND.1`… and
/// `completions/{ferry.bash,_ferry,ferry.fish}` under `out`.
pub fn generate(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    let _ = std::fs::remove_dir_all(&man);
    let _ = std::fs::remove_dir_all(&completions);
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = ferry::cli::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "ferry", &completions)?;
    }
    Ok(())
}

/// The man pages `generate` wrote, sorted.
pub fn man_pages(out: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = std::fs::read_dir(out.join("man"))?.flatten().map(|e| e.path()).collect();
    v.sort();
    Ok(v)
}
