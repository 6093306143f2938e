//! TLS with certificates on both sides (rustls): the connecting end checks
//! the listener's certificate against the CA and the name it dialed, the
//! listener requires a client certificate from the same CA. After the
//! handshake a pump thread carries the traffic between the TCP socket and
//! one end of a unix socket pair, so the rest of ferry keeps plain
//! blocking streams it can clone into a reader and a writer.

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, ClientConnection, Connection, DigitallySignedStruct, RootCertStore};
use rustls::{ServerConfig, ServerConnection, SignatureScheme};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the CA, our certificate and its key are, and whether the
/// listener's certificate must name the host we dialed.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub verify_name: bool,
}

/// Both configurations: every ferry endpoint dials or listens.
pub struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(…)")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {what} {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{what} {}: no certificate in it", path.display());
    }
    Ok(certs)
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Tls> {
        let mut roots = RootCertStore::empty();
        for c in certs(&files.ca, "TLS CA certificate")? {
            roots.add(c).with_context(|| format!("TLS CA certificate {}", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&files.cert, "TLS certificate")?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .with_context(|| format!("reading TLS private key {}", files.key.display()))?;

        let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let verifier: Arc<dyn ServerCertVerifier> = if files.verify_name { webpki } else { Arc::new(AnyName(webpki)) };
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .with_context(|| format!("TLS certificate {} and key {}", files.cert.display(), files.key.display()))?;
        let clients = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain, key)
            .with_context(|| format!("TLS certificate {} and key {}", files.cert.display(), files.key.display()))?;
        Ok(Tls { client: Arc::new(client), server: Arc::new(server) })
    }

    /// Handshake as the dialing side; `host` is what the certificate must name.
    pub fn client(&self, tcp: TcpStream, host: &str) -> Result<TlsStream> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| anyhow!("{host:?} is not a host name"))?;
        let conn = ClientConnection::new(self.client.clone(), name)?;
        handshake(Connection::Client(conn), tcp)
    }

    /// Handshake as the listening side.
    pub fn server(&self, tcp: TcpStream) -> Result<TlsStream> {
        let conn = ServerConnection::new(self.server.clone())?;
        handshake(Connection::Server(conn), tcp)
    }
}

/// `--tls-no-cn-verify`: the chain must still lead to our CA; the name in
/// the certificate is not checked against the host dialed.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Say what a TLS error means, with a hint where one helps.
fn describe(err: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match err {
        rustls::Error::InvalidMessage(_) => "the peer does not speak TLS (give both ends --tls)".into(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the peer's certificate is not signed by our CA (--tls-cacert)".into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("{err} (--tls-no-cn-verify skips the name check)"),
        rustls::Error::AlertReceived(
            a @ (A::BadCertificate | A::UnknownCA | A::CertificateRequired | A::UnsupportedCertificate),
        ) => format!("the peer refused our certificate ({a:?}): is it signed by the peer's CA?"),
        e => e.to_string(),
    }
}

fn explain(e: std::io::Error) -> anyhow::Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(err) => anyhow!("TLS handshake failed: {}", describe(err)),
        None if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => {
            anyhow!("TLS handshake failed: the peer hung up (does it use --tls, and accept our certificate?)")
        }
        None => anyhow!("TLS handshake failed: {e}"),
    }
}

/// Why the pump stopped, when it was not a plain end of stream.
type Fate = Arc<Mutex<Option<String>>>;

/// The application's end of a TLS connection: plaintext in and out. Once
/// the pump failed, reads and writes report why.
#[derive(Debug)]
pub struct TlsStream {
    app: UnixStream,
    fate: Fate,
    /// The connection the pump drives, while it does (the pump holds the
    /// only strong reference, so ending it still closes the socket).
    tcp: std::sync::Weak<TcpStream>,
}

impl TlsStream {
    pub fn try_clone(&self) -> std::io::Result<TlsStream> {
        Ok(TlsStream { app: self.app.try_clone()?, fate: self.fate.clone(), tcp: self.tcp.clone() })
    }

    /// Run `f` on the TCP connection under the pump; nothing once it ended.
    pub fn with_tcp(&self, f: impl FnOnce(&TcpStream) -> std::io::Result<()>) -> std::io::Result<()> {
        match self.tcp.upgrade() {
            Some(t) => f(&t),
            None => Ok(()),
        }
    }

    pub fn set_read_timeout(&self, t: Option<std::time::Duration>) -> std::io::Result<()> {
        self.app.set_read_timeout(t)
    }

    pub fn shutdown(&self) -> std::io::Result<()> {
        self.app.shutdown(std::net::Shutdown::Both)
    }

    fn failed(&self) -> Option<std::io::Error> {
        let why = self.fate.lock().unwrap().clone()?;
        Some(std::io::Error::new(ErrorKind::ConnectionAborted, format!("TLS: {why}")))
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.app.read(buf) {
            Ok(0) if !buf.is_empty() => self.failed().map_or(Ok(0), Err),
            Err(e) => Err(self.failed().unwrap_or(e)),
            r => r,
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.app.write(buf).map_err(|e| self.failed().unwrap_or(e))
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.app.write_vectored(bufs).map_err(|e| self.failed().unwrap_or(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn handshake(mut conn: Connection, mut tcp: TcpStream) -> Result<TlsStream> {
    let old = tcp.read_timeout()?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            // Let the peer know why (a pending alert), then fail.
            let _ = conn.write_tls(&mut tcp);
            return Err(explain(e));
        }
    }
    tcp.set_read_timeout(old)?;
    // The pump only reads from the application once the last chunk went out,
    // so what rustls buffers is bounded by one read anyway.
    conn.set_buffer_limit(None);
    let (app, ours) = UnixStream::pair()?;
    let fate = Fate::default();
    let f = fate.clone();
    let tcp = std::sync::Arc::new(tcp);
    let weak = std::sync::Arc::downgrade(&tcp);
    std::thread::Builder::new().name("ferry-tls".into()).spawn(move || {
        // The reason is set before our end closes, so a reader that sees
        // the end also sees why.
        if let Err(why) = pump(conn, tcp, &ours) {
            *f.lock().unwrap() = Some(why);
        }
        drop(ours);
    })?;
    Ok(TlsStream { app, fate, tcp: weak })
}

/// Move what rustls decrypted into `to_app`; `open` turns false at the
/// end of the peer's stream.
fn take_plaintext(conn: &mut Connection, to_app: &mut Vec<u8>, buf: &mut [u8], open: &mut bool) {
    while *open {
        match conn.reader().read(buf) {
            Ok(0) => *open = false,
            Ok(n) => to_app.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => *open = false,
        }
    }
}

/// Plaintext held for the application before we stop reading the network.
const BACKLOG: usize = 4 << 20;

/// Move bytes both ways until either side is done: network → decrypt → app,
/// app → encrypt → network. One thread, non-blocking, so a full buffer on
/// one side never stalls the other.
fn pump(mut conn: Connection, tcp: std::sync::Arc<TcpStream>, mut app: &UnixStream) -> Result<(), String> {
    let tcp = &*tcp;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let lost = |e: std::io::Error| format!("connection lost ({e})");
    tcp.set_nonblocking(true).map_err(lost)?;
    app.set_nonblocking(true).map_err(lost)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut to_app: Vec<u8> = Vec::new();
    let mut sent = 0;
    // net_open: the peer's plaintext stream goes on; tcp_eof: its socket
    // ended (rustls may still hold plaintext from before).
    let (mut net_open, mut app_open, mut tcp_eof) = (true, true, false);
    loop {
        // Decrypted bytes, towards the application.
        take_plaintext(&mut conn, &mut to_app, &mut buf, &mut net_open);
        while sent < to_app.len() {
            match app.write(&to_app[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Ok(()), // the application is gone
            }
        }
        if sent == to_app.len() {
            to_app.clear();
            sent = 0;
        }
        // Encrypted bytes, towards the peer.
        while conn.wants_write() {
            match conn.write_tls(&mut &*tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(lost(e)),
            }
        }
        if !net_open && to_app.is_empty() {
            return Ok(()); // dropping our end tells the application
        }
        if !app_open && !conn.wants_write() {
            let _ = tcp.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        let mut net_ev = PollFlags::empty();
        if !tcp_eof && to_app.len() < BACKLOG {
            net_ev |= PollFlags::POLLIN;
        }
        if conn.wants_write() {
            net_ev |= PollFlags::POLLOUT;
        }
        let mut app_ev = PollFlags::empty();
        if app_open && !conn.wants_write() {
            app_ev |= PollFlags::POLLIN;
        }
        if !to_app.is_empty() {
            app_ev |= PollFlags::POLLOUT;
        }
        let mut fds = [PollFd::new(tcp.as_fd(), net_ev), PollFd::new(app.as_fd(), app_ev)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready = |f: &PollFd| f.revents().unwrap_or(PollFlags::empty());
        let (net_r, app_r) = (ready(&fds[0]), ready(&fds[1]));
        let wake = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if net_r.intersects(wake) {
            // Read what is there (several records), decrypting as we go.
            while to_app.len() < BACKLOG {
                match conn.read_tls(&mut &*tcp) {
                    Ok(0) => {
                        tcp_eof = true;
                        break;
                    }
                    Ok(_) => {
                        if let Err(e) = conn.process_new_packets() {
                            let _ = conn.write_tls(&mut &*tcp);
                            return Err(describe(&e));
                        }
                        // rustls holds little plaintext: take it before reading on.
                        take_plaintext(&mut conn, &mut to_app, &mut buf, &mut net_open);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(lost(e)),
                }
            }
        }
        if app_r.intersects(wake) && app_open {
            match app.read(&mut buf) {
                Ok(0) => {
                    app_open = false;
                    conn.send_close_notify();
                }
                Ok(n) => conn.writer().write_all(&buf[..n]).map_err(lost)?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    app_open = false;
                    conn.send_close_notify();
                }
            }
        }
    }
}
