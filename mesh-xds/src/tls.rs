//! TLS on the xDS stream, both ends: [`XdsTls`] for the client (the CA that signs the control
//! plane's certificate, optionally a client certificate for mTLS, optionally the name to verify),
//! `ServerTls` (feature `control-plane`) for the control plane (its certificate and key, optionally the CA of the clients
//! it requires certificates from). Both are rustls (on ring) through tonic's TLS support.
//!
//! Certificates and keys are PEM, given as bytes or as files; files are read when the client
//! starts or the server is built, so a missing file, a file that is not PEM or a key that does
//! not parse is an error at once rather than a connection that keeps failing. (A CA certificate
//! that does not parse is skipped by rustls: every handshake then fails with `UnknownIssuer`,
//! which the client's status shows.)
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_xds::client::XdsClient;
//! use mesh_xds::tls::XdsTls;
//!
//! // The control plane (feature `control-plane`) would require client certificates so:
//! // `XdsServer::new(cache).serve_tls(listener, ServerTls::from_files("cp.pem", "cp-key.pem")?
//! //      .client_ca_file("clients-ca.pem")?, shutdown)`.
//! // A client trusting ca.pem, presenting its own certificate.
//! let client = XdsClient::builder()
//!     .address("https://cp.mesh.internal:18000")
//!     .node_id("sidecar-1")
//!     .tls(XdsTls::new().ca_file("ca.pem").identity_files("me.pem", "me-key.pem"))
//!     .start()?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A TLS setting that could not be used (a file that does not read, a PEM that does not parse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("xDS TLS: {0}")]
pub struct TlsError(pub String);

/// PEM bytes, or a file holding them.
#[derive(Clone)]
enum Pem {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Pem {
    fn read(&self, what: &str) -> Result<Vec<u8>, TlsError> {
        let bytes = match self {
            Pem::Bytes(b) => b.clone(),
            Pem::File(p) => std::fs::read(p)
                .map_err(|e| TlsError(format!("read {what} {}: {e}", p.display())))?,
        };
        // tonic parses lazily (at connect); catch an obvious non-PEM here, with its name.
        if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
            return Err(TlsError(format!("{what} {self:?} is not PEM")));
        }
        Ok(bytes)
    }
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never print key material.
            Pem::Bytes(b) => write!(f, "<{} PEM bytes>", b.len()),
            Pem::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// TLS from the client to the control plane (Envoy's `UpstreamTlsContext` on the xDS cluster).
///
/// The CA is required: the control plane's certificate is verified against it, for the host of
/// the `https://` address (a DNS name or an IP address in the certificate's SANs) unless
/// [`domain_name`](Self::domain_name) names another. With [`identity_pem`](Self::identity_pem)
/// or [`identity_files`](Self::identity_files) the client presents a certificate (mTLS).
#[derive(Debug, Clone, Default)]
pub struct XdsTls {
    ca: Option<Pem>,
    identity: Option<(Pem, Pem)>,
    domain: Option<String>,
}

impl XdsTls {
    /// No CA yet: give one with [`ca_pem`](Self::ca_pem) or [`ca_file`](Self::ca_file).
    pub fn new() -> Self {
        Self::default()
    }

    /// The CA certificate(s) that sign the control plane's certificate, PEM.
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Bytes(pem.into()));
        self
    }

    /// The CA certificate(s), from a PEM file.
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Pem::File(path.into()));
        self
    }

    /// The client's certificate (chain) and private key, PEM, presented for mTLS.
    #[must_use]
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
        self
    }

    /// The client's certificate and private key, from PEM files.
    #[must_use]
    pub fn identity_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// The name the control plane's certificate must carry (and the SNI), instead of the host of
    /// the address: for control planes reached by IP or through a load balancer.
    #[must_use]
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// Reads the files and builds tonic's client config.
    pub(crate) fn client_config(&self) -> Result<ClientTlsConfig, TlsError> {
        let ca = self.ca.as_ref().ok_or_else(|| {
            TlsError("a CA certificate is required to verify the control plane".into())
        })?;
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.read("CA certificate")?))
            .assume_http2(true);
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(
                cert.read("client certificate")?,
                key.read("client key")?,
            ));
        }
        if let Some(d) = &self.domain {
            cfg = cfg.domain_name(d.clone());
        }
        Ok(cfg)
    }
}

#[cfg(feature = "control-plane")]
/// TLS on the control plane's listener: its certificate and key, and optionally the CA whose
/// client certificates it requires (mTLS: a client without one is refused at the handshake).
#[derive(Clone)]
pub struct ServerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

#[cfg(feature = "control-plane")]
impl ServerTls {
    /// The server's certificate (chain) and private key, PEM.
    pub fn from_pem(cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Result<Self, TlsError> {
        Ok(Self {
            cert: Pem::Bytes(cert.into()).read("server certificate")?,
            key: Pem::Bytes(key.into()).read("server key")?,
            client_ca: None,
        })
    }

    /// The server's certificate and private key, from PEM files.
    pub fn from_files(
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            cert: Pem::File(cert.as_ref().into()).read("server certificate")?,
            key: Pem::File(key.as_ref().into()).read("server key")?,
            client_ca: None,
        })
    }

    /// Requires client certificates signed by this CA (PEM).
    pub fn client_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, TlsError> {
        self.client_ca = Some(Pem::Bytes(pem.into()).read("client CA certificate")?);
        Ok(self)
    }

    /// Requires client certificates signed by the CA of this PEM file.
    pub fn client_ca_file(mut self, path: impl AsRef<std::path::Path>) -> Result<Self, TlsError> {
        self.client_ca = Some(Pem::File(path.as_ref().into()).read("client CA certificate")?);
        Ok(self)
    }

    /// Whether client certificates are required.
    pub fn requires_client_cert(&self) -> bool {
        self.client_ca.is_some()
    }

    pub(crate) fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        let cfg = tonic::transport::ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(ca) => cfg.client_ca_root(Certificate::from_pem(ca)),
            None => cfg,
        }
    }
}

#[cfg(feature = "control-plane")]
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ServerTls")
            .field("requires_client_cert", &self.requires_client_cert())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "control-plane")]
impl crate::server::XdsServer {
    /// Serves every discovery service over TLS on `listener` until `shutdown` completes (what
    /// [`serve`](crate::server::XdsServer::serve) does in plaintext). A client whose handshake
    /// fails (an untrusted CA, no client certificate under mTLS) is dropped; the server goes on.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: ServerTls,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        use futures::StreamExt;
        // Nodelay as in `serve`: Nagle and delayed ACKs would hold back large responses.
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        });
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())?
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_routes(self.routes())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }
}

/// An error and its causes on one line: tonic's transport errors say "transport error" at the
/// top and the reason (a refused certificate, a connection refused) in their sources.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_needs_a_ca_and_pem() {
        let err = XdsTls::new().client_config().unwrap_err();
        assert!(err.0.contains("CA certificate is required"), "{err}");
        let err = XdsTls::new()
            .ca_pem("not a certificate")
            .client_config()
            .unwrap_err();
        assert!(err.0.contains("is not PEM"), "{err}");
        let err = XdsTls::new()
            .ca_file("/nonexistent/ca.pem")
            .client_config()
            .unwrap_err();
        assert!(err.0.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn key_bytes_are_not_printed() {
        let tls = XdsTls::new().identity_pem("-----BEGIN CERT", "-----BEGIN SECRET KEY");
        assert!(!format!("{tls:?}").contains("SECRET"));
    }

    #[cfg(feature = "control-plane")]
    #[test]
    fn a_server_names_the_missing_file() {
        let err = ServerTls::from_files("/nonexistent/c.pem", "/nonexistent/k.pem").unwrap_err();
        assert!(err.0.contains("server certificate"), "{err}");
    }

    #[test]
    fn error_chains_keep_every_distinct_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Top(#[source] std::io::Error);
        let e = Top(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(
            error_chain(&e),
            "transport error: invalid peer certificate: UnknownIssuer"
        );
    }
}
