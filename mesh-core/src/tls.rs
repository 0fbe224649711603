//! Workload identity and TLS between sidecars: the SPIFFE identity a certificate carries, the
//! secrets SDS delivers ([`Secret`]: a certificate with its key, or a trust bundle) and the TLS
//! settings of a listener ([`DownstreamTls`]) and of a cluster ([`UpstreamTls`]), which name
//! those secrets (as Envoy's `sds_config` secret references do).
//!
//! No crypto lives here: certificates are PEM text, parsed and used by the proxy (rustls) and
//! issued by the control plane.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::validate::{non_empty, Validate, ValidationError};

/// A workload identity in SPIFFE form: `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`
/// (Istio's shape), carried as the URI SAN of the workload's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain (`cluster.local`, `mesh.example`).
    pub trust_domain: String,
    /// The namespace.
    pub namespace: String,
    /// The service account; the mesh uses the service's name.
    pub service: String,
}

impl SpiffeId {
    /// The identity of `service` in `namespace` of `trust_domain`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service: service.into(),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

/// Why a string is not a mesh SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a SPIFFE identity of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service>: {0:?}"
)]
pub struct SpiffeIdError(pub String);

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SpiffeIdError(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        if [td, ns, sa].iter().any(|p| p.is_empty()) {
            return Err(err());
        }
        Ok(Self::new(td, ns, sa))
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A named secret, as SDS delivers it (Envoy's `envoy.extensions.transport_sockets.tls.v3.Secret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The name listeners and clusters refer to it by (Istio's `default` for the workload's
    /// certificate, `ROOTCA` for the trust bundle).
    pub name: String,
    /// What it holds.
    #[serde(flatten)]
    pub kind: SecretKind,
}

/// What a [`Secret`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// A certificate chain and its private key (Envoy's `tls_certificate`).
    TlsCertificate(TlsCertificate),
    /// The CAs a peer's certificate must chain to (Envoy's `validation_context`).
    ValidationContext(ValidationContext),
}

/// A certificate chain (leaf first) and its private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// The chain, PEM, leaf first.
    pub certificate_chain: String,
    /// The leaf's private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub private_key: String,
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (a config dump or a log line would leak it).
        f.debug_struct("TlsCertificate")
            .field("certificate_chain", &self.certificate_chain)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// A trust bundle: the CA certificates (PEM, one or more: during a CA rotation the old and the
/// new) a peer's chain must lead to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationContext {
    /// CA certificates, PEM, concatenated.
    pub trusted_ca: String,
}

impl Validate for Secret {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("name", &self.name)?;
        match &self.kind {
            SecretKind::TlsCertificate(c) => {
                pem_block("tls_certificate.certificate_chain", &c.certificate_chain)?;
                pem_block("tls_certificate.private_key", &c.private_key)
            }
            SecretKind::ValidationContext(v) => {
                pem_block("validation_context.trusted_ca", &v.trusted_ca)
            }
        }
    }
}

/// A cheap shape check; parsing (and the expiry check) is the TLS code's.
fn pem_block(field: &str, pem: &str) -> Result<(), ValidationError> {
    if pem.contains("-----BEGIN ") {
        Ok(())
    } else {
        Err(ValidationError::new(field, "not PEM (no -----BEGIN block)"))
    }
}

/// Whether a listener requires its peers to present a mesh certificate (Istio's
/// PeerAuthentication modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    /// Only mTLS: a client without a certificate from the trust bundle fails the handshake.
    #[default]
    Strict,
    /// mTLS or plaintext: a connection that opens with a TLS ClientHello must complete mTLS,
    /// one that does not is served in plaintext (with no peer identity).
    Permissive,
}

/// TLS on a listener: the certificate it presents, the trust bundle clients' certificates are
/// checked against, and whether a client certificate is required (Envoy's
/// `DownstreamTlsContext` with SDS secret references).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTls {
    /// The [`Secret`] holding this listener's certificate and key.
    pub certificate: String,
    /// The [`Secret`] holding the trust bundle client certificates must chain to.
    pub validation: String,
    /// Strict or permissive.
    #[serde(default)]
    pub mode: MtlsMode,
    /// ALPN protocols offered, in preference order (default `h2`, `http/1.1`).
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
}

/// TLS to a cluster's endpoints: the certificate this side presents, the trust bundle and the
/// identities the endpoint's certificate must carry (Envoy's `UpstreamTlsContext` with SDS
/// secret references and `match_typed_subject_alt_names` of URI type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The [`Secret`] holding this side's client certificate and key.
    pub certificate: String,
    /// The [`Secret`] holding the trust bundle the endpoint's certificate must chain to.
    pub validation: String,
    /// URI SANs accepted on the endpoint's certificate (the destination service's SPIFFE
    /// identity); empty accepts any certificate from the trust bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_uri_sans: Vec<String>,
    /// The SNI sent (none: no SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// ALPN protocols offered (default: the cluster's protocol only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

impl Validate for DownstreamTls {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("certificate", &self.certificate)?;
        non_empty("validation", &self.validation)
    }
}

impl Validate for UpstreamTls {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("certificate", &self.certificate)?;
        non_empty("validation", &self.validation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_bad_ones_are_refused() {
        let id: SpiffeId = "spiffe://mesh.local/ns/default/sa/orders".parse().unwrap();
        assert_eq!(id, SpiffeId::new("mesh.local", "default", "orders"));
        assert_eq!(id.to_string(), "spiffe://mesh.local/ns/default/sa/orders");
        for bad in [
            "spiffe://mesh.local/ns/default",
            "spiffe://mesh.local/ns//sa/orders",
            "https://mesh.local/ns/default/sa/orders",
            "spiffe://mesh.local/ns/default/sa/orders/extra",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_parse_from_yaml_and_keys_never_print() {
        let s: Secret = crate::yaml::from_str(
            "name: default\ntls_certificate:\n  certificate_chain: \"-----BEGIN CERTIFICATE-----\"\n  private_key: \"-----BEGIN PRIVATE KEY----- secret\"\n",
        )
        .unwrap();
        s.validate().unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        let bad = Secret {
            name: "ROOTCA".into(),
            kind: SecretKind::ValidationContext(ValidationContext {
                trusted_ca: "nope".into(),
            }),
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("validation_context.trusted_ca"), "{err}");
    }
}
