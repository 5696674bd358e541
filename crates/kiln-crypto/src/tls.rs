//! TLS configuration, so that no other crate picks a provider, a protocol
//! version or a cipher suite: rustls with `ring`, TLS 1.2 and 1.3 only,
//! rustls's default (AEAD, forward-secret) suites.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::envelope::CryptoError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static VERSIONS: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    &VERSIONS
}

fn err(what: &str, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Provider(format!("{what}: {e}"))
}

/// A certificate chain and private key, PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("cert_pem", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

/// The system's trusted roots as PEM: the file `SSL_CERT_FILE` names, else
/// Debian's or Red Hat's bundle; `None` when there is none.
pub fn system_roots() -> Option<String> {
    let named = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    named
        .into_iter()
        .chain(["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"].map(Into::into))
        .find_map(|path| std::fs::read_to_string(path).ok())
}

/// A self-signed certificate for `hosts` (DNS names or IP addresses), for
/// development and tests; production deployments bring their own.
pub fn self_signed(hosts: &[&str]) -> Result<Identity, CryptoError> {
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| err("cannot make a certificate", e))?;
    Ok(Identity {
        cert_pem: certified.cert.pem(),
        key_pem: zeroize::Zeroizing::new(certified.signing_key.serialize_pem()),
    })
}

/// A server configuration for `identity`, offering HTTP/1.1.
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, CryptoError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| err("the certificate is not PEM", e))?;
    if certs.is_empty() {
        return Err(CryptoError::Provider("the certificate file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| err("the private key is not PEM", e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions())
        .map_err(|e| err("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err("the certificate and key do not make a server identity", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts exactly `roots_pem` (a test's own
/// certificate, a configured CA bundle).
pub fn client_config(roots_pem: &str) -> Result<Arc<rustls::ClientConfig>, CryptoError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| err("a root certificate is not PEM", e))?)
            .map_err(|e| err("a root certificate", e))?;
    }
    if roots.is_empty() {
        return Err(CryptoError::Provider("no root certificates given".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions())
        .map_err(|e| err("TLS versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, CryptoError> {
    ServerName::try_from(host.to_owned()).map_err(|e| err("not a server name", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_identity_makes_server_and_client_configs() {
        let id = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        assert!(id.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        server_config(&id).unwrap();
        client_config(&id.cert_pem).unwrap();
        assert!(server_config(&Identity { cert_pem: String::new(), key_pem: id.key_pem.clone() }).is_err());
        assert!(client_config("").is_err());
        server_name("127.0.0.1").unwrap();
    }
}
