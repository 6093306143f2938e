use clap::Parser;
use ferry::cli::{logging, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.command.name();
    let log_path = cli.log_path();
    if let Err(e) = logging::init(logging::level(&cli.verbosity), log_path.as_deref()) {
        eprintln!("ferry: {name}: {e:#}");
        return ExitCode::from(1);
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
