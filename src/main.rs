use clap::Parser;
use ferry::cli::{logging, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    if let Some(version) = ferry::rpc::criu_version_line(std::env::args_os()) {
        println!("{version}");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let name = cli.command.name();
    let log_path = cli.log_path();
    // `swrk` takes its log level and file from each request (CRIU's
    // log_level and log_file), unless given here.
    let per_request = name == "swrk" && cli.verbosity.is_empty() && log_path.is_none();
    if !per_request {
        if let Err(e) = logging::init(logging::level(&cli.verbosity), log_path.as_deref()) {
            eprintln!("ferry: {name}: {e:#}");
            return ExitCode::from(1);
        }
    }
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            if log_path.is_some() {
                tracing::error!("{e:#}");
            }
            // Always one line on stderr, the cause chain joined.
            eprintln!("ferry: {name}: {e:#}");
            ExitCode::from(1)
        }
    }
}
