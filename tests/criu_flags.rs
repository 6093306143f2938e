//! CRIU's command line: scripts written for CRIU pass its options, so
//! every dump, pre-dump and restore option of CRIU 4.x parses; those ferry
//! implements work, the others stop with one line before anything is
//! touched.

mod common;

use clap::Parser;
use common::*;
use ferry::cli::Cli;
use std::time::Duration;

/// What an option takes.
#[derive(Clone, Copy, PartialEq)]
enum Arg {
    None,
    /// CRIU's BOOL_OPT: also `--no-NAME`.
    Bool,
    Value,
    Optional,
}

/// CRIU 4.x's long options (criu/config.c, `long_opts`), with `-h` and
/// `-V` left out (help and version), and whether ferry implements them
/// (on some command).
const CRIU: &[(&str, Arg, bool)] = &[
    ("tree", Arg::Value, true),
    ("leave-stopped", Arg::None, false),
    ("leave-running", Arg::None, true),
    ("restore-detached", Arg::Bool, true),
    ("restore-sibling", Arg::Bool, true),
    ("daemon", Arg::Bool, true),
    ("images-dir", Arg::Value, true),
    ("work-dir", Arg::Value, true),
    ("log-file", Arg::Value, true),
    ("join-ns", Arg::Value, false),
    ("root", Arg::Value, true),
    ("ext-unix-sk", Arg::Optional, true),
    ("tcp-established", Arg::Bool, true),
    ("close", Arg::Value, false),
    ("log-pid", Arg::Bool, false),
    ("evasive-devices", Arg::Bool, false),
    ("pidfile", Arg::Value, true),
    ("veth-pair", Arg::Value, false),
    ("action-script", Arg::Value, true),
    ("link-remap", Arg::Bool, false),
    ("shell-job", Arg::Bool, true),
    ("file-locks", Arg::Bool, true),
    ("page-server", Arg::Bool, true),
    ("address", Arg::Value, true),
    ("port", Arg::Value, true),
    ("prev-images-dir", Arg::Value, true),
    ("ms", Arg::None, false),
    ("track-mem", Arg::Bool, true),
    ("auto-dedup", Arg::Bool, false),
    ("libdir", Arg::Value, false),
    ("cpu-cap", Arg::Optional, false),
    ("force-irmap", Arg::Bool, false),
    ("ext-mount-map", Arg::Value, false),
    ("exec-cmd", Arg::None, false),
    ("manage-cgroups", Arg::Optional, true),
    ("cgroup-root", Arg::Value, false),
    ("inherit-fd", Arg::Value, true),
    ("feature", Arg::Value, false),
    ("skip-mnt", Arg::Value, false),
    ("enable-fs", Arg::Value, false),
    ("enable-external-sharing", Arg::None, false),
    ("enable-external-masters", Arg::None, false),
    ("freeze-cgroup", Arg::Value, true),
    ("ghost-limit", Arg::Value, true),
    ("irmap-scan-path", Arg::Value, false),
    ("lsm-profile", Arg::Value, false),
    ("timeout", Arg::Value, false),
    ("external", Arg::Value, true),
    ("empty-ns", Arg::Value, true),
    ("lazy-pages", Arg::None, true),
    ("extra", Arg::Bool, false),
    ("experimental", Arg::Bool, false),
    ("all", Arg::None, false),
    ("cgroup-props", Arg::Value, false),
    ("cgroup-props-file", Arg::Value, false),
    ("cgroup-dump-controller", Arg::Value, false),
    ("skip-in-flight", Arg::Bool, true),
    ("deprecated", Arg::Bool, false),
    ("display-stats", Arg::Bool, false),
    ("weak-sysctls", Arg::Bool, false),
    ("status-fd", Arg::Value, true),
    ("tcp-close", Arg::Bool, true),
    ("verbosity", Arg::Optional, true),
    ("ps-socket", Arg::Value, false),
    ("stream", Arg::Bool, false),
    ("config", Arg::Value, false),
    ("no-default-config", Arg::None, false),
    ("tls-cacert", Arg::Value, true),
    ("tls-cacrl", Arg::Value, false),
    ("tls-cert", Arg::Value, true),
    ("tls-key", Arg::Value, true),
    ("tls", Arg::Bool, true),
    ("tls-no-cn-verify", Arg::None, true),
    ("cgroup-yard", Arg::Value, false),
    ("pre-dump-mode", Arg::Value, false),
    ("file-validation", Arg::Value, false),
    ("skip-file-rwx-check", Arg::Bool, false),
    ("lsm-mount-context", Arg::Value, false),
    ("network-lock", Arg::Value, true),
    ("mntns-compat-mode", Arg::Bool, false),
    ("unprivileged", Arg::Bool, false),
    ("ghost-fiemap", Arg::Bool, false),
    ("allow-uprobes", Arg::Bool, false),
];

/// CRIU's short options and the long ones they stand for.
const SHORT: &[(&str, &str)] = &[
    ("-d", "restore-detached"),
    ("-S", "restore-sibling"),
    ("-s", "leave-stopped"),
    ("-R", "leave-running"),
    ("-j", "shell-job"),
    ("-l", "file-locks"),
    ("-x", "ext-unix-sk"),
    ("-r", "root"),
    ("-J", "join-ns"),
    ("-W", "work-dir"),
    ("-L", "libdir"),
    ("-M", "ext-mount-map"),
];

/// The words of one option on a command line, with a plausible value.
fn words(name: &str, arg: Arg, no: bool) -> Vec<String> {
    let value = match name {
        "tree" | "port" | "status-fd" | "close" | "timeout" => "7".to_string(),
        "tls-cacert" | "tls-cert" | "tls-key" => "/etc/ferry/tls/x.pem".into(),
        "ghost-limit" => "1M".into(),
        "network-lock" => "nftables".into(),
        _ => "x".into(),
    };
    let flag = format!("--{}{name}", if no { "no-" } else { "" });
    match arg {
        Arg::Value if !no => vec![flag, value],
        Arg::Optional if name == "verbosity" => vec!["-v4".into()],
        _ => vec![flag],
    }
}

fn parse(cmd: &str, extra: &[String]) -> Result<Cli, clap::Error> {
    let mut argv: Vec<String> = vec!["ferry".into(), cmd.into()];
    if cmd != "restore" {
        argv.extend(["-t".into(), "42".into()]);
    }
    argv.extend(["-D".into(), "/tmp/img".into()]);
    argv.extend(extra.iter().cloned());
    Cli::try_parse_from(argv)
}

fn refused(cli: &Cli) -> Option<&'static str> {
    use ferry::cli::Command;
    match &cli.command {
        Command::Dump(a) => a.criu.first_given(),
        Command::PreDump(a) => a.criu.first_given(),
        Command::Restore(a) => a.criu.first_given(),
        _ => None,
    }
}

#[test]
fn every_criu_option_parses_on_dump_pre_dump_and_restore() {
    for cmd in ["dump", "pre-dump", "restore"] {
        for &(name, arg, implemented) in CRIU {
            // Given already by every command line here.
            if name == "images-dir" || (name == "tree" && cmd != "restore") {
                continue;
            }
            let forms: &[bool] = if arg == Arg::Bool { &[false, true] } else { &[false] };
            for &no in forms {
                let w = words(name, arg, no);
                let cli = parse(cmd, &w).unwrap_or_else(|e| panic!("ferry {cmd} {w:?}: {e}"));
                let got = refused(&cli);
                if implemented || no {
                    assert_eq!(got, None, "ferry {cmd} {w:?} should be accepted");
                } else {
                    assert_eq!(got, Some(name), "ferry {cmd} {w:?} should be refused by name");
                }
            }
        }
        for &(short, long) in SHORT {
            let (_, arg, implemented) = *CRIU.iter().find(|c| c.0 == long).unwrap();
            let mut w = vec![short.to_string()];
            if arg == Arg::Value {
                w.push("x".into());
            }
            let cli = parse(cmd, &w).unwrap_or_else(|e| panic!("ferry {cmd} {w:?}: {e}"));
            assert_eq!(refused(&cli).is_none(), implemented, "ferry {cmd} {short} ({long})");
        }
    }
}

/// An option ferry does not implement stops the dump with one line, and
/// the task runs on untouched.
#[test]
fn unsupported_criu_options_stop_before_the_task_is_touched() {
    let w = workdir();
    let t = spawn(&[testprog("tp-wait").to_str().unwrap(), "pause"], &w.path().join("out"));
    t.wait_output("ready", Duration::from_secs(30));
    let img = w.path().join("img");
    let pid = t.pid.to_string();
    for &(name, arg, implemented) in CRIU {
        if implemented {
            continue;
        }
        let mut args: Vec<String> =
            vec!["dump".into(), "-t".into(), pid.clone(), "-D".into(), img.display().to_string()];
        args.extend(words(name, arg, false));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = ferry_err(&a);
        assert_eq!(err.trim_end(), format!("ferry: dump: --{name} is not supported yet"), "{args:?}");
        t.assert_running_untraced();
        assert!(!img.exists(), "--{name}: the images directory was created");
    }
    // Restore refuses them the same way, before anything is read.
    let err = ferry_err(&["restore", "-D", img.to_str().unwrap(), "--link-remap"]);
    assert_eq!(err.trim_end(), "ferry: restore: --link-remap is not supported yet");
}

/// `--status-fd N` as CRIU has it: one zero byte on N once the lazy dump's
/// page server listens (a script starts the destination then), and N
/// closed. With nobody coming, the task is given back.
#[test]
fn status_fd_says_when_the_lazy_page_server_listens() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let w = workdir();
    let t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), "16"], &w.path().join("out"));
    t.wait_output("ready", Duration::from_secs(30));
    let (read, write) = nix::unistd::pipe().unwrap();
    let fd = write.as_raw_fd();
    let mut cmd = std::process::Command::new(ferry());
    let (pid, img) = (t.pid.to_string(), w.path().join("img").display().to_string());
    cmd.args(["dump", "-t", &pid, "-D", &img, "--lazy-pages", "--address", "127.0.0.1", "--port", "27113"]);
    cmd.args(["--lazy-wait", "2", "--status-fd", "5"]);
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(write);
    let mut got = Vec::new();
    let mut pipe = std::fs::File::from(read);
    let mut byte = [1u8];
    pipe.read_exact(&mut byte).expect("a byte on the status fd");
    assert_eq!(byte, [0]);
    assert!(std::net::TcpStream::connect("127.0.0.1:27113").is_ok(), "the page server listens by then");
    pipe.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "one byte, then closed");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no lazy-pages daemon connected"), "{err}");
    t.assert_running_untraced();
}
