//! `ferry show`: an image directory in readable form (what CRIU's crit does).

use super::inventory::Inventory;
use super::objects::{ObjectsImage, OBJECTS};
use super::pagemap::{PageFlags, PagemapImage};
use super::stats::DumpStats;
use super::task::{TaskImage, ThreadImage, VmaKind};
use super::tree::{ProcessState, TreeImage, TREE};
use super::{pagemap_file, task_file, ImageDir, INVENTORY, STATS};
use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn signal_name(signo: i32) -> String {
    match nix::sys::signal::Signal::try_from(signo) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("SIG{signo}"),
    }
}

fn signal_set(mask: u64) -> String {
    let names: Vec<String> = (1..=64).filter(|s| mask & (1u64 << (s - 1)) != 0).map(signal_name).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

fn open_flags(flags: u32) -> String {
    let f = flags as i32;
    let mut parts = vec![match f & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        _ => "O_RDWR",
    }];
    for (bit, name) in [
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_ASYNC, "O_ASYNC"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
    ] {
        if f & bit != 0 {
            parts.push(name);
        }
    }
    parts.join("|")
}

/// Registers as `name value` pairs; long blobs (x86 xstate) by size only.
fn cpu_summary(t: &ThreadImage, out: &mut dyn Write) -> Result<()> {
    let v = serde_json::to_value(&t.cpu)?;
    let obj = v.as_object().context("cpu record is not an object")?;
    writeln!(
        out,
        "    cpu        {} (restart: {:?})",
        obj.get("arch").and_then(|a| a.as_str()).unwrap_or("?"),
        t.restart
    )?;
    for (group, val) in obj.iter().filter(|(k, _)| *k != "arch") {
        match val {
            serde_json::Value::Object(regs) => {
                let cells: Vec<String> = regs.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect();
                for chunk in cells.chunks(4) {
                    writeln!(out, "      {group:<8} {}", chunk.join(" "))?;
                }
            }
            other => writeln!(out, "      {group:<8} {}", compact(other))?,
        }
    }
    Ok(())
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) if s.len() > 40 => format!("<{} bytes>", s.len() / 2),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => format!("[{} values]", a.len()),
        other => other.to_string(),
    }
}

/// Check every listed file; returns the problems found.
fn verify_all(img: &ImageDir) -> Vec<(String, String)> {
    let mut bad = Vec::new();
    for f in &img.inventory.files {
        let r = if f.name.ends_with(".img") { img.verify_raw(&f.name) } else { img.read_verified(&f.name).map(drop) };
        if let Err(e) = r {
            bad.push((f.name.clone(), e.to_string()));
        }
    }
    bad
}

pub fn dir(path: &Path, out: &mut dyn Write) -> Result<()> {
    let img = ImageDir::open(path)?;
    let inv: &Inventory = &img.inventory;
    let bad = verify_all(&img);
    writeln!(out, "ferry image {}", path.display())?;
    writeln!(out, "  format       {} v{}, written by ferry {}", inv.format, inv.version, inv.ferry_version)?;
    let kind = serde_json::to_value(&inv.kind)?;
    writeln!(out, "  kind         {} of task {}", kind.as_str().unwrap_or("?"), inv.root_pid)?;
    writeln!(
        out,
        "  machine      {}, {}-byte pages, kernel {}, host {}",
        inv.arch, inv.page_size, inv.kernel, inv.hostname
    )?;
    writeln!(out, "  created      unix time {}", inv.created_unix)?;
    if let Some(p) = &inv.parent {
        writeln!(out, "  parent       {p}")?;
    }
    writeln!(out, "  files")?;
    for f in &inv.files {
        let state =
            bad.iter().find(|(n, _)| *n == f.name).map(|(_, e)| format!("BAD: {e}")).unwrap_or_else(|| "ok".into());
        writeln!(out, "    {:<22} {:>10}  xxh3 {}  {state}", f.name, human_bytes(f.size), f.xxh3)?;
    }
    if let Ok(st) = img.read_json::<DumpStats>(STATS) {
        writeln!(
            out,
            "  stats        frozen {:.1} ms, memory copied in {:.1} ms ({}/s), {} pages ({}) of {} scanned, {} areas, total {:.1} ms",
            st.frozen_us as f64 / 1e3,
            st.memdump_us as f64 / 1e3,
            human_bytes(st.page_rate() as u64),
            st.pages_written,
            human_bytes(st.bytes_written),
            st.pages_scanned,
            st.vmas,
            st.total_us as f64 / 1e3
        )?;
        if st.pages_in_parent > 0 || st.pages_lazy > 0 {
            writeln!(
                out,
                "               {} pages unchanged since the parent image, {} left on the source for lazy transfer",
                st.pages_in_parent, st.pages_lazy
            )?;
        }
    }
    let objects = img.read_json::<ObjectsImage>(OBJECTS).ok();
    match img.read_json::<TreeImage>(TREE) {
        Ok(tree) => show_tree(&tree, out)?,
        Err(e) if img.entry(TREE).is_ok() => writeln!(out, "\ntree: cannot show: {e}")?,
        Err(_) => {}
    }
    if let Some(o) = &objects {
        show_objects(o, out)?;
    }
    for &pid in &inv.tasks {
        let pm = img.read_pagemap(pid);
        match (img.entry(&task_file(pid)).is_ok(), pm) {
            // A pre-dump holds memory only.
            (false, Ok(pm)) => writeln!(
                out,
                "\ntask {pid}: memory only, {} saved in {} extents ({})",
                human_bytes(pm.present_bytes()),
                pm.entries.len(),
                pm.pages_file
            )?,
            (true, Ok(pm)) => match img.read_json::<TaskImage>(&task_file(pid)) {
                Ok(t) => task(&t, &pm, objects.as_ref(), out)?,
                Err(e) => writeln!(out, "\ntask {pid}: cannot show: {e}")?,
            },
            (_, Err(e)) => writeln!(out, "\ntask {pid}: cannot show: {e}")?,
        }
    }
    if !bad.is_empty() {
        bail!("{} damaged file(s) in {}: {}", bad.len(), path.display(), bad[0].1);
    }
    Ok(())
}

fn show_tree(tree: &TreeImage, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "\ntree         {} process(es), root {}{}",
        tree.processes.len(),
        tree.root,
        if tree.pid_ns { ", init of its own PID namespace" } else { "" }
    )?;
    for p in &tree.processes {
        let depth = std::iter::successors(Some(p), |q| tree.get(q.ppid).filter(|r| r.pid != q.pid)).count() - 1;
        let state = match p.state {
            ProcessState::Alive => format!("{} thread(s)", p.threads.len()),
            ProcessState::Zombie { status } => format!("zombie, wait status {status:#x}"),
        };
        writeln!(
            out,
            "  {:indent$}{} \"{}\" (session {}, group {}): {state}",
            "",
            p.pid,
            p.comm,
            p.sid,
            p.pgid,
            indent = depth * 2
        )?;
    }
    Ok(())
}

fn show_objects(o: &ObjectsImage, out: &mut dyn Write) -> Result<()> {
    if o.files.is_empty() && o.memory.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nobjects")?;
    for f in &o.files {
        let what = crate::objects::file_kind(&f.kind).map(|k| k.describe(f)).unwrap_or_else(|e| format!("{e:#}"));
        let owner = f.owner.as_ref().map(|o| format!(", SIGIO to {:?} {}", o.kind, o.pid)).unwrap_or_default();
        let locks: String = f.locks.iter().map(|l| format!(", {}", l.describe())).collect();
        writeln!(out, "  file {:<4} {:<12} {what}, {}{owner}{locks}", f.id, f.kind, open_flags(f.flags))?;
    }
    for m in &o.memory {
        let what = crate::objects::memory_kind(&m.kind).map(|k| k.describe(m)).unwrap_or_else(|e| format!("{e:#}"));
        writeln!(
            out,
            "  memory {:<2} {:<12} {what}, {}, {} saved",
            m.id,
            m.kind,
            human_bytes(m.size),
            human_bytes(m.contents.bytes())
        )?;
    }
    Ok(())
}

fn task(t: &TaskImage, pm: &PagemapImage, objects: Option<&ObjectsImage>, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "\ntask {} \"{}\"{}", t.pid, t.comm, if t.stopped { " (stopped)" } else { "" })?;
    writeln!(
        out,
        "  ids          session {}, process group {}, parent {}, {}",
        t.ids.sid,
        t.ids.pgid,
        t.ids.ppid,
        if t.ids.tty_nr == 0 { "no controlling terminal".to_string() } else { format!("terminal {:#x}", t.ids.tty_nr) }
    )?;
    let deleted = if t.fs.cwd_deleted.is_some() { " (deleted)" } else { "" };
    writeln!(
        out,
        "  fs           cwd {}{deleted}, root {}, umask {:04o}",
        t.fs.cwd.display(),
        t.fs.root.display(),
        t.fs.umask
    )?;
    writeln!(out, "  personality  {:#x}", t.personality)?;
    let pending: Vec<String> = t.shared_pending.iter().map(|p| signal_name(p.signo)).collect();
    writeln!(
        out,
        "  signals      pending for the process: {}",
        if pending.is_empty() { "none".into() } else { pending.join(" ") }
    )?;
    for a in t.sigactions.iter().filter(|a| a.handler != 0) {
        let h = if a.handler == 1 { "ignored".to_string() } else { format!("handler {:#x}", a.handler) };
        writeln!(
            out,
            "               {:<10} {h} flags {:#x} mask {}",
            signal_name(a.signo),
            a.flags,
            signal_set(a.mask)
        )?;
    }
    let limited: Vec<String> = t
        .rlimits
        .iter()
        .filter(|l| l.soft != u64::MAX || l.hard != u64::MAX)
        .map(|l| format!("{}={}/{}", l.name.trim_start_matches("RLIMIT_"), fmt_lim(l.soft), fmt_lim(l.hard)))
        .collect();
    writeln!(out, "  rlimits      {}", limited.join(" "))?;
    for th in &t.threads {
        thread(th, out)?;
    }
    let mapped: u64 = t.vmas.iter().map(|v| v.len()).sum();
    writeln!(
        out,
        "  memory       {} areas, {} mapped, {} saved in {} extents ({})",
        t.vmas.len(),
        human_bytes(mapped),
        human_bytes(pm.present_bytes()),
        pm.entries.len(),
        pm.pages_file
    )?;
    writeln!(
        out,
        "               brk {:#x} (from {:#x}), stack {:#x}, exe {}",
        t.mm.brk,
        t.mm.start_brk,
        t.mm.start_stack,
        t.mm.exe.path.display()
    )?;
    for v in &t.vmas {
        let saved: u64 = pm
            .entries
            .iter()
            .filter(|e| e.flags == PageFlags::Present && e.vaddr >= v.start && e.vaddr < v.end)
            .map(|e| e.nr_pages)
            .sum();
        let what = match &v.kind {
            VmaKind::File { file, offset } => format!("{} @{offset:#x}", file.path.display()),
            VmaKind::Anon => v.name.clone().unwrap_or_else(|| "anonymous".into()),
            VmaKind::Object { object, offset } => {
                let kind = objects.and_then(|o| o.memory(*object)).map(|m| m.kind.as_str()).unwrap_or("?");
                format!("memory object {object} ({kind}) @{offset:#x}")
            }
            VmaKind::Vdso => "[vdso]".into(),
            VmaKind::Vvar => "[vvar]".into(),
            VmaKind::VvarVclock => "[vvar_vclock]".into(),
        };
        let pages = if saved > 0 { format!(", {saved} pages saved") } else { String::new() };
        let locked = if v.locked { ", locked" } else { "" };
        writeln!(out, "    {:012x}-{:012x} {} {what}{pages}{locked}", v.start, v.end, v.prot)?;
    }
    writeln!(out, "  files")?;
    for fd in &t.fds {
        let what = match objects.and_then(|o| o.file(fd.file)) {
            Some(f) => crate::objects::file_kind(&f.kind).map(|k| k.describe(f)).unwrap_or_else(|e| format!("{e:#}")),
            None => "?".into(),
        };
        let locks: String = fd.posix_locks.iter().map(|l| format!(", {}", l.describe())).collect();
        writeln!(
            out,
            "    {:>4} file object {}: {what}{}{locks}",
            fd.fd,
            fd.file,
            if fd.cloexec { ", close-on-exec" } else { "" }
        )?;
    }
    Ok(())
}

fn thread(t: &ThreadImage, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "  thread {} \"{}\"", t.tid, t.comm)?;
    let c = &t.creds;
    writeln!(out, "    creds      uid {:?} gid {:?} groups {:?}", c.uid, c.gid, c.groups)?;
    writeln!(
        out,
        "               caps eff {:016x} prm {:016x} inh {:016x} bnd {:016x} amb {:016x}{}",
        c.cap_eff,
        c.cap_prm,
        c.cap_inh,
        c.cap_bnd,
        c.cap_amb,
        if c.no_new_privs { ", no_new_privs" } else { "" }
    )?;
    writeln!(out, "    signals    blocked: {}", signal_set(t.blocked))?;
    let pending: Vec<String> = t.pending.iter().map(|p| signal_name(p.signo)).collect();
    writeln!(out, "               pending: {}", if pending.is_empty() { "none".into() } else { pending.join(" ") })?;
    if let Some(r) = &t.rseq {
        writeln!(out, "    rseq       {:#x}, {} bytes, signature {:#x}", r.addr, r.len, r.sig)?;
    }
    if t.robust_list != 0 {
        writeln!(out, "    robust     {:#x} ({} bytes)", t.robust_list, t.robust_list_len)?;
    }
    writeln!(out, "    sched      policy {}, nice {}, priority {}", t.sched.policy, t.sched.nice, t.sched.priority)?;
    cpu_summary(t, out)
}

fn fmt_lim(v: u64) -> String {
    if v == u64::MAX {
        "inf".into()
    } else {
        v.to_string()
    }
}

/// One file: JSON files and pagemaps pretty-printed as JSON; a pages file
/// as its extents with the first bytes of each.
pub fn file(dir_path: &Path, name: &str, out: &mut dyn Write) -> Result<()> {
    let img = ImageDir::open(dir_path)?;
    if name == INVENTORY {
        writeln!(out, "{}", serde_json::to_string_pretty(&img.inventory)?)?;
        return Ok(());
    }
    if name.ends_with(".json") {
        let v: serde_json::Value = img.read_json(name)?;
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    if let Some(&pid) = img.inventory.tasks.iter().find(|&&pid| pagemap_file(pid) == name) {
        writeln!(out, "{}", serde_json::to_string_pretty(&img.read_pagemap(pid)?)?)?;
        return Ok(());
    }
    let pagemap = img
        .inventory
        .tasks
        .iter()
        .map(|&pid| img.read_pagemap(pid))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|pm| pm.pages_file == name)
        .with_context(|| format!("{}: no pagemap refers to this file", img.path(name).display()))?;
    img.verify_raw(name)?;
    let mut f = img.open_raw(name)?;
    writeln!(out, "{name}: {} extents, {}", pagemap.entries.len(), human_bytes(pagemap.present_bytes()))?;
    for (e, off) in pagemap.present_with_offsets() {
        let mut head = [0u8; 32];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut head)?;
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(
            out,
            "  {:012x}-{:012x} {:>6} pages at offset {:>10}: {} …",
            e.vaddr,
            e.vaddr + e.nr_pages * pagemap.page_size,
            e.nr_pages,
            off,
            hex.join(" ")
        )?;
    }
    Ok(())
}
