//! Image fuzzing: real images of real processes (one process; a tree of
//! processes with threads; a pre-dump chain; a lazy dump's), mutated by proptest (bit
//! flips and truncations of any file, and edits of the metadata with the
//! checksums made right again, so the parsers and the semantic checks are
//! reached rather than the checksum alone), then `ferry show` and
//! `ferry restore -d` on each case. Every case must end in exit 0 or a
//! one-line error: no panic, no hang, no more than a fixed amount of
//! memory, no process left behind, nothing changed outside the case's own
//! directory (a canary directory the mutations point paths at, /etc).
//!
//! A few hundred cases per image by default; `cargo xtask fuzz --cases N
//! --seed S` runs more (FERRY_FUZZ_CASES, FERRY_FUZZ_SEED).

mod common;

use common::fuzz::{kill_trees, leftovers, reseal, run_bounded, runner, settings};
use common::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
/// Longest a ferry command may take on one case.
const LIMIT: Duration = Duration::from_secs(30);

/// One change to a case's image.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flip one bit of a file (picked by index among the image's files).
    Flip { file: usize, at: u64, bit: u8 },
    /// Cut a file to a fraction of its length.
    Truncate { file: usize, per_mille: u16 },
    /// Change one node of a JSON file (picked by index in document order).
    Json { file: usize, node: usize, edit: Edit },
    /// Make the chain's parent a chain of `depth` links (the last loops
    /// back to the first when `looped`).
    DeepChain { depth: u16, looped: bool },
}

#[derive(Clone, Debug)]
enum Edit {
    Set(usize),
    Add(i64),
    Remove,
    Duplicate,
}

/// Values known to break assumptions: sizes, counts, addresses, PIDs, fds,
/// kinds and paths. `{canary}` and `{other}` are filled in per run.
fn interesting() -> Vec<Value> {
    vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(4095),
        json!(4096),
        json!(0x1001),
        json!(1 << 20),
        json!(65536),
        json!(1u64 << 40),
        json!(1u64 << 47),
        json!(0xffff_8000_0000_0000u64),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1.5),
        json!(""),
        json!("."),
        json!(".."),
        json!("../.."),
        json!("/"),
        json!("{canary}/victim"),
        json!("{canary}/new-file"),
        json!("{canary}/dir/../victim"),
        json!("../../../../../../etc/passwd"),
        json!("/etc/shadow"),
        json!("{other}"),
        json!("no-such-kind"),
        json!("\u{0}"),
        json!("x".repeat(70_000)),
        Value::Null,
        json!(true),
        json!([]),
        json!({}),
        json!([0, 0, 0]),
        json!({"kind": "no-such-kind"}),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let file = 0usize..64;
    prop_oneof![
        1 => (file.clone(), any::<u64>(), 0u8..8).prop_map(|(file, at, bit)| Mutation::Flip { file, at, bit }),
        1 => (file.clone(), 0u16..1000).prop_map(|(file, per_mille)| Mutation::Truncate { file, per_mille }),
        8 => (file, any::<usize>(), edit()).prop_map(|(file, node, edit)| Mutation::Json { file, node, edit }),
        1 => (1u16..300, any::<bool>()).prop_map(|(depth, looped)| Mutation::DeepChain { depth, looped }),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (0usize..interesting().len()).prop_map(Edit::Set),
        2 => prop_oneof![Just(1i64), Just(-1), Just(4096), Just(-4096), Just(1 << 32), any::<i64>()].prop_map(Edit::Add),
        1 => Just(Edit::Remove),
        1 => Just(Edit::Duplicate),
    ]
}

/// A case: some mutations, and whether the checksums are made right again
/// afterwards (almost always: otherwise only the checksum is tested).
fn case() -> impl Strategy<Value = (Vec<Mutation>, bool)> {
    (prop::collection::vec(mutation(), 1..4), prop::bool::weighted(0.9))
}

/// A real image made here, and where its restore puts processes.
struct Seed {
    name: &'static str,
    /// Holds `top` (the image restored) and, for the chain, `pre` (its
    /// parent); the whole directory is copied per case.
    dir: PathBuf,
    pids: Vec<i32>,
}

fn dump_seed(w: &Path, name: &'static str, prog: &str, args: &[&str]) -> Seed {
    let dir = w.join("seeds").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = vec![testprog(prog).to_str().unwrap().to_string()];
    cmd.extend(args.iter().map(|s| s.to_string()));
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut t = spawn(&cmd, &w.join(format!("{name}.out")));
    t.wait_output("ready", T);
    std::thread::sleep(Duration::from_millis(200));
    let pids = tree_pids(t.pid);
    let pid = t.pid.to_string();
    // The chain: a pre-dump, then the dump on top of it.
    let mut top = vec!["dump", "-t", &pid, "-D"];
    let top_dir = dir.join("top").display().to_string();
    top.push(&top_dir);
    if name == "chain" {
        ferry_ok(&["pre-dump", "-t", &pid, "-D", dir.join("pre").to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(100));
        top.extend(["--prev-images-dir", "../pre", "--track-mem"]);
    }
    if name == "lazy" {
        // A lazy dump serves its pages until fetched: once its images are
        // written, it is killed (and its task with it, or by us).
        top.extend(["--lazy-pages", "--port", "7390", "--address", "127.0.0.1"]);
        let mut lazy = Command::new(ferry()).args(&top).stdout(std::process::Stdio::null()).spawn().unwrap();
        let start = std::time::Instant::now();
        while !dir.join("top/inventory.json").exists() {
            assert!(start.elapsed() < T, "the lazy dump wrote no images");
            std::thread::sleep(Duration::from_millis(20));
        }
        lazy.kill().unwrap();
        lazy.wait().unwrap();
        // SAFETY: plain kill(2) of the dumped task.
        unsafe { libc::kill(t.pid, libc::SIGKILL) };
    } else {
        ferry_ok(&top);
    }
    t.reap_killed();
    reap_all(&pids, T);
    std::mem::forget(t);
    Seed { name, dir, pids }
}

/// Names, sizes, times, modes and owners of everything under `root`
/// (and of a few files of /etc): a change shows as a difference.
fn snapshot(roots: &[&Path]) -> BTreeMap<PathBuf, (u64, i64, i64, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = roots.iter().map(|p| p.to_path_buf()).collect();
    for f in ["/etc/passwd", "/etc/shadow", "/etc/hosts", "/etc"] {
        stack.push(PathBuf::from(f));
    }
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        out.insert(p.clone(), (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.ctime(), m.mode(), m.uid()));
        if m.is_dir() && p != Path::new("/etc") {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// JSON pointers of every node of `v`, in document order.
fn nodes(v: &Value) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut i = 0;
    while i < out.len() {
        let here = out[i].clone();
        match v.pointer(&here) {
            Some(Value::Array(a)) => out.extend((0..a.len()).map(|k| format!("{here}/{k}"))),
            Some(Value::Object(o)) => {
                out.extend(o.keys().map(|k| format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"))))
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Apply `edit` to node number `node` of `doc` (to the nearest container
/// from there on for Remove and Duplicate, which change what holds it).
fn edit_json(doc: &mut Value, node: usize, edit: &Edit, fill: &dyn Fn(&Value) -> Value) {
    let all = nodes(doc);
    let at = node % all.len();
    match edit {
        Edit::Set(i) => *doc.pointer_mut(&all[at]).unwrap() = fill(&interesting()[*i]),
        Edit::Add(d) => {
            let v = doc.pointer_mut(&all[at]).unwrap();
            if let Some(n) = v.as_i64() {
                *v = json!(n.wrapping_add(*d));
            } else if let Some(n) = v.as_u64() {
                *v = json!(n.wrapping_add(*d as u64));
            }
        }
        Edit::Remove | Edit::Duplicate => {
            for p in all[at..].iter().chain(all[..at].iter()) {
                match doc.pointer_mut(p).unwrap() {
                    Value::Array(a) if !a.is_empty() => {
                        let i = node % a.len();
                        if matches!(edit, Edit::Remove) {
                            a.remove(i);
                        } else {
                            let c = a[i].clone();
                            a.insert(i, c);
                        }
                        return;
                    }
                    Value::Object(o) if !o.is_empty() && matches!(edit, Edit::Remove) => {
                        let k = o.keys().nth(node % o.len()).unwrap().clone();
                        o.remove(&k);
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for d in [dir.join("top"), dir.join("pre")] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    out.sort();
    out
}

/// Build a case's image in `case` from the seed.
fn prepare(seed: &Seed, case: &Path, mutations: &[Mutation], seal: bool, canary: &Path, other: &Path) {
    let _ = std::fs::remove_dir_all(case);
    copy_dir(&seed.dir, case);
    let fill = |v: &Value| match v.as_str() {
        Some(s) => json!(s
            .replace("{canary}", canary.to_str().unwrap())
            .replace("{other}", &format!("../../../seeds/{}", other.display()))),
        None => v.clone(),
    };
    for m in mutations {
        let files = files_of(case);
        match m {
            Mutation::Flip { file, at, bit } => {
                let p = &files[file % files.len()];
                let mut d = std::fs::read(p).unwrap();
                if !d.is_empty() {
                    let i = (*at % d.len() as u64) as usize;
                    d[i] ^= 1 << bit;
                    std::fs::write(p, d).unwrap();
                }
            }
            Mutation::Truncate { file, per_mille } => {
                let p = &files[file % files.len()];
                let len = std::fs::metadata(p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len * *per_mille as u64 / 1000)
                    .unwrap();
            }
            Mutation::Json { file, node, edit } => {
                let json: Vec<&PathBuf> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
                let p = json[file % json.len()];
                let Ok(mut doc) = serde_json::from_slice::<Value>(&std::fs::read(p).unwrap()) else { continue };
                edit_json(&mut doc, *node, edit, &fill);
                std::fs::write(p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
            }
            Mutation::DeepChain { depth, looped } => {
                // top -> link0 -> link1 ... -> pre (or back to link0).
                let inv_path = case.join("top/inventory.json");
                let Ok(mut top) = serde_json::from_slice::<Value>(&std::fs::read(&inv_path).unwrap()) else { continue };
                let Some(top_obj) = top.as_object_mut() else { continue };
                top_obj.insert("parent".into(), json!("../link0"));
                std::fs::write(&inv_path, serde_json::to_vec_pretty(&top).unwrap()).unwrap();
                let pre = case.join("pre");
                if !pre.is_dir() {
                    continue;
                }
                for i in 0..*depth {
                    let link = case.join(format!("link{i}"));
                    let _ = std::fs::remove_dir_all(&link);
                    std::fs::create_dir_all(&link).unwrap();
                    for e in std::fs::read_dir(&pre).unwrap().flatten() {
                        std::fs::hard_link(e.path(), link.join(e.file_name())).unwrap();
                    }
                    let next = if i + 1 < *depth {
                        format!("../link{}", i + 1)
                    } else if *looped {
                        "../link0".to_string()
                    } else {
                        "../pre".to_string()
                    };
                    let p = link.join("inventory.json");
                    // (An earlier mutation may have spoilt the parent's inventory.)
                    let Ok(mut inv) = serde_json::from_slice::<Value>(&std::fs::read(&p).unwrap()) else { continue };
                    let Some(o) = inv.as_object_mut() else { continue };
                    o.insert("parent".into(), json!(next));
                    std::fs::remove_file(&p).unwrap();
                    std::fs::write(&p, serde_json::to_vec_pretty(&inv).unwrap()).unwrap();
                    reseal(&link, false);
                }
            }
        }
    }
    if seal {
        reseal(&case.join("top"), true);
        reseal(&case.join("pre"), true);
    }
}

#[derive(Default, Debug)]
struct Tally {
    cases: u32,
    show_ok: u32,
    restored: u32,
    refused: u32,
}

/// Run show and restore on one prepared case; Err says which rule broke.
fn check_case(
    seed: &Seed,
    case: &Path,
    canary: &Path,
    before: &BTreeMap<PathBuf, (u64, i64, i64, u32, u32)>,
    tally: &mut Tally,
) -> Result<(), String> {
    let top = case.join("top");
    let scratch = case.parent().unwrap();
    tally.cases += 1;
    let show = run_bounded(
        {
            let mut c = Command::new(ferry());
            c.args(["show", top.to_str().unwrap()]);
            c
        },
        LIMIT,
        scratch,
    );
    if show.verdict("show")? {
        tally.show_ok += 1;
    }
    let restore = run_bounded(
        {
            let mut c = Command::new(ferry());
            c.args(["restore", "-d", "-D", top.to_str().unwrap()]);
            c
        },
        LIMIT,
        scratch,
    );
    let restored = restore.verdict("restore")?;
    let left = leftovers();
    if restored {
        tally.restored += 1;
        kill_trees(&left);
    } else {
        tally.refused += 1;
        if !left.is_empty() {
            kill_trees(&left);
            return Err(format!("restore failed ({}) but left processes {left:?} behind", restore.stderr.trim()));
        }
        if let Some(p) = seed.pids.iter().find(|p| pid_exists(**p)) {
            return Err(format!("restore failed ({}) but PID {p} exists", restore.stderr.trim()));
        }
    }
    let after = snapshot(&[canary]);
    if &after != before {
        let changed: Vec<_> = after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, _)| k).collect();
        let gone: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        return Err(format!("files changed outside the image: {changed:?} gone: {gone:?}"));
    }
    Ok(())
}

#[test]
fn mutated_images_end_in_an_error_or_a_restore() {
    let w = workdir();
    let (cases, seed) = settings(200);
    let seeds = [
        dump_seed(w.path(), "single", "tp-sleeper", &["100000"]),
        dump_seed(w.path(), "tree", "tp-fleet", &["2", "1", "0", "3"]),
        dump_seed(w.path(), "chain", "tp-churn", &["8", "5", "layout"]),
        dump_seed(w.path(), "lazy", "tp-bigmem", &["4"]),
    ];
    let canary = w.path().join("canary");
    std::fs::create_dir_all(canary.join("dir")).unwrap();
    std::fs::write(canary.join("victim"), b"must stay as it is\n").unwrap();
    let before = snapshot(&[&canary]);
    assert!(leftovers().is_empty(), "children before the first case: {:?}", leftovers());
    for (i, s) in seeds.iter().enumerate().filter(|(_, s)| common::fuzz::wanted(s.name)) {
        let other = &seeds[(i + 1) % seeds.len()];
        let other_rel = PathBuf::from(other.name).join("top");
        let tally = std::cell::RefCell::new(Tally::default());
        let n = std::cell::Cell::new(0u32);
        let mut run = runner(cases, seed.wrapping_add(i as u64));
        let result = run.run(&case(), |(mutations, seal)| {
            n.set(n.get() + 1);
            let case = w.path().join("cases").join(format!("{}-{}", s.name, n.get()));
            prepare(s, &case, &mutations, seal, &canary, &other_rel);
            let r = check_case(s, &case, &canary, &before, &mut tally.borrow_mut());
            let _ = std::fs::remove_dir_all(&case);
            r.map_err(TestCaseError::fail)
        });
        eprintln!("fuzz images {}: {:?}", s.name, tally.borrow());
        if let Err(e) = result {
            panic!("image {} (seed {seed}): {e}", s.name);
        }
    }
}
