//! TLS towards clients: the `[tls]` section, and the rustls server
//! configuration built from its certificate and key.
//!
//! A client that sends SSLRequest gets `S` and a TLS 1.2+ handshake when a
//! certificate is configured (`client_mode` other than `"disable"`), and `N`
//! otherwise, as Postgres does without `ssl = on`. `client_mode = "require"`
//! refuses a plaintext login with Postgres's own FATAL 28000 (what a server
//! whose pg_hba.conf has only `hostssl` lines answers). The certificate and
//! key are read when the configuration is loaded, so `RELOAD`/SIGHUP picks
//! up renewed files; sessions already connected keep their TLS session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the proxy does with a client's TLS, in libpq's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// SSLRequest is answered `N`.
    Disable,
    /// TLS when the client asks for it; plaintext otherwise.
    Allow,
    /// The same as `allow` on the server side: the client chooses.
    Prefer,
    /// Plaintext logins are refused (FATAL 28000).
    Require,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain presented to clients.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: Option<PathBuf>,
    /// Default: `"prefer"` when a certificate is given, else `"disable"`.
    pub client_mode: Option<ClientMode>,
}

impl TlsSection {
    pub fn mode(&self) -> ClientMode {
        match (self.client_mode, &self.cert_file) {
            (Some(mode), _) => mode,
            (None, Some(_)) => ClientMode::Prefer,
            (None, None) => ClientMode::Disable,
        }
    }

    /// The rustls configuration for clients, `None` when TLS is off. The
    /// error names the key at fault.
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, (String, String)> {
        if self.mode() == ClientMode::Disable {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            let key = if self.cert_file.is_none() {
                "tls.cert_file"
            } else {
                "tls.key_file"
            };
            return Err((
                key.to_string(),
                "is required when tls.client_mode is not \"disable\"".to_string(),
            ));
        };
        let certs = read_certs(cert_file).map_err(|e| ("tls.cert_file".to_string(), e))?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
            (
                "tls.key_file".to_string(),
                format!("no private key read from {}: {e}", key_file.display()),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ("tls".to_string(), e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                (
                    "tls.key_file".to_string(),
                    format!("does not match the certificate: {e}"),
                )
            })?;
        Ok(Some(Arc::new(config)))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_missing_files_name_their_key() {
        let off = TlsSection::default();
        assert_eq!(off.mode(), ClientMode::Disable);
        assert!(matches!(off.server_config(), Ok(None)));
        let no_cert = TlsSection {
            client_mode: Some(ClientMode::Require),
            ..TlsSection::default()
        };
        assert_eq!(
            no_cert.server_config().err().map(|e| e.0),
            Some("tls.cert_file".into())
        );
        let missing = TlsSection {
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: Some("/nonexistent/key.pem".into()),
            client_mode: None,
        };
        assert_eq!(missing.mode(), ClientMode::Prefer);
        assert_eq!(
            missing.server_config().err().map(|e| e.0),
            Some("tls.cert_file".into())
        );
    }
}
