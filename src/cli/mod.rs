//! The command line: CRIU's command and flag names, one module per command.

pub mod check;
pub mod container;
pub mod criu;
pub mod dump;
pub mod lazy;
pub mod logging;
pub mod migrate;
pub mod restore;
pub mod security;
pub mod show;
pub mod swrk;
pub mod tcp;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Checkpoint, restore and live-migrate Linux processes",
    long_about = "Checkpoint a running process to an image directory, restore it at its original PID \
                  (here or on another machine), and inspect images. Commands and flags follow CRIU's.",
    after_help = "Examples:\n  ferry check\n  ferry dump -t 1234 -D /tmp/img --shell-job\n  \
                  ferry restore -D /tmp/img --shell-job\n  ferry show /tmp/img"
)]
pub struct Cli {
    /// Log verbosity: -v0 nothing, -v1 errors, -v2 warnings (default), -v3 info, -v4 debug;
    /// -v, -vv raise it by one or two.
    #[arg(
        short = 'v',
        long = "verbosity",
        global = true,
        num_args = 0..=1,
        default_missing_value = "+",
        value_name = "N",
        action = clap::ArgAction::Append,
        value_parser = logging::parse_verbosity,
    )]
    pub verbosity: Vec<logging::VerbosityStep>,

    /// Write the log to FILE instead of stderr; a relative path is taken inside
    /// the images directory (as CRIU does).
    #[arg(short = 'o', long = "log-file", global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// CRIU's work directory: where a relative --log-file goes (default: the
    /// images directory), and where `migrate` stages its rounds (default
    /// /dev/shm)
    #[arg(short = 'W', long = "work-dir", global = true, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check that this kernel has what ferry needs
    Check(check::CheckArgs),
    /// Checkpoint a running task into an image directory
    Dump(dump::DumpArgs),
    /// Copy a task's memory while it keeps running, and track what it changes next
    PreDump(dump::PreDumpArgs),
    /// Restore a task from an image directory at its original PID
    Restore(restore::RestoreArgs),
    /// Serve a lazily restored task's missing pages from the source
    LazyPages(lazy::LazyPagesArgs),
    /// Receive a dump's images over the network (see dump --page-server)
    PageServer(dump::PageServerArgs),
    /// Move a running task to another machine (where `ferry receive` listens)
    Migrate(migrate::MigrateArgs),
    /// Take in a task that `ferry migrate` sends, and run it here
    Receive(migrate::ReceiveArgs),
    /// Print an image directory, or one file of it, in readable form
    Show(show::ShowArgs),
    /// Serve CRIU's RPC on an inherited socket, as `criu swrk` (for runc and go-criu)
    Swrk(swrk::SwrkArgs),
    /// (internal) Removes a network lock if the ferry that took it dies
    #[command(hide = true)]
    NetworkLockGuard(GuardArgs),
}

#[derive(clap::Args, Debug)]
pub struct GuardArgs {
    method: crate::netlock::Method,
    name: String,
    netns: Option<PathBuf>,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Check(_) => "check",
            Command::Dump(_) => "dump",
            Command::PreDump(_) => "pre-dump",
            Command::Restore(_) => "restore",
            Command::LazyPages(_) => "lazy-pages",
            Command::PageServer(_) => "page-server",
            Command::Migrate(_) => "migrate",
            Command::Receive(_) => "receive",
            Command::Show(_) => "show",
            Command::Swrk(_) => "swrk",
            Command::NetworkLockGuard(_) => "network-lock-guard",
        }
    }

    fn images_dir(&self) -> Option<&Path> {
        match self {
            Command::Dump(a) => Some(&a.images_dir),
            Command::PreDump(a) => Some(&a.images_dir),
            Command::Restore(a) => Some(&a.images_dir),
            Command::LazyPages(a) => Some(&a.images_dir),
            Command::PageServer(a) => Some(&a.images_dir),
            Command::Receive(a) => Some(&a.images_dir),
            Command::Check(_)
            | Command::Show(_)
            | Command::Migrate(_)
            | Command::Swrk(_)
            | Command::NetworkLockGuard(_) => None,
        }
    }
}

impl Cli {
    /// Run the command; the exit code is the command's (restore passes the
    /// restored task's status through).
    pub fn run(self) -> Result<ExitCode> {
        match self.command {
            Command::Check(a) => check::run(a),
            Command::Dump(a) => dump::run(a),
            Command::PreDump(a) => dump::run_pre(a),
            Command::Restore(a) => restore::run(a),
            Command::LazyPages(a) => lazy::run(a),
            Command::PageServer(a) => dump::run_page_server(a),
            Command::Migrate(a) => migrate::run_migrate(a, self.work_dir),
            Command::Receive(a) => migrate::run_receive(a),
            Command::Show(a) => show::run(a),
            Command::Swrk(a) => swrk::run(a),
            Command::NetworkLockGuard(a) => {
                crate::netlock::guard(a.method, &a.name, crate::netlock::Netns(a.netns))?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    pub fn log_path(&self) -> Option<PathBuf> {
        let f = self.log_file.as_ref()?;
        Some(match self.work_dir.as_deref().or(self.command.images_dir()) {
            Some(dir) if f.is_relative() => dir.join(f),
            _ => f.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn criu_style_flags_parse() {
        let c = Cli::try_parse_from(["ferry", "dump", "-t", "42", "-D", "/tmp/x", "-R", "-j", "-v4", "-o", "d.log"])
            .unwrap();
        assert_eq!(logging::level(&c.verbosity), 4);
        assert_eq!(c.log_path(), Some(PathBuf::from("/tmp/x/d.log")));
        let Command::Dump(d) = &c.command else { panic!() };
        assert_eq!(d.tree, 42);
        assert!(d.leave_running && d.shell_job);

        let c = Cli::try_parse_from(["ferry", "-vv", "restore", "-D", "/i", "-d", "--pidfile", "/p"]).unwrap();
        assert_eq!(logging::level(&c.verbosity), 4);
        let c = Cli::try_parse_from(["ferry", "restore", "-v", "--images-dir", "/i", "--restore-detached"]).unwrap();
        assert_eq!(logging::level(&c.verbosity), 3);
        let c = Cli::try_parse_from(["ferry", "show", "/i"]).unwrap();
        assert_eq!(logging::level(&c.verbosity), 2);
        assert!(Cli::try_parse_from(["ferry", "dump", "-D", "/i"]).is_err(), "-t is required");
        assert!(Cli::try_parse_from(["ferry", "dump", "-t", "x"]).is_err());
    }
}
