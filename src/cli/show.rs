//! `ferry show`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Image directory
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// One file of it (e.g. task-1234.json, pages-1234.img); all when omitted
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
}

pub fn run(a: ShowArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match a.file {
        Some(f) => crate::image::show::file(&a.dir, &f, &mut out)?,
        None => crate::image::show::dir(&a.dir, &mut out)?,
    }
    Ok(ExitCode::SUCCESS)
}
