//! The handshake-error counter's labels and the reason a handshake failed, in a few stable
//! words (metrics labels must not carry free text).

use prometheus_client::encoding::EncodeLabelSet;

/// Labels of `mesh_tls_handshake_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    /// `inbound` (a listener) or `outbound` (a cluster).
    pub(crate) direction: String,
    /// The listener or cluster.
    pub(crate) name: String,
    /// See [`classify`].
    pub(crate) reason: String,
}

/// A handshake error's text as a label: `no_client_certificate`, `unknown_ca`, `expired`,
/// `wrong_identity`, `no_secret`, `timeout`, `plaintext`, or `other`.
pub(crate) fn classify(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("no certificates")
        || e.contains("certificaterequired")
        || e.contains("certificate required")
    {
        "no_client_certificate"
    } else if e.contains("unknownissuer")
        || e.contains("unknown issuer")
        || e.contains("unknownca")
        || e.contains("unknown ca")
        || e.contains("badsignature")
    {
        "unknown_ca"
    } else if e.contains("expired") || e.contains("notvalidyet") {
        "expired"
    } else if e.contains("is not one of") {
        "wrong_identity"
    } else if e.contains("no trust bundle") || e.contains("no certificate") {
        "no_secret"
    } else if e.contains("timed out") || e.contains("timeout") {
        "timeout"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(
            classify("invalid peer certificate: UnknownIssuer"),
            "unknown_ca"
        );
        assert_eq!(
            classify("peer sent no certificates"),
            "no_client_certificate"
        );
        assert_eq!(
            classify("server identity [\"x\"] is not one of [\"y\"]"),
            "wrong_identity"
        );
        assert_eq!(classify("received fatal alert: DecodeError"), "other");
    }
}
