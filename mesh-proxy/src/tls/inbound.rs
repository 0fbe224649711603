//! TLS termination on a listener with `tls`: the server certificate and the client verifier
//! are looked up in the [`SecretStore`] at each handshake (so rotation needs no listener
//! rebuild and leaves established connections alone); a client certificate is required and
//! must chain to the listener's bundle; ALPN offers the listener's list (h2, http/1.1) and
//! hyper's auto server then serves whichever protocol the client speaks.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::extensions::PeerIdentity;
use mesh_core::{DownstreamTls, MtlsMode};
use mesh_lb::tls::{provider, uri_sans, TlsSecrets};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::metrics::classify;
use super::SecretStore;

/// How long a client may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's TLS: the acceptor and the mode. Cheap to clone.
#[derive(Clone)]
pub struct InboundTls {
    acceptor: TlsAcceptor,
    mode: MtlsMode,
    store: Arc<SecretStore>,
    listener: Arc<str>,
}

impl std::fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundTls")
            .field("listener", &self.listener)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl InboundTls {
    /// The TLS of listener `listener` configured by `tls`, its secrets from `store`.
    pub fn new(
        listener: &str,
        tls: &DownstreamTls,
        store: Arc<SecretStore>,
    ) -> Result<Self, rustls::Error> {
        let provider = provider();
        let verifier = Arc::new(StoreClientVerifier {
            store: Arc::clone(&store),
            bundle: tls.validation.clone(),
            provider: Arc::clone(&provider),
        });
        let resolver = Arc::new(StoreServerCert {
            store: Arc::clone(&store),
            name: tls.certificate.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // No resumption: a resumed session skips the client-certificate check, so a peer
        // whose CA left the bundle (or whose identity changed) would go on connecting. Every
        // new connection gets a full handshake against the current bundle.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mode: tls.mode,
            store,
            listener: listener.into(),
        })
    }

    /// Whether plaintext connections are served too.
    pub fn permissive(&self) -> bool {
        self.mode == MtlsMode::Permissive
    }

    /// Counts a plaintext connection refused by a strict listener.
    pub(crate) fn refused_plaintext(&self) {
        self.store
            .count_error("inbound", &self.listener, "plaintext");
    }

    /// Completes the handshake on `io` (its ClientHello already replayed); on success, the
    /// stream and the client's identity (the URI SAN of its verified certificate).
    pub(crate) async fn accept<IO>(&self, io: IO) -> Option<(TlsStream<IO>, Option<PeerIdentity>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(io)).await;
        let error = match result {
            Ok(Ok(stream)) => {
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| uri_sans(leaf).into_iter().next())
                    .map(|san| PeerIdentity(san.into()));
                return Some((stream, identity));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "handshake timed out".to_owned(),
        };
        tracing::debug!(listener = %self.listener, %error, "TLS handshake failed");
        self.store
            .count_error("inbound", &self.listener, classify(&error));
        None
    }
}

/// The listener's certificate, looked up per handshake.
#[derive(Debug)]
struct StoreServerCert {
    store: Arc<SecretStore>,
    name: String,
}

impl ResolvesServerCert for StoreServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.certified_key(&self.name)
    }
}

/// The client verifier of the listener's current bundle (webpki's, built when the bundle was
/// loaded), looked up per handshake.
#[derive(Debug)]
struct StoreClientVerifier {
    store: Arc<SecretStore>,
    bundle: String,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for StoreClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional, and the bundle changes under us: send none.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.store.client_verifier(&self.bundle).ok_or_else(|| {
            rustls::Error::General(format!("no trust bundle {:?} yet", self.bundle))
        })?;
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
