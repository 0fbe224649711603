//! mTLS to a cluster's endpoints (`Cluster::tls`): the client certificate and the trust bundle
//! come from a [`TlsSecrets`] source (the sidecar's secret store, fed by SDS or the static
//! config) at every handshake, so a rotated certificate or bundle applies to the next new
//! connection and pooled ones keep going. The server's chain is verified by webpki (through
//! rustls) against the current bundle, and then its URI SAN must be one of `match_uri_sans`: the
//! destination's SPIFFE identity, not a host name (mesh certificates carry no DNS name).

use std::fmt;
use std::sync::Arc;

use mesh_core::UpstreamTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where the connector finds the secrets a cluster's `tls` names, current at each handshake.
/// The sidecar's secret store implements it; each lookup is one atomic load there.
pub trait TlsSecrets: Send + Sync + fmt::Debug {
    /// The certificate and key of the `tls_certificate` secret `name`.
    fn certified_key(&self, name: &str) -> Option<Arc<CertifiedKey>>;
    /// The trust bundle of the `validation_context` secret `name`.
    fn roots(&self, name: &str) -> Option<Arc<RootCertStore>>;
    /// Told of each failed outbound handshake (for the handshake-error counter).
    fn outbound_handshake_failed(&self, _cluster: &str, _reason: &str) {}
}

/// The rustls crypto provider of the whole mesh: ring (no aws-lc, so no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A cluster's client TLS: the config built once per cluster version (its resolver and verifier
/// read the secrets at each handshake) and the server name sent.
#[derive(Clone)]
pub(crate) struct ClusterTls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) secrets: Arc<dyn TlsSecrets>,
    /// Whether the cluster set its own ALPN list (else it follows the client's protocol).
    alpn_configured: bool,
}

impl ClusterTls {
    /// The client TLS of a cluster (ALPN: the configured list, else set per pooled client by
    /// [`for_protocol`](Self::for_protocol)).
    pub(crate) fn new(
        tls: &UpstreamTls,
        secrets: Arc<dyn TlsSecrets>,
    ) -> Result<Self, rustls::Error> {
        let provider = provider();
        let verifier = Arc::new(SpiffeServerVerifier {
            secrets: Arc::clone(&secrets),
            bundle: tls.validation.clone(),
            allowed: tls.match_uri_sans.clone(),
            provider: Arc::clone(&provider),
        });
        let resolver = Arc::new(StoreClientCert {
            secrets: Arc::clone(&secrets),
            name: tls.certificate.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(resolver);
        config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // No resumption: a resumed session skips the server-certificate check (chain and
        // identity), so each new connection verifies the peer against the current bundle.
        config.resumption = rustls::client::Resumption::disabled();
        // Without an SNI configured, none is sent: rustls sends none for an IP address.
        let server_name = match &tls.sni {
            Some(sni) => ServerName::try_from(sni.clone())
                .map_err(|e| rustls::Error::General(format!("sni {sni:?}: {e}")))?,
            None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        Ok(Self {
            config: Arc::new(config),
            server_name,
            secrets,
            alpn_configured: !tls.alpn.is_empty(),
        })
    }

    /// The TLS of the pooled client speaking HTTP/2 (`h2`) or HTTP/1.1: ALPN offers that
    /// protocol alone unless the cluster configured its own list.
    pub(crate) fn for_protocol(&self, h2: bool) -> Self {
        if self.alpn_configured {
            return self.clone();
        }
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Self {
            config: Arc::new(config),
            ..self.clone()
        }
    }
}

/// The client certificate, looked up at each handshake.
#[derive(Debug)]
struct StoreClientCert {
    secrets: Arc<dyn TlsSecrets>,
    name: String,
}

impl ResolvesClientCert for StoreClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.secrets.certified_key(&self.name)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the server's chain against the current bundle (webpki), then its URI SAN against
/// the expected identities. Host names play no part: mesh certificates name workloads.
struct SpiffeServerVerifier {
    secrets: Arc<dyn TlsSecrets>,
    bundle: String,
    allowed: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("bundle", &self.bundle)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self.secrets.roots(&self.bundle).ok_or_else(|| {
            rustls::Error::General(format!("no trust bundle {:?} yet", self.bundle))
        })?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.allowed.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let sans = uri_sans(end_entity);
        if sans.iter().any(|s| self.allowed.contains(s)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server identity {sans:?} is not one of {:?}",
                self.allowed
            )))
        }
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
