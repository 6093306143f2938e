//! Peer authentication before any page moves: both ends prove they hold
//! the same key (HMAC-SHA256 over fresh nonces from each side), so neither
//! a stranger nor a replayed session gets or gives a byte of memory. Over
//! TLS with client certificates the key may be left out; both ends must
//! agree on that, and say so clearly when they do not.

use crate::net::wire::{read_frame_limited, write_frame, Frame, Kind, SMALL};
use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{Read, Write};
use std::path::Path;

// Version 2: a Get may ask for several pieces at once.
const PROTOCOL: &[u8] = b"ferry-pages/3";

/// A shared secret.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// Read a key file: its bytes (surrounding whitespace dropped), at least 16.
    pub fn load(path: &Path) -> Result<Key> {
        let raw = std::fs::read(path).with_context(|| format!("reading auth key {}", path.display()))?;
        let text = String::from_utf8_lossy(&raw);
        let bytes = text.trim().as_bytes().to_vec();
        if bytes.len() < 16 {
            bail!("auth key {} is too short ({} bytes, at least 16)", path.display(), bytes.len());
        }
        Ok(Key(bytes))
    }

    /// Make a fresh random key and store it (mode 0600).
    pub fn generate(path: &Path) -> Result<Key> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing auth key {}", path.display()))?;
        writeln!(f, "{hex}")?;
        Ok(Key(hex.into_bytes()))
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(PROTOCOL);
        m.update(label);
        m.update(a);
        m.update(b);
        m
    }
}

fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(n)
}

fn expect(f: Frame, kind: Kind) -> Result<Frame> {
    match f.kind {
        k if k == kind => Ok(f),
        Kind::Denied => bail!("the peer refused us: {}", f.said()),
        k => bail!("protocol error: expected {kind:?}, got {k:?}"),
    }
}

/// The Hello payload: protocol name, then whether the client brings a key.
fn hello(with_key: bool) -> Vec<u8> {
    let mut p = PROTOCOL.to_vec();
    p.push(with_key as u8);
    p
}

fn deny(s: &mut impl Write, why: &str) -> Result<()> {
    let _ = write_frame(s, &Frame::new(Kind::Denied, why.as_bytes().to_vec()));
    bail!("{why}")
}

/// Server side: returns once the client proved the key (and got our proof).
/// `None`: TLS client certificates already authenticated the peer.
pub fn accept(s: &mut (impl Read + Write), key: Option<&Key>) -> Result<()> {
    let h = expect(read_frame_limited(s, SMALL)?, Kind::Hello)?;
    let with_key = match h.payload.strip_prefix(PROTOCOL) {
        Some([k]) => *k == 1,
        _ => bail!("not a ferry peer (protocol {:?})", h.text()),
    };
    let key = match (key, with_key) {
        (Some(k), true) => k,
        (None, false) => return write_frame(s, &Frame::new(Kind::Proof, Vec::new())),
        (Some(_), false) => return deny(s, "authentication failed: this endpoint needs the shared key (--auth-key)"),
        (None, true) => {
            return deny(s, "authentication failed: this endpoint has no shared key (it uses TLS certificates only)")
        }
    };
    let ns = nonce()?;
    write_frame(s, &Frame::new(Kind::Challenge, ns.to_vec()))?;
    let r = expect(read_frame_limited(s, SMALL)?, Kind::Response)?;
    if r.payload.len() != 64 {
        bail!("malformed authentication response");
    }
    let (nc, mac) = r.payload.split_at(32);
    if key.mac(b"client", &ns, nc).verify_slice(mac).is_err() {
        let _ = write_frame(s, &Frame::new(Kind::Denied, b"authentication failed: wrong key".to_vec()));
        bail!("authentication failed: the peer does not have our key");
    }
    let proof = key.mac(b"server", nc, &ns).finalize().into_bytes();
    write_frame(s, &Frame::new(Kind::Proof, proof.to_vec()))?;
    Ok(())
}

/// Client side: returns once the server proved the key (or, without a
/// key, accepted us on our TLS certificate).
pub fn connect(s: &mut (impl Read + Write), key: Option<&Key>) -> Result<()> {
    write_frame(s, &Frame::new(Kind::Hello, hello(key.is_some())))?;
    let Some(key) = key else {
        expect(read_frame_limited(s, SMALL)?, Kind::Proof)?;
        return Ok(());
    };
    let ch = expect(read_frame_limited(s, SMALL)?, Kind::Challenge)?;
    if ch.payload.len() != 32 {
        bail!("malformed authentication challenge");
    }
    let nc = nonce()?;
    let mac = key.mac(b"client", &ch.payload, &nc).finalize().into_bytes();
    let mut payload = nc.to_vec();
    payload.extend_from_slice(&mac);
    write_frame(s, &Frame::new(Kind::Response, payload))?;
    let proof = expect(read_frame_limited(s, SMALL)?, Kind::Proof)?;
    if key.mac(b"server", &nc, &ch.payload).verify_slice(&proof.payload).is_err() {
        bail!("authentication failed: the server does not have our key");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn key(s: &str) -> Key {
        Key(s.as_bytes().to_vec())
    }

    fn run(ks: Option<&str>, kc: Option<&str>) -> (Result<()>, Result<()>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let ks = ks.map(key);
        let kc = kc.map(key);
        let server = std::thread::spawn(move || accept(&mut a, ks.as_ref()));
        let client = connect(&mut b, kc.as_ref());
        (server.join().unwrap(), client)
    }

    #[test]
    fn same_key_passes_other_key_is_refused_both_ways() {
        let (s, c) = run(Some("0123456789abcdef-a"), Some("0123456789abcdef-a"));
        assert!(s.is_ok() && c.is_ok(), "{s:?} {c:?}");
        let (s, c) = run(Some("0123456789abcdef-a"), Some("0123456789abcdef-b"));
        assert!(s.unwrap_err().to_string().contains("does not have our key"));
        assert!(c.unwrap_err().to_string().contains("wrong key"));
    }

    #[test]
    fn key_presence_must_match() {
        let (s, c) = run(None, None);
        assert!(s.is_ok() && c.is_ok(), "{s:?} {c:?}");
        let (s, c) = run(Some("0123456789abcdef-a"), None);
        assert!(s.is_err());
        assert!(c.unwrap_err().to_string().contains("needs the shared key"));
        let (s, c) = run(None, Some("0123456789abcdef-a"));
        assert!(s.is_err());
        assert!(c.unwrap_err().to_string().contains("has no shared key"));
    }
}
