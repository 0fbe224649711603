//! The mesh CA in the control plane: it loads (or generates) the CA, issues each service's
//! workload certificate (ECDSA P-256, the service's SPIFFE identity as URI SAN) and renews it
//! at two thirds of its lifetime.
//!
//! Keys: SDS carries a `tls_certificate` with its private key and Envoy has no CSR flow over
//! SDS, so the control plane generates each workload's key. The key travels over the xDS
//! stream (use TLS to the control plane outside a loopback dev setup) and the control plane
//! holds every workload key in memory; a CSR flow (keys that never leave the workload) would
//! need an agent beside Envoy (Istio's pilot-agent) and is not built.
//!
//! One certificate per service is shared by the service's replicas (they carry the same
//! identity); it is issued on first use and kept until its renewal time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use mesh_core::{Secret, SecretKind, SpiffeId, TlsCertificate, ValidationContext};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::time::Instant;

use super::spec::{CaSpec, SecuritySpec};

/// Name of the SDS secret holding a workload's certificate and key (Istio's name).
pub const WORKLOAD_SECRET: &str = "default";
/// Name of the SDS secret holding the trust bundle (Istio's name).
pub const ROOT_SECRET: &str = "ROOTCA";

/// Why the CA could not be loaded: the file and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct CaError {
    /// The file at fault (or `security.ca` for a setting).
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

impl CaError {
    fn new(file: impl AsRef<Path>, reason: impl ToString) -> Self {
        Self {
            file: file.as_ref().display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The mesh CA and the workload certificates it issued.
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate plus the extra roots, PEM: the `ROOTCA` secret.
    bundle: String,
    lifetime: Duration,
    issued: Mutex<HashMap<SpiffeId, Issued>>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Issued {
    cert: TlsCertificate,
    renew_at: Instant,
}

impl MeshCa {
    /// Loads (or generates) the CA `spec` describes and reads its extra roots.
    pub fn load(spec: &SecuritySpec) -> Result<Self, CaError> {
        let (issuer, ca_pem) = match &spec.ca {
            CaSpec {
                cert: Some(cert),
                key: Some(key),
                generate: false,
            } => load_ca(cert, key)?,
            CaSpec {
                cert: None,
                key: None,
                generate: true,
            } => generate_ca(&spec.trust_domain)?,
            _ => {
                return Err(CaError::new(
                    "security.ca",
                    "give `cert` and `key` (PEM files), or `generate: true`",
                ))
            }
        };
        let mut bundle = ca_pem;
        for path in &spec.extra_roots {
            let pem = read(path)?;
            crate::convert::check_certificates(&pem, "extra_roots")
                .map_err(|e| CaError::new(path, e.reason))?;
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(&pem);
        }
        Ok(Self {
            issuer,
            bundle,
            lifetime: spec.workload_cert_ttl,
            issued: Mutex::default(),
        })
    }

    /// The trust bundle (CA and extra roots), PEM.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    /// The two SDS secrets of a workload with identity `id`: `default` and `ROOTCA`. The
    /// certificate is reused until its renewal time (2/3 of its lifetime), then re-issued.
    pub fn secrets(&self, id: &SpiffeId) -> Result<[Secret; 2], CaError> {
        let cert = self.certificate(id)?;
        Ok([
            Secret {
                name: WORKLOAD_SECRET.into(),
                kind: SecretKind::TlsCertificate(cert),
            },
            Secret {
                name: ROOT_SECRET.into(),
                kind: SecretKind::ValidationContext(ValidationContext {
                    trusted_ca: self.bundle.clone(),
                }),
            },
        ])
    }

    /// The earliest renewal time of the certificates issued so far.
    pub fn next_renewal(&self) -> Option<Instant> {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.values().map(|i| i.renew_at).min()
    }

    fn certificate(&self, id: &SpiffeId) -> Result<TlsCertificate, CaError> {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(i) = issued.get(id).filter(|i| now < i.renew_at) {
            return Ok(i.cert.clone());
        }
        let cert = self.issue(id)?;
        let renew_at = now + self.lifetime * 2 / 3;
        issued.insert(
            id.clone(),
            Issued {
                cert: cert.clone(),
                renew_at,
            },
        );
        tracing::info!(identity = %id, lifetime = ?self.lifetime, "issued a workload certificate");
        Ok(cert)
    }

    fn issue(&self, id: &SpiffeId) -> Result<TlsCertificate, CaError> {
        let err = |e: rcgen::Error| CaError::new("security.ca", format!("issuing {id}: {e}"));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::default();
        let uri = id.to_string().try_into().map_err(err)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        // A minute of slack for clocks a little behind ours.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + self.lifetime;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(TlsCertificate {
            certificate_chain: cert.pem(),
            private_key: key.serialize_pem(),
        })
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| CaError::new(path, e))
}

/// Reads a CA: the certificate parses and is valid now, the key parses and matches it.
fn load_ca(cert: &PathBuf, key: &PathBuf) -> Result<(Issuer<'static, KeyPair>, String), CaError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    crate::convert::check_certificates(&cert_pem, "ca.cert").map_err(|e| CaError::new(cert, e))?;
    let key_pair = KeyPair::from_pem(&key_pem)
        .map_err(|e| CaError::new(key, format!("not a PEM private key: {e}")))?;
    let block = x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CaError::new(cert, "no PEM certificate"))?;
    let x509 = block
        .parse_x509()
        .map_err(|e| CaError::new(cert, format!("not an X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(CaError::new(
            cert,
            "not a CA certificate (basicConstraints CA:FALSE or absent)",
        ));
    }
    if x509.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
        return Err(CaError::new(
            key,
            format!("the key does not match the certificate {}", cert.display()),
        ));
    }
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)
        .map_err(|e| CaError::new(cert, format!("unusable CA certificate: {e}")))?;
    Ok((issuer, cert_pem))
}

/// A CA for development, made at start and written nowhere: workloads trust it for as long as
/// this control plane runs (a restart makes a new CA, and every workload gets new certificates).
fn generate_ca(trust_domain: &str) -> Result<(Issuer<'static, KeyPair>, String), CaError> {
    let err = |e: rcgen::Error| CaError::new("security.ca", format!("generating a CA: {e}"));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mesh CA {trust_domain}"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key).map_err(err)?;
    let pem = cert.pem();
    Ok((Issuer::new(params, key), pem))
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
