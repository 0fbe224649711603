//! `SecretStore`: the sidecar's certificates and trust bundles by name, fed by SDS (the xDS
//! client, through `ReloadEach<Secret>`) or the static config's `secrets`. Every secret is
//! parsed when it arrives (PEM, key, certificate validity), so a bad one is refused with the
//! reason and the previous one keeps serving; handshakes read the current one with one atomic
//! load, so a replaced certificate applies to new handshakes and established connections go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use mesh_core::{Checked, Reload, ReloadEach, ReloadError, Secret, SecretKind, Validate};
use mesh_lb::tls::{provider, uri_sans, TlsSecrets};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::metrics::HandshakeLabels;

/// A secret as the data path uses it.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A certificate with its key, and the URI SANs of the leaf (for logs).
    Certificate {
        key: Arc<CertifiedKey>,
        identities: Vec<String>,
    },
    /// A trust bundle and the client verifier built over it.
    Bundle {
        roots: Arc<RootCertStore>,
        verifier: Arc<dyn ClientCertVerifier>,
    },
}

type Secrets = HashMap<String, Arc<Parsed>>;

/// The secrets by name (see the module docs). Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct SecretStore {
    current: ArcSwap<Secrets>,
    /// Serialises writers (config path only; readers never take it).
    write: Mutex<()>,
    handshake_errors: Family<HandshakeLabels, Counter>,
}

impl SecretStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers `mesh_tls_handshake_errors_total{direction,name,reason}` in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("mesh").register(
            "tls_handshake_errors",
            "Failed TLS handshakes by direction (inbound: listener, outbound: cluster) and reason",
            self.handshake_errors.clone(),
        );
    }

    /// How many handshakes failed on `direction` (`inbound` / `outbound`) of `name` for
    /// `reason` (for tests and the admin page).
    pub fn handshake_errors(&self, direction: &str, name: &str, reason: &str) -> u64 {
        self.handshake_errors
            .get_or_create(&HandshakeLabels {
                direction: direction.to_owned(),
                name: name.to_owned(),
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Counts a failed handshake.
    pub(crate) fn count_error(&self, direction: &'static str, name: &str, reason: &str) {
        self.handshake_errors
            .get_or_create(&HandshakeLabels {
                direction: direction.to_owned(),
                name: name.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Whether a secret named `name` is loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.current.load().contains_key(name)
    }

    /// The names loaded, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.current.load().keys().cloned().collect();
        v.sort_unstable();
        v
    }

    /// The client verifier of bundle `name`.
    pub(crate) fn client_verifier(&self, name: &str) -> Option<Arc<dyn ClientCertVerifier>> {
        match self.current.load().get(name).map(|p| &**p) {
            Some(Parsed::Bundle { verifier, .. }) => Some(Arc::clone(verifier)),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TlsSecrets for SecretStore {
    fn certified_key(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        match self.current.load().get(name).map(|p| &**p) {
            Some(Parsed::Certificate { key, .. }) => Some(Arc::clone(key)),
            _ => None,
        }
    }

    fn roots(&self, name: &str) -> Option<Arc<RootCertStore>> {
        match self.current.load().get(name).map(|p| &**p) {
            Some(Parsed::Bundle { roots, .. }) => Some(Arc::clone(roots)),
            _ => None,
        }
    }

    fn outbound_handshake_failed(&self, cluster: &str, reason: &str) {
        self.count_error("outbound", cluster, super::metrics::classify(reason));
    }
}

impl Reload<Secret> for SecretStore {
    fn reload(&self, secret: Secret) -> Result<(), ReloadError> {
        let refuse = |reason: String| ReloadError::new("secret", &secret.name, reason);
        secret
            .validate()
            .map_err(|e| ReloadError::invalid("secret", &secret.name, e))?;
        let parsed = parse(&secret.kind).map_err(refuse)?;
        if let Parsed::Certificate { identities, .. } = &parsed {
            tracing::info!(secret = %secret.name, ?identities, "certificate loaded");
        }
        let _w = self.lock();
        let mut next = (**self.current.load()).clone();
        next.insert(secret.name.clone(), Arc::new(parsed));
        self.current.store(Arc::new(next));
        Ok(())
    }
}

impl ReloadEach<Secret> for SecretStore {
    fn remove(&self, name: &str) -> Result<(), ReloadError> {
        let _w = self.lock();
        let mut next = (**self.current.load()).clone();
        if next.remove(name).is_some() {
            self.current.store(Arc::new(next));
        }
        Ok(())
    }
}

// SDS hands over secrets the xDS client already checked (`Checked`); the store parses them
// again all the same (key against leaf), and a refusal here NACKs the update.
impl Reload<Checked<Secret>> for SecretStore {
    fn reload(&self, secret: Checked<Secret>) -> Result<(), ReloadError> {
        Reload::<Secret>::reload(self, secret.into_inner())
    }
}

impl ReloadEach<Checked<Secret>> for SecretStore {
    fn remove(&self, name: &str) -> Result<(), ReloadError> {
        ReloadEach::<Secret>::remove(self, name)
    }
}

/// Parses and checks a secret: every PEM block decodes, the key matches the leaf, and no
/// certificate is expired or not yet valid.
pub(crate) fn parse(kind: &SecretKind) -> Result<Parsed, String> {
    match kind {
        SecretKind::TlsCertificate(c) => {
            let chain = certificates(&c.certificate_chain, "tls_certificate.certificate_chain")?;
            let key = PrivateKeyDer::from_pem_slice(c.private_key.as_bytes())
                .map_err(|e| format!("tls_certificate.private_key: {e}"))?;
            let key = CertifiedKey::from_der(chain, key, &provider())
                .map_err(|e| format!("tls_certificate: {e}"))?;
            let identities = uri_sans(&key.cert[0]);
            Ok(Parsed::Certificate {
                key: Arc::new(key),
                identities,
            })
        }
        SecretKind::ValidationContext(v) => {
            let field = "validation_context.trusted_ca";
            let mut roots = RootCertStore::empty();
            for cert in certificates(&v.trusted_ca, field)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{field}: not a CA certificate: {e}"))?;
            }
            let roots = Arc::new(roots);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
                    .build()
                    .map_err(|e| format!("{field}: {e}"))?;
            Ok(Parsed::Bundle { roots, verifier })
        }
    }
}

/// The certificates of a PEM text, each checked for its validity period.
fn certificates(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{field}: no CERTIFICATE block"));
    }
    for (i, der) in certs.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("{field}[{i}]: not an X.509 certificate: {e}"))?;
        let validity = cert.validity();
        if !validity.is_valid() {
            return Err(format!(
                "{field}[{i}]: certificate not valid now (valid from {} to {})",
                validity.not_before, validity.not_after
            ));
        }
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{TlsCertificate, ValidationContext};
    use mesh_testkit::TestCa;

    fn cert(name: &str, c: &mesh_testkit::IssuedCert) -> Secret {
        Secret {
            name: name.into(),
            kind: SecretKind::TlsCertificate(TlsCertificate {
                certificate_chain: c.cert_pem.clone(),
                private_key: c.key_pem.clone(),
            }),
        }
    }

    #[test]
    fn bad_secrets_are_refused_and_the_old_one_keeps_serving() {
        let ca = TestCa::new("ca").unwrap();
        let store = SecretStore::new();
        let good = ca.issue("spiffe://mesh.local/ns/default/sa/a").unwrap();
        store.reload(cert("default", &good)).unwrap();
        let before = store.certified_key("default").unwrap();
        assert_eq!(
            uri_sans(&before.cert[0]),
            ["spiffe://mesh.local/ns/default/sa/a"]
        );

        let expired = ca
            .issue_expired("spiffe://mesh.local/ns/default/sa/a")
            .unwrap();
        let err = store.reload(cert("default", &expired)).unwrap_err();
        assert!(err.reason.contains("not valid now"), "{err}");

        let other = ca.issue("spiffe://mesh.local/ns/default/sa/b").unwrap();
        let mismatched = mesh_testkit::IssuedCert {
            cert_pem: good.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        let err = store.reload(cert("default", &mismatched)).unwrap_err();
        assert!(err.reason.contains("tls_certificate"), "{err}");

        let garbage = mesh_testkit::IssuedCert {
            cert_pem: "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".into(),
            key_pem: good.key_pem.clone(),
        };
        let err = store.reload(cert("default", &garbage)).unwrap_err();
        assert!(err.reason.contains("certificate_chain"), "{err}");

        let bad_bundle = Secret {
            name: "ROOTCA".into(),
            kind: SecretKind::ValidationContext(ValidationContext {
                trusted_ca: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
            }),
        };
        assert!(store.reload(bad_bundle).is_err());
        assert!(!store.contains("ROOTCA"));

        let after = store.certified_key("default").unwrap();
        assert!(Arc::ptr_eq(&before, &after), "the old certificate serves");

        store
            .reload(Secret {
                name: "ROOTCA".into(),
                kind: SecretKind::ValidationContext(ValidationContext {
                    trusted_ca: ca.cert_pem(),
                }),
            })
            .unwrap();
        assert!(store.roots("ROOTCA").is_some() && store.client_verifier("ROOTCA").is_some());
        ReloadEach::<Secret>::remove(&store, "ROOTCA").unwrap();
        assert_eq!(store.names(), ["default"]);
    }
}
