//! `ferry check`: probe the running kernel.
use anyhow::Result;
use std::process::ExitCode;
pub fn run(_f: Option<&str>) -> Result<ExitCode> { todo!() }
