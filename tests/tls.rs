//! TLS links over loopback: certificates checked on both sides, large
//! transfers both ways at once through the pump, and a clear refusal for
//! every kind of mismatch.

mod common;

use common::pki::{Identity, Pki};
use ferry::net::auth::Key;
use ferry::net::tls::{Tls, TlsFiles};
use ferry::net::{Credentials, Link};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

fn tls(id: &Identity, verify_name: bool) -> Arc<Tls> {
    let files = TlsFiles { ca: id.ca.clone(), cert: id.cert.clone(), key: id.key.clone(), verify_name };
    Arc::new(Tls::load(&files).unwrap())
}

fn with_tls(id: &Identity) -> Credentials {
    Credentials::new(None, Some(tls(id, true))).unwrap()
}

fn key_only() -> Credentials {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, "a key that is long enough").unwrap();
    Credentials::key(Key::load(&p).unwrap())
}

/// Connect `client` to a listener using `server`, dialing `host`.
fn link(server: Credentials, client: Credentials, host: &str) -> (anyhow::Result<Link>, anyhow::Result<Link>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s = std::thread::spawn(move || Link::accept(l.accept().unwrap().0, &server));
    let c = Link::connect(&format!("{host}:{port}"), &client, Duration::from_secs(2));
    let s = s.join().unwrap();
    (s, c)
}

fn err(r: anyhow::Result<Link>) -> String {
    format!("{:#}", r.expect_err("the link should have been refused"))
}

/// Deterministic bytes, different per stream.
fn pattern(seed: u64, buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = (offset + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
        *b = (x >> 29) as u8;
    }
}

/// Send `total` bytes of pattern `seed` while checking what comes back.
fn exchange(link: Link, seed_out: u64, seed_in: u64, total: u64) {
    let mut w = link.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 100_003];
        let mut off = 0;
        while off < total {
            let n = buf.len().min((total - off) as usize);
            pattern(seed_out, &mut buf[..n], off);
            w.write_all(&buf[..n]).unwrap();
            off += n as u64;
        }
    });
    let mut r = link;
    let mut buf = vec![0u8; 77_777];
    let mut want = vec![0u8; buf.len()];
    let mut off = 0;
    while off < total {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended at {off} of {total}");
        pattern(seed_in, &mut want[..n], off);
        assert!(buf[..n] == want[..n], "corrupt bytes at {off}");
        off += n as u64;
    }
    writer.join().unwrap();
}

#[test]
fn tls_carries_large_transfers_both_ways_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let (s, c) =
        link(with_tls(&pki.issue("dst", &["127.0.0.1"])), with_tls(&pki.issue("src", &["src.test"])), "127.0.0.1");
    let (s, c) = (s.unwrap(), c.unwrap());
    assert!(s.peer().contains("TLS"));
    const TOTAL: u64 = 96 << 20;
    let t = std::thread::spawn(move || exchange(s, 1, 2, TOTAL));
    exchange(c, 2, 1, TOTAL);
    t.join().unwrap();
}

#[test]
fn tls_with_a_shared_key_too() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let k = dir.path().join("k");
    std::fs::write(&k, "a key that is long enough").unwrap();
    let both = |id: &Identity| Credentials::new(Some(Key::load(&k).unwrap()), Some(tls(id, true))).unwrap();
    let (s, c) = link(both(&pki.issue("dst", &["localhost"])), both(&pki.issue("src", &[])), "localhost");
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    c.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // Certificates match but one end lacks the key: refused, and said why.
    let (s, c) = link(both(&pki.issue("dst", &["localhost"])), with_tls(&pki.issue("src", &[])), "localhost");
    assert!(err(c).contains("needs the shared key"));
    assert!(s.is_err());
}

#[test]
fn a_certificate_from_another_ca_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let good = Pki::new(dir.path(), "good");
    let evil = Pki::new(dir.path(), "evil");
    // Each impostor trusts the good CA, but its own certificate is not from it.
    let impostor = |who: &str, sans: &[&str]| Identity { ca: good.ca(), ..evil.issue(who, sans) };
    let (s, c) = link(with_tls(&good.issue("dst", &["127.0.0.1"])), with_tls(&impostor("src", &[])), "127.0.0.1");
    let (s, c) = (err(s), err(c));
    assert!(s.contains("not signed by our CA"), "{s}");
    assert!(c.contains("refused our certificate"), "{c}");
    let (s, c) = link(with_tls(&impostor("dst", &["127.0.0.1"])), with_tls(&good.issue("src", &[])), "127.0.0.1");
    let (s, c) = (err(s), err(c));
    assert!(c.contains("not signed by our CA"), "{c}");
    assert!(s.contains("refused our certificate"), "{s}");
}

#[test]
fn the_server_certificate_must_name_the_host_dialed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let dst = pki.issue("dst", &["dst.test"]);
    let src = pki.issue("src", &[]);
    let (s, c) = link(with_tls(&dst), with_tls(&src), "127.0.0.1");
    assert!(err(c).contains("--tls-no-cn-verify"));
    assert!(s.is_err());
    let lax = Credentials::new(None, Some(tls(&src, false))).unwrap();
    let (s, c) = link(with_tls(&dst), lax, "127.0.0.1");
    assert!(s.is_ok() && c.is_ok());
}

#[test]
fn tls_and_plain_ends_tell_each_other_to_use_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let (s, c) = link(with_tls(&pki.issue("dst", &["127.0.0.1"])), key_only(), "127.0.0.1");
    assert!(err(s).contains("does not speak TLS"));
    assert!(err(c).contains("speaks TLS"));
    let (s, c) = link(key_only(), with_tls(&pki.issue("src", &[])), "127.0.0.1");
    assert!(err(s).contains("speaks TLS: give this end --tls"));
    assert!(err(c).contains("TLS handshake failed"));
}

#[test]
fn credentials_need_a_key_or_tls() {
    let e = Credentials::new(None, None).unwrap_err().to_string();
    assert!(e.contains("--auth-key") && e.contains("--tls"), "{e}");
}
