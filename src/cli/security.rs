//! The flags every network command shares: how the two ends prove who they
//! are (a shared key, TLS certificates, or both). CRIU's `--tls*` names.

use crate::net::auth::Key;
use crate::net::tls::{Tls, TlsFiles};
use crate::net::Credentials;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where both ends look for the shared key when none is given.
pub const DEFAULT_KEY: &str = "/etc/ferry/auth.key";

#[derive(Args, Debug, Clone)]
pub struct SecurityArgs {
    /// Shared key file, the same on both ends (at least 16 bytes). Default
    /// /etc/ferry/auth.key; a lazy dump writes a fresh lazy-pages.key next
    /// to its images, which lazy-pages reads from there
    #[arg(long = "auth-key", value_name = "FILE")]
    pub auth_key: Option<PathBuf>,
    /// Use TLS: traffic is encrypted and both ends show a certificate
    /// signed by the CA (with --tls, the shared key is optional)
    #[arg(long)]
    pub tls: bool,
    /// CA certificate(s) that sign the peers' certificates (PEM)
    #[arg(long = "tls-cacert", value_name = "FILE", default_value = "/etc/ferry/tls/ca.pem")]
    pub tls_cacert: PathBuf,
    /// This end's certificate chain (PEM); it must name the host the peer
    /// dials (DNS or IP subject alternative name)
    #[arg(long = "tls-cert", value_name = "FILE", default_value = "/etc/ferry/tls/cert.pem")]
    pub tls_cert: PathBuf,
    /// This end's private key (PEM)
    #[arg(long = "tls-key", value_name = "FILE", default_value = "/etc/ferry/tls/key.pem")]
    pub tls_key: PathBuf,
    /// Accept a listener's certificate whatever host name it carries (the
    /// CA signature is still checked)
    #[arg(long = "tls-no-cn-verify")]
    pub tls_no_cn_verify: bool,
}

/// Where a command looks for the key when --auth-key is not given.
pub enum KeyDefault<'a> {
    /// /etc/ferry/auth.key
    System,
    /// The key a lazy dump wrote next to these images.
    Images(&'a Path),
}

impl SecurityArgs {
    pub fn tls(&self) -> Result<Option<Arc<Tls>>> {
        if !self.tls {
            return Ok(None);
        }
        let files = TlsFiles {
            ca: self.tls_cacert.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            verify_name: !self.tls_no_cn_verify,
        };
        Ok(Some(Arc::new(Tls::load(&files)?)))
    }

    /// The key and certificates to use; without --tls a key must be found.
    pub fn credentials(&self, default: KeyDefault) -> Result<Credentials> {
        let tls = self.tls()?;
        let fallback = match default {
            KeyDefault::System => PathBuf::from(DEFAULT_KEY),
            KeyDefault::Images(dir) => dir.join(crate::lazy::KEY_FILE),
        };
        let key = match &self.auth_key {
            Some(p) => Some(Key::load(p)?),
            None if fallback.exists() => Some(Key::load(&fallback)?),
            None if tls.is_some() => None,
            None => bail!(
                "no shared key: give --auth-key FILE (the same file on both machines, at least 16 bytes, \
                 e.g. `head -c 32 /dev/urandom | xxd -p > key`), create {}, or use --tls",
                fallback.display()
            ),
        };
        Credentials::new(key, tls)
    }
}
