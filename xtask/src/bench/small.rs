//! Small processes: dump and restore of each test program that checks its
//! own state on SIGUSR1 (signals, event fds, epoll, shared memory, guard
//! pages, sockets, a small tree...), by ferry and by CRIU 4.1.1: the fixed
//! cost a checkpoint pays before any memory is copied. Reported as the
//! median over the programs of each one's median dump + restore time.

use super::dump_restore::{sample, Workload};
use super::migration::one_line;
use super::{median, Bench, Tool, Tools};
use anyhow::Result;

/// Each program and its arguments: all say "ready", check themselves on
/// SIGUSR1 and exit 0 only if everything came back.
const PROGRAMS: &[(&str, &[&str])] = &[
    ("tp-bigmem", &["1"]),
    ("tp-bigmem", &["16"]),
    ("tp-dirty", &["4", "16"]),
    ("tp-churn", &["8", "5"]),
    ("tp-epoll", &[]),
    ("tp-eventfds", &[]),
    ("tp-guard", &[]),
    ("tp-shm", &[]),
    ("tp-signals", &[]),
    ("tp-sockets", &[]),
    ("tp-wait", &["pause"]),
    ("tp-wait", &["futex"]),
    ("tp-wait", &["futex-timeout"]),
    ("tp-areas", &["16", "1"]),
    ("tp-fleet", &["3", "8", "10"]),
];

/// Per tool: each program's median dump + restore in seconds, or why it
/// failed.
type Results = Vec<(Tool, Vec<(String, Result<f64, String>)>)>;

pub(super) fn run(b: &Bench, tools: &Tools) -> Result<()> {
    let mut all: Results = Vec::new();
    for tool in tools.list() {
        let mut per_program = Vec::new();
        for (prog, args) in PROGRAMS {
            let name = format!("{prog} {}", args.join(" ")).trim_end().to_string();
            let mut times = Vec::new();
            let mut failed = None;
            for round in 0..b.rounds {
                let w = Workload { prog, args: args.iter().map(|a| a.to_string()).collect() };
                match sample(w, tool, tools, round) {
                    Ok(s) => times.push((s.dump + s.restore).as_secs_f64()),
                    Err(e) => {
                        // A tool that failed once fails the same way again.
                        failed = Some(cause(&e));
                        break;
                    }
                }
            }
            let r = match failed {
                Some(e) => Err(e),
                None => Ok(median(times)),
            };
            eprintln!("bench: small {name} {}: {r:?}", tool.name());
            per_program.push((name, r));
        }
        all.push((tool, per_program));
    }
    report(b, &all);
    Ok(())
}

/// The failure's first line and the tool's last words.
fn cause(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let first = one_line(e);
    if first.ends_with(last) {
        first
    } else {
        format!("{first}: {last}")
    }
}

fn report(b: &Bench, all: &Results) {
    println!(
        "\nSmall processes: dump + restore of {} self-checking test programs, images on /dev/shm, median of {} rounds each",
        PROGRAMS.len(),
        b.rounds
    );
    let mut medians = Vec::new();
    for (tool, per_program) in all {
        let ok: Vec<f64> = per_program.iter().filter_map(|(_, r)| r.as_ref().ok().copied()).collect();
        let failed: Vec<String> =
            per_program.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n} ({e})"))).collect();
        let name = if *tool == Tool::Criu { "criu 4.1.1" } else { "ferry" };
        if ok.is_empty() {
            println!("{name:<12} every program failed: {}", failed.join("; "));
            continue;
        }
        let m = median(ok.clone()) * 1e3;
        medians.push((*tool, m));
        println!(
            "{name:<12} median {m:.1} ms over {} programs (fastest {:.1}, slowest {:.1})",
            ok.len(),
            ok.iter().copied().fold(f64::MAX, f64::min) * 1e3,
            ok.iter().copied().fold(0.0, f64::max) * 1e3
        );
        if !failed.is_empty() {
            println!("{:<12} failed: {}", "", failed.join("; "));
        }
    }
    if let Some(&(_, f)) = medians.iter().find(|(t, _)| *t == Tool::Ferry) {
        print!("goals: ferry's median <= 8 ms: {f:.1} ms ({})", if f <= 8.0 { "met" } else { "not met" });
        if let Some(&(_, c)) = medians.iter().find(|(t, _)| *t == Tool::Criu) {
            print!("; ferry / CRIU {:.2}x", f / c);
        }
        println!();
    }
}
