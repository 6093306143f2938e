//! Restore cost against the number of mappings: a process with 1,000 and
//! one with 30,000 one-page areas (tp-areas, read-write and read-only in
//! turn so the kernel keeps them apart), dumped and restored by ferry and
//! by CRIU 4.1.1. Cost per mapping should not grow with the count.

use super::dump_restore::{sample, Sample, Workload};
use super::{Bench, Tool, Tools};
use anyhow::Result;

const COUNTS: [usize; 2] = [1_000, 30_000];

pub(super) fn run(b: &Bench, tools: &Tools) -> Result<()> {
    let mut rows: Vec<(usize, Tool, Vec<Sample>)> = Vec::new();
    for n in COUNTS {
        for tool in tools.list() {
            let mut v = Vec::new();
            for round in 0..b.rounds {
                let w = Workload { prog: "tp-areas", args: vec![n.to_string(), "1".into()] };
                let s = sample(w, tool, tools, round)?;
                eprintln!(
                    "bench: {n} mappings round {} {}: dump {:.3} s, restore {:.3} s",
                    round + 1,
                    tool.name(),
                    s.dump.as_secs_f64(),
                    s.restore.as_secs_f64()
                );
                v.push(s);
            }
            rows.push((n, tool, v));
        }
    }
    report(b, &rows);
    Ok(())
}

fn median_restore(v: &[Sample]) -> f64 {
    let mut r: Vec<f64> = v.iter().map(|s| s.restore.as_secs_f64()).collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

fn report(b: &Bench, rows: &[(usize, Tool, Vec<Sample>)]) {
    println!("\nRestore against mappings (tp-areas, one-page areas), median of {} rounds", b.rounds);
    println!("{:<12} {:>10} {:>12} {:>16}", "", "mappings", "restore ms", "µs per mapping");
    let per = |n: usize, tool: Tool| {
        rows.iter().find(|r| r.0 == n && r.1 == tool).map(|r| median_restore(&r.2) * 1e6 / n as f64)
    };
    for (n, tool, v) in rows {
        let ms = median_restore(v) * 1e3;
        println!("{:<12} {:>10} {:>12.1} {:>16.1}", tool.name(), n, ms, ms * 1e3 / *n as f64);
    }
    let (few, many) = (COUNTS[0], COUNTS[1]);
    if let (Some(a), Some(z)) = (per(few, Tool::Ferry), per(many, Tool::Ferry)) {
        let g = z / a;
        let met = if g <= 2.0 { "met" } else { "not met" };
        print!("goals: ferry per mapping at {many} / at {few}: {g:.2} (<= 2: {met})");
        if let Some(c) = per(many, Tool::Criu) {
            let r = z / c;
            print!("; ferry / CRIU at {many}: {r:.2}x (<= 0.5x: {})", if r <= 0.5 { "met" } else { "not met" });
        }
        println!();
    }
}
