//! `ferry page-server` and `dump --page-server`: a dump's images sent over
//! an authenticated connection into the server's directory instead of
//! local files. The dumping side keeps only the small metadata files (the
//! next round's `--prev-images-dir` needs them), never the page data.

use crate::image::show::human_bytes;
use crate::migrate::{end_round, receive_round, send_image, status};
use crate::net::wire::{read_frame, Kind};
use crate::net::{dial, Credentials, Link};
use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

const UPLOAD: &str = "upload";
const STORED: &str = "stored";

/// Receive one image into `dir`, then return. Strangers are refused (and
/// logged); the listener keeps waiting for the right peer.
/// `ready` is told once the server listens.
pub fn receive(listen: &str, dir: &Path, creds: &Credentials, ready: impl FnOnce() -> Result<()>) -> Result<u64> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    info!("page server listening on {listen}");
    ready()?;
    let peers = crate::net::admit(listener, "page server", creds);
    while let Some(crate::net::Admitted { link: mut s, peer, hello }) = peers.next() {
        if hello != UPLOAD {
            warn!("peer {peer} asked for {hello:?}, not an upload");
            continue;
        }
        // The dumper connects before it freezes its task and sends once the
        // dump is written: allow for a big dump in between.
        s.set_read_timeout(Some(Duration::from_secs(3600)))?;
        // A dumper that fails (or is killed) after connecting sends nothing
        // usable: keep waiting for the next one.
        let bytes = match receive_round(&mut s, dir) {
            Ok((_, _, bytes)) => bytes,
            Err(e) => {
                warn!("no image from {peer}: {e:#}; waiting for another dump");
                continue;
            }
        };
        crate::image::ImageDir::open(dir).context("the received image does not check out")?;
        status(&mut s, STORED)?;
        info!("stored {} from {peer} in {}", human_bytes(bytes), dir.display());
        return Ok(bytes);
    }
    bail!("stopped listening")
}

/// Reach and authenticate with the page server at `to`: done before the
/// task is touched, so that an absent or wrong server costs nothing.
pub fn connect(to: &str, creds: &Credentials) -> Result<Link> {
    // The page server may still be starting: retry for a few seconds.
    let start = std::time::Instant::now();
    let tcp = loop {
        match dial(to, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e).context("reaching the page server"),
        }
    };
    let mut s = Link::client(tcp, to, creds)?;
    status(&mut s, UPLOAD)?;
    Ok(s)
}

/// Send the image in `dir` over `s` (from [`connect`]), then drop its page
/// data here.
pub fn send(mut s: Link, dir: &Path) -> Result<u64> {
    let bytes = send_image(&mut s, dir, "")?;
    end_round(&mut s, "image", true)?;
    let reply = read_frame(&mut s).context("waiting for the page server")?;
    if reply.kind != Kind::Status || reply.text() != STORED {
        bail!("the page server did not store the image: {}", reply.said());
    }
    let inv = crate::image::ImageDir::open(dir)?;
    for f in inv.inventory.files.iter().filter(|f| f.name.ends_with(".img") && f.name.starts_with("pages-")) {
        std::fs::remove_file(dir.join(&f.name)).with_context(|| format!("removing {}", f.name))?;
    }
    Ok(bytes)
}
