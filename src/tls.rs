//! TLS for TURN over TLS (RFC 8656 section 3.1, port 5349 by default): the server's rustls
//! configuration, built once from the certificate chain and private key PEM files named in the
//! config, and shared by every worker's connections ([`crate::stream_conn::StreamConn`] holds one
//! `rustls::ServerConnection` each).
//!
//! TLS 1.2 and 1.3 are offered, with rustls's default cipher suites over *ring*. No client
//! certificates: TURN authenticates clients with its own long-term credentials.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built. Each message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {source}")]
    Certificates {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("cannot read a private key from {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate and key are not usable together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server configuration from PEM files: `cert` holds the chain, leaf first; `key` a PKCS#8,
/// PKCS#1 or SEC1 private key.
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            path: shown(cert),
            source,
        })?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: shown(key),
        source,
    })?;
    build(chain, key_der, &shown(cert))
}

/// The same from PEM text in memory.
pub fn server_config_from_pem(
    cert: &[u8],
    key: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificates {
            path: "(memory)".into(),
            source,
        })?;
    let key_der = PrivateKeyDer::from_pem_slice(key).map_err(|source| TlsError::Key {
        path: "(memory)".into(),
        source,
    })?;
    build(chain, key_der, "(memory)")
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    path: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_certificate_and_key_from_pem_files() {
        let ck = rcgen::generate_simple_self_signed(vec!["turn.test".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("uturn-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let cfg = server_config_from_files(&cert, &key);
        assert!(cfg.is_ok(), "{:?}", cfg.err());

        // The key file in place of the certificate, and the other way round.
        let e = server_config_from_files(&key, &key).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = server_config_from_files(&cert, &cert).unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        let e = server_config_from_files(&dir.join("missing.pem"), &key).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        // A key that does not belong to the certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        let e = server_config_from_pem(ck.cert.pem().as_bytes(), other.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(matches!(e, TlsError::Rustls(_)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
