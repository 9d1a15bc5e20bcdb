//! TLS for the tests: self-signed certificates and clients that trust them.

use std::sync::Arc;

use rcgen::generate_simple_self_signed;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tower_bouncer::tls::{
    ServerCertificate,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::ring,
        pki_types::{CertificateDer, ServerName},
    },
};

use super::{PATIENCE, within};

/// A self-signed certificate for `localhost`, as PEM, and its DER for clients to trust.
pub struct Generated {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn generate() -> Generated {
    let generated = generate_simple_self_signed(["localhost".to_owned()]).unwrap();
    Generated {
        chain_pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
        der: generated.cert.der().clone(),
    }
}

impl Generated {
    pub fn certificate(&self) -> ServerCertificate {
        ServerCertificate::from_pem(self.chain_pem.as_bytes(), self.key_pem.as_bytes()).unwrap()
    }
}

/// A client that trusts `trusted` and offers `alpn`.
pub fn client_config(trusted: &[&Generated], alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for generated in trusted {
        roots.add(generated.der.clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect<IO>(io: IO, config: Arc<ClientConfig>) -> TlsStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = ServerName::try_from("localhost").unwrap();
    within(PATIENCE, TlsConnector::from(config).connect(name, io))
        .await
        .unwrap()
}

/// The certificate the server presented.
pub fn presented<IO>(stream: &TlsStream<IO>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}
