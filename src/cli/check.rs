//! `ferry check`.

use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Check one feature only (see the list printed by `ferry check`)
    #[arg(long, value_name = "NAME")]
    pub feature: Option<String>,
}

pub fn run(a: CheckArgs) -> Result<ExitCode> {
    crate::probe::run(a.feature.as_deref())
}
