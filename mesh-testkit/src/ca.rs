//! `TestCa`: a throwaway certificate authority (rcgen) issuing SPIFFE leaf certificates, for
//! mTLS tests. Make two to get a "foreign" CA whose certificates the other's bundle refuses.

use anyhow::Context as _;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A self-signed CA that signs leaf certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate chain, PEM (leaf only: the CA is in the trust bundle).
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA whose subject's common name is `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-signing the CA")?;
        Ok(Self { issuer, key_pem })
    }

    /// The CA's certificate, PEM (what a trust bundle holds).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, PEM (PKCS#8): for a control plane that is given this CA.
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// A leaf for `spiffe_id` (its only SAN, a URI), usable as client and server certificate.
    pub fn issue(&self, spiffe_id: &str) -> anyhow::Result<IssuedCert> {
        self.issue_with(spiffe_id, |_| {})
    }

    /// A leaf for `spiffe_id` that expired in 2020.
    pub fn issue_expired(&self, spiffe_id: &str) -> anyhow::Result<IssuedCert> {
        self.issue_with(spiffe_id, |p| {
            p.not_before = date_time_ymd(2019, 1, 1);
            p.not_after = date_time_ymd(2020, 1, 1);
        })
    }

    fn issue_with(
        &self,
        spiffe_id: &str,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> anyhow::Result<IssuedCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        tweak(&mut params);
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the leaf")?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_leaves() {
        let ca = TestCa::new("test ca").unwrap();
        let leaf = ca.issue("spiffe://mesh.local/ns/default/sa/b").unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        assert_ne!(ca.cert_pem(), leaf.cert_pem);
    }
}
