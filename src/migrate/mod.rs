//! `ferry migrate` (source) and `ferry receive` (destination): the whole
//! live migration over one authenticated connection. Pre-copy rounds send
//! their image files while the task runs; the final lazy dump sends the
//! rest; the destination restores and reports the task running; then the
//! same connection carries page requests until every page is there.

pub mod dest;
pub mod source;

use crate::image::inventory::Inventory;
use crate::image::INVENTORY;
use crate::net::wire::{read_frame, write_frame, Frame, Kind};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path};

/// First frame after authentication: a new migration, or a reconnect.
pub const START: &str = "migrate";
pub const RESUME: &str = "resume";
/// The source's answer to "ready PID": its copy can never run again.
pub const GO: &str = "go";

const CHUNK: usize = 1 << 20;

/// Send every file of the image in `dir` (inventory last) under `prefix`.
/// Returns the bytes sent.
pub fn send_image(w: &mut impl Write, dir: &Path, prefix: &str) -> Result<u64> {
    let inv_bytes = std::fs::read(dir.join(INVENTORY)).with_context(|| format!("reading {}", dir.display()))?;
    let inv = Inventory::from_bytes(&dir.join(INVENTORY), &inv_bytes)?;
    let mut total = 0;
    let mut names: Vec<String> = inv.files.iter().map(|f| f.name.clone()).collect();
    names.push(INVENTORY.to_string());
    let mut buf = vec![0u8; CHUNK];
    let size: u64 = inv.files.iter().map(|f| f.size).sum::<u64>() + inv_bytes.len() as u64;
    let progress = crate::progress::Progress::new(&format!("sending {prefix}"), Some(size));
    for name in names {
        let path = dir.join(&name);
        let mut f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let full = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        write_frame(w, &Frame::new(Kind::File, full.into_bytes()))?;
        loop {
            let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            write_frame(w, &Frame::new(Kind::FileData, buf[..n].to_vec()))?;
            total += n as u64;
            progress.inc(n as u64);
        }
        write_frame(w, &Frame::new(Kind::FileEnd, Vec::new()))?;
    }
    Ok(total)
}

/// Receive files into `dir` until a RoundEnd; returns (round name, final, bytes).
pub fn receive_round(r: &mut impl Read, dir: &Path) -> Result<(String, bool, u64)> {
    let mut out: Option<std::fs::File> = None;
    let mut total = 0;
    let progress = crate::progress::Progress::new("receiving", None);
    // Each file's digest as it arrived, checked against the round's
    // inventory (sent last) when the round ends.
    let mut digests: std::collections::HashMap<std::path::PathBuf, u64> = Default::default();
    let mut current: Option<(std::path::PathBuf, crate::image::digest::Streaming)> = None;
    loop {
        let f = read_frame(r)?;
        match f.kind {
            Kind::File => {
                let rel = f.text();
                let rel_path = Path::new(&rel);
                if rel_path.components().any(|c| !matches!(c, Component::Normal(_))) {
                    bail!("refusing file name {rel:?} from the source");
                }
                let path = dir.join(rel_path);
                current = Some((path.clone(), Default::default()));
                if let Some(parent) = path.parent() {
                    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
                }
                out = Some(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("writing {}", path.display()))?,
                );
            }
            Kind::FileData => {
                out.as_mut().context("file data without a file")?.write_all(&f.payload)?;
                if let Some((_, d)) = current.as_mut() {
                    d.update(&f.payload);
                }
                total += f.payload.len() as u64;
                progress.inc(f.payload.len() as u64);
            }
            Kind::FileEnd => {
                out = None;
                if let Some((path, d)) = current.take() {
                    digests.insert(path, d.finish());
                }
            }
            Kind::RoundEnd => {
                let text = f.text();
                let (name, fin) = text.split_once(' ').unwrap_or((&text, ""));
                // The round's directory: where its inventory went.
                let round = digests.keys().find(|p| p.ends_with(INVENTORY)).and_then(|p| p.parent());
                if let Some(round) = round {
                    check_arrived(round, &digests)?;
                }
                return Ok((name.to_string(), fin == "final", total));
            }
            Kind::Status => bail!("the source gave up: {}", f.said()),
            k => bail!("protocol error: unexpected {k:?} while receiving images"),
        }
    }
}

/// Every file the round's inventory lists arrived whole: its digest as
/// received matches (so a restore may trust the pages it has not read).
fn check_arrived(round: &Path, digests: &std::collections::HashMap<std::path::PathBuf, u64>) -> Result<()> {
    let images = crate::image::ImageDir::open(round)?;
    for f in &images.inventory.files {
        let path = round.join(&f.name);
        let got = digests.get(&path).map(|d| crate::image::hash_hex(*d));
        if got.as_deref() != Some(f.xxh3.as_str()) {
            bail!(
                "{}: arrived damaged or not at all (xxh3 {}, the inventory says {})",
                path.display(),
                got.unwrap_or_else(|| "none".into()),
                f.xxh3
            );
        }
    }
    Ok(())
}

pub fn end_round(w: &mut impl Write, name: &str, last: bool) -> Result<()> {
    let text = if last { format!("{name} final") } else { name.to_string() };
    write_frame(w, &Frame::new(Kind::RoundEnd, text.into_bytes()))
}

pub fn status(w: &mut impl Write, text: &str) -> Result<()> {
    write_frame(w, &Frame::new(Kind::Status, text.as_bytes().to_vec()))
}
