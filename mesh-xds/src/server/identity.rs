//! How a node proves who it is before it gets its workload certificate: when the xDS client
//! presented a certificate (the server requires one with `ServerTls::client_ca`), a `Secret`
//! holding a certificate is served to it only if that certificate's URI SAN (the workload's
//! SPIFFE identity) is one of the client certificate's URI SANs. Without a client certificate
//! (plaintext or server-only TLS) the node's claimed id is trusted: dev mode, which the binary
//! warns about at start.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use prost::Message;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::Resource;
use crate::ResourceType;

/// The URI SANs of the client certificate of the connection `extensions` belong to; `None`
/// when the client presented none.
pub(crate) fn peer_uri_sans(extensions: &http::Extensions) -> Option<Arc<Vec<String>>> {
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    let leaf = certs.first()?;
    let sans = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => uri_sans(&cert),
        Err(_) => Vec::new(),
    };
    Some(Arc::new(sans))
}

fn uri_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a client with `peer` URI SANs (`None`: no client certificate) may receive `r`: any
/// resource but a workload certificate whose identity the client does not prove.
pub(crate) fn may_receive(peer: Option<&[String]>, r: &Resource) -> bool {
    let Some(peer) = peer else {
        return true;
    };
    if r.kind() != ResourceType::Secret {
        return true;
    }
    let Ok(secret) = tls::Secret::decode(r.any().value.as_slice()) else {
        return false;
    };
    let Some(tls::secret::Type::TlsCertificate(c)) = secret.r#type else {
        // Trust bundles are public.
        return true;
    };
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let pem = match c.certificate_chain.and_then(|d| d.specifier) {
        Some(Specifier::InlineString(s)) => s.into_bytes(),
        Some(Specifier::InlineBytes(b)) => b,
        _ => return false,
    };
    let Some(Ok(block)) = x509_parser::pem::Pem::iter_from_buffer(&pem).next() else {
        return false;
    };
    let Ok(cert) = block.parse_x509() else {
        return false;
    };
    let sans = uri_sans(&cert);
    let allowed = sans.iter().any(|s| peer.contains(s));
    if !allowed {
        tracing::warn!(
            secret = %secret.name,
            identity = ?sans,
            client = ?peer,
            "workload certificate withheld: the xDS client certificate does not prove that identity"
        );
    }
    allowed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::source::MeshSpec;

    const MESH: &str = "security: { trust_domain: mesh.test, ca: { generate: true } }\nservices: [{ name: orders }]\nnodes: [{ id: orders-1, service: orders }]\n";

    #[test]
    fn a_workload_certificate_goes_only_to_a_client_proving_its_identity() {
        let snaps = MeshSpec::from_yaml(MESH).unwrap().snapshots().unwrap();
        let secrets = snaps.nodes["orders-1"].of(ResourceType::Secret);
        let cert = secrets.get("default").unwrap();
        let bundle = secrets.get("ROOTCA").unwrap();
        let own = vec!["spiffe://mesh.test/ns/default/sa/orders".to_owned()];
        let other = vec!["spiffe://mesh.test/ns/default/sa/payments".to_owned()];
        // Dev mode (no client certificate): the claim is trusted.
        assert!(may_receive(None, cert));
        assert!(may_receive(Some(&own), cert));
        assert!(!may_receive(Some(&other), cert));
        assert!(
            !may_receive(Some(&[]), cert),
            "a client certificate without URI SAN"
        );
        // The trust bundle and other types are for anyone.
        assert!(may_receive(Some(&other), bundle));
        let cluster = snaps.nodes["orders-1"]
            .of(ResourceType::Cluster)
            .get("orders")
            .unwrap();
        assert!(may_receive(Some(&other), cluster));
    }
}
