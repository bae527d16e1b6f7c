//! TLS towards clients (the `[tls]` section, and the rustls server
//! configuration built from its certificate and key) and towards servers
//! (`sslmode` and `sslrootcert`, per server or as `[tls]` defaults, in
//! libpq's spelling and meaning).
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
    /// TLS towards servers, for those that do not set `sslmode`
    /// themselves. Default `"disable"`.
    pub server_sslmode: Option<SslMode>,
    /// CA certificates (PEM) a server's certificate must chain to, for
    /// servers that do not set `sslrootcert` themselves.
    pub server_sslrootcert: Option<PathBuf>,
}

/// TLS towards a server, as libpq's `sslmode` (`allow` is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// TLS if the server offers it, plain text if not; no certificate check.
    Prefer,
    /// TLS or no connection; the certificate is checked against
    /// `sslrootcert` when one is given (as libpq does), else not at all.
    Require,
    /// TLS, and the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the server's host.
    VerifyFull,
}

/// How the proxy reaches one server over TLS.
#[derive(Debug)]
pub struct ServerTls {
    pub mode: SslMode,
    pub config: Arc<rustls::ClientConfig>,
}

impl ServerTls {
    /// For a server with `mode` and `rootcert`; `None` for `disable`.
    /// Errors name `rootcert_key`, the key that says (or should say) where
    /// the root certificates are.
    pub fn new(
        mode: SslMode,
        rootcert: Option<&Path>,
        rootcert_key: &str,
    ) -> Result<Option<Arc<ServerTls>>, (String, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match rootcert {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = read_certs(path).map_err(|e| (rootcert_key.to_string(), e))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        (
                            rootcert_key.to_string(),
                            format!("bad CA certificate in {}: {e}", path.display()),
                        )
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match (mode, roots) {
            (SslMode::Disable, _) => return Ok(None),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err((
                    rootcert_key.to_string(),
                    "is required with sslmode \"verify-ca\" or \"verify-full\"".to_string(),
                ))
            }
            (SslMode::Prefer, _) | (SslMode::Require, None) => {
                Arc::new(verify::Nothing(provider.clone()))
            }
            (SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, Some(roots)) => {
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()
                .map_err(|e| (rootcert_key.to_string(), e.to_string()))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(verify::AnyName(webpki))
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ("tls".to_string(), e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(Arc::new(ServerTls {
            mode,
            config: Arc::new(config),
        })))
    }
}

impl ServerTls {
    /// TLS that no server can pass (no trusted root): what a server whose
    /// TLS settings cannot be loaded gets, so it is never reached in plain
    /// text by mistake.
    pub fn unusable() -> Option<Arc<ServerTls>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .ok()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Some(Arc::new(ServerTls {
            mode: SslMode::VerifyFull,
            config: Arc::new(config),
        }))
    }
}

/// Certificate checks weaker than verify-full, for the sslmodes that ask
/// for them.
mod verify {
    use std::sync::Arc;

    use tokio_rustls::rustls;
    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::crypto::CryptoProvider;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    /// `prefer`, or `require` without a root certificate: any certificate
    /// (the handshake's signatures are still checked).
    #[derive(Debug)]
    pub struct Nothing(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for Nothing {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain must reach a root, whatever name the
    /// certificate gives.
    #[derive(Debug)]
    pub struct AnyName(pub Arc<dyn ServerCertVerifier>);

    impl ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}

impl TlsSection {
    /// The channel binding data of the certificate shown to clients (see
    /// [`end_point_hash`]), when there is one.
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        let certs = read_certs(self.cert_file.as_ref()?).ok()?;
        certs.first().map(|leaf| end_point_hash(leaf))
    }

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

/// The `tls-server-end-point` channel binding of a certificate (RFC 5929,
/// what SCRAM-SHA-256-PLUS binds to): its hash by the hash function of its
/// signature algorithm, SHA-256 for MD5 and SHA-1 (and anything else, as
/// the common case).
pub fn end_point_hash(cert_der: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    // ecdsa-with-SHA384, sha384WithRSAEncryption; then the SHA-512 pair.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    ];
    match signature_algorithm(cert_der) {
        Some(oid) if SHA384.contains(&oid) => sha2::Sha384::digest(cert_der).to_vec(),
        Some(oid) if SHA512.contains(&oid) => sha2::Sha512::digest(cert_der).to_vec(),
        _ => sha2::Sha256::digest(cert_der).to_vec(),
    }
}

/// The OID of a DER certificate's `signatureAlgorithm`: Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, ... }.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    /// One DER element: (tag, contents, what follows it).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, certificate, _) = element(der)? else {
        return None;
    };
    let (0x30, _, after_tbs) = element(certificate)? else {
        return None;
    };
    let (0x30, algorithm, _) = element(after_tbs)? else {
        return None;
    };
    match element(algorithm)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
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
            ..TlsSection::default()
        };
        assert_eq!(missing.mode(), ClientMode::Prefer);
        assert_eq!(
            missing.server_config().err().map(|e| e.0),
            Some("tls.cert_file".into())
        );
    }

    #[test]
    fn server_modes_need_what_they_check_against() {
        assert!(matches!(
            ServerTls::new(SslMode::Disable, None, "primary.sslrootcert"),
            Ok(None)
        ));
        for mode in [SslMode::Prefer, SslMode::Require] {
            let tls = ServerTls::new(mode, None, "primary.sslrootcert");
            assert!(matches!(tls, Ok(Some(_))), "{mode:?}");
        }
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(
                ServerTls::new(mode, None, "replicas[1].sslrootcert")
                    .err()
                    .map(|e| e.0),
                Some("replicas[1].sslrootcert".into())
            );
        }
        assert_eq!(
            ServerTls::new(
                SslMode::VerifyFull,
                Some(Path::new("/nonexistent/ca.pem")),
                "primary.sslrootcert"
            )
            .err()
            .map(|e| e.0),
            Some("primary.sslrootcert".into())
        );
    }

    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        // rcgen signs with ECDSA P-256 and SHA-256 by default.
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().to_vec();
        assert_eq!(
            signature_algorithm(&der),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..])
        );
        use sha2::Digest;
        assert_eq!(end_point_hash(&der), sha2::Sha256::digest(&der).to_vec());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().to_vec();
        assert_eq!(end_point_hash(&der), sha2::Sha384::digest(&der).to_vec());
        // Not a certificate: no panic, SHA-256 of whatever it is.
        assert_eq!(
            end_point_hash(b"\x30\x82\xff"),
            sha2::Sha256::digest(b"\x30\x82\xff").to_vec()
        );
    }
}
