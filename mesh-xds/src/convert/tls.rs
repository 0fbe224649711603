//! TLS on the wire: the SDS `Secret` ↔ [`mesh_core::Secret`], and the `transport_socket`s that
//! name secrets: `DownstreamTlsContext` ↔ [`DownstreamTls`] (a listener's filter chains) and
//! `UpstreamTlsContext` ↔ [`UpstreamTls`] (a cluster).
//!
//! Secrets are referenced by name over ADS (`sds_config { ads {} }`), as Istio does; inline
//! certificates, files and certificate providers are refused by path. A received `Secret` is
//! checked here (PEM parses as X.509, the certificate is in its validity period, a key block is
//! present), so an expired or malformed certificate is NACKed and the old one keeps serving.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_core::{
    DownstreamTls, MtlsMode, Secret, SecretKind, TlsCertificate, UpstreamTls, ValidationContext,
};

use super::{ads_config_source, check_ads_source, pack, unpack, ConvertError, XdsResource};

/// The transport socket name of Envoy's TLS.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// Listener filter that tells TLS from plaintext (it sets `transport_protocol: "tls"`).
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

impl XdsResource for Secret {
    type Proto = tls::Secret;
    const TYPE: crate::ResourceType = crate::ResourceType::Secret;
    const TYPE_URL: &'static str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    const KIND: &'static str = "secret";

    fn resource_name(&self) -> &str {
        &self.name
    }

    fn proto_name(proto: &Self::Proto) -> &str {
        &proto.name
    }

    fn from_proto(p: Self::Proto) -> Result<Self, ConvertError> {
        use tls::secret::Type;
        let kind = match p.r#type {
            Some(Type::TlsCertificate(c)) => SecretKind::TlsCertificate(certificate_from(c)?),
            Some(Type::ValidationContext(v)) => SecretKind::ValidationContext(validation_from(v)?),
            Some(Type::SessionTicketKeys(_)) => {
                return Err(ConvertError::unsupported(
                    "session_ticket_keys",
                    "session ticket keys",
                ))
            }
            Some(Type::GenericSecret(_)) => {
                return Err(ConvertError::unsupported(
                    "generic_secret",
                    "generic secrets",
                ))
            }
            None => return Err(ConvertError::new("type", "missing")),
        };
        Ok(Secret { name: p.name, kind })
    }

    fn to_proto(&self) -> Self::Proto {
        use tls::secret::Type;
        let r#type = match &self.kind {
            SecretKind::TlsCertificate(c) => Type::TlsCertificate(tls::TlsCertificate {
                certificate_chain: Some(inline(&c.certificate_chain)),
                private_key: Some(inline(&c.private_key)),
                ..Default::default()
            }),
            SecretKind::ValidationContext(v) => {
                Type::ValidationContext(tls::CertificateValidationContext {
                    trusted_ca: Some(inline(&v.trusted_ca)),
                    ..Default::default()
                })
            }
        };
        tls::Secret {
            name: self.name.clone(),
            r#type: Some(r#type),
        }
    }
}

fn inline(s: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(s.to_owned())),
        ..Default::default()
    }
}

/// The inline text of a data source (files, env vars and watched paths are refused: the
/// secret travels in the resource).
fn inline_from(d: Option<core::DataSource>, path: &str) -> Result<String, ConvertError> {
    use core::data_source::Specifier as S;
    let Some(d) = d else {
        return Err(ConvertError::new(path, "missing"));
    };
    match d.specifier {
        Some(S::InlineString(s)) => Ok(s),
        Some(S::InlineBytes(b)) => String::from_utf8(b)
            .map_err(|_| ConvertError::new(format!("{path}.inline_bytes"), "not UTF-8 PEM")),
        Some(S::Filename(_)) => Err(ConvertError::unsupported(
            format!("{path}.filename"),
            "secrets from files (send them inline over SDS)",
        )),
        Some(S::EnvironmentVariable(_)) => Err(ConvertError::unsupported(
            format!("{path}.environment_variable"),
            "secrets from environment variables",
        )),
        None => Err(ConvertError::new(path, "empty data source")),
    }
}

fn certificate_from(c: tls::TlsCertificate) -> Result<TlsCertificate, ConvertError> {
    let at = "tls_certificate";
    if c.private_key_provider.is_some() {
        return Err(ConvertError::unsupported(
            format!("{at}.private_key_provider"),
            "private key providers",
        ));
    }
    if c.password.is_some() {
        return Err(ConvertError::unsupported(
            format!("{at}.password"),
            "encrypted private keys",
        ));
    }
    let chain = inline_from(c.certificate_chain, &format!("{at}.certificate_chain"))?;
    let key = inline_from(c.private_key, &format!("{at}.private_key"))?;
    check_certificates(&chain, &format!("{at}.certificate_chain"))?;
    check_private_key(&key, &format!("{at}.private_key"))?;
    Ok(TlsCertificate {
        certificate_chain: chain,
        private_key: key,
    })
}

fn validation_from(
    v: tls::CertificateValidationContext,
) -> Result<ValidationContext, ConvertError> {
    let at = "validation_context";
    let only_ca = tls::CertificateValidationContext {
        trusted_ca: v.trusted_ca.clone(),
        ..Default::default()
    };
    if v != only_ca {
        return Err(ConvertError::unsupported(
            at,
            "validation settings other than trusted_ca in a secret (SAN matching belongs on the cluster)",
        ));
    }
    let ca = inline_from(v.trusted_ca, &format!("{at}.trusted_ca"))?;
    check_certificates(&ca, &format!("{at}.trusted_ca"))?;
    Ok(ValidationContext { trusted_ca: ca })
}

/// Every PEM block of `pem` is an X.509 certificate in its validity period; at least one.
pub(crate) fn check_certificates(pem: &str, path: &str) -> Result<(), ConvertError> {
    let mut n = 0;
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).enumerate() {
        let block = block
            .map_err(|e| ConvertError::new(format!("{path}[{i}]"), format!("bad PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(ConvertError::new(
                format!("{path}[{i}]"),
                format!(
                    "a {:?} PEM block where a CERTIFICATE was expected",
                    block.label
                ),
            ));
        }
        let cert = block.parse_x509().map_err(|e| {
            ConvertError::new(
                format!("{path}[{i}]"),
                format!("not an X.509 certificate: {e}"),
            )
        })?;
        let validity = cert.validity();
        if !validity.is_valid() {
            return Err(ConvertError::new(
                format!("{path}[{i}]"),
                format!(
                    "certificate {} is not valid now (not_before {}, not_after {})",
                    cert.subject(),
                    validity.not_before,
                    validity.not_after
                ),
            ));
        }
        n += 1;
    }
    if n == 0 {
        return Err(ConvertError::new(path, "no PEM certificate"));
    }
    Ok(())
}

/// One PEM private-key block (PKCS#8, SEC1 or PKCS#1).
fn check_private_key(pem: &str, path: &str) -> Result<(), ConvertError> {
    let mut blocks = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes());
    match blocks.next() {
        Some(Ok(b)) if b.label.ends_with("PRIVATE KEY") && !b.contents.is_empty() => Ok(()),
        Some(Ok(b)) => Err(ConvertError::new(
            path,
            format!("a {:?} PEM block where a private key was expected", b.label),
        )),
        Some(Err(e)) => Err(ConvertError::new(path, format!("bad PEM: {e}"))),
        None => Err(ConvertError::new(path, "no PEM private key")),
    }
}

// ---- transport sockets ----------------------------------------------------------------------

fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads_config_source()),
    }
}

fn sds_from(c: &tls::SdsSecretConfig, path: &str) -> Result<String, ConvertError> {
    check_ads_source(c.sds_config.as_ref(), path)?;
    if c.name.is_empty() {
        return Err(ConvertError::new(format!("{path}.name"), "empty"));
    }
    Ok(c.name.clone())
}

fn transport_socket(any: envoy_types::pb::google::protobuf::Any) -> core::TransportSocket {
    core::TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

fn typed_config<'a>(
    ts: &'a core::TransportSocket,
    at: &str,
) -> Result<&'a envoy_types::pb::google::protobuf::Any, ConvertError> {
    match &ts.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(any)) => Ok(any),
        None => Err(ConvertError::new(format!("{at}.typed_config"), "missing")),
    }
}

/// The common part both directions share: (certificate, validation, SAN matches, ALPN).
fn common_from(
    c: Option<&tls::CommonTlsContext>,
    at: &str,
) -> Result<(String, String, Vec<String>, Vec<String>), ConvertError> {
    use tls::common_tls_context::ValidationContextType as V;
    let at = format!("{at}.common_tls_context");
    let Some(c) = c else {
        return Err(ConvertError::new(at, "missing"));
    };
    let known = tls::CommonTlsContext {
        tls_certificate_sds_secret_configs: c.tls_certificate_sds_secret_configs.clone(),
        validation_context_type: c.validation_context_type.clone(),
        alpn_protocols: c.alpn_protocols.clone(),
        ..Default::default()
    };
    if *c != known {
        return Err(ConvertError::unsupported(
            &at,
            "TLS settings other than SDS certificate, SDS validation context, SAN matching and ALPN",
        ));
    }
    let [cert] = c.tls_certificate_sds_secret_configs.as_slice() else {
        return Err(ConvertError::unsupported(
            format!("{at}.tls_certificate_sds_secret_configs"),
            "other than exactly one SDS certificate",
        ));
    };
    let certificate = sds_from(cert, &format!("{at}.tls_certificate_sds_secret_configs[0]"))?;
    let (validation, sans) = match &c.validation_context_type {
        Some(V::ValidationContextSdsSecretConfig(s)) => (
            sds_from(s, &format!("{at}.validation_context_sds_secret_config"))?,
            Vec::new(),
        ),
        Some(V::CombinedValidationContext(cv)) => {
            let at = format!("{at}.combined_validation_context");
            let Some(s) = &cv.validation_context_sds_secret_config else {
                return Err(ConvertError::new(
                    format!("{at}.validation_context_sds_secret_config"),
                    "missing",
                ));
            };
            let name = sds_from(s, &format!("{at}.validation_context_sds_secret_config"))?;
            let sans = match &cv.default_validation_context {
                Some(d) => uri_sans_from(d, &format!("{at}.default_validation_context"))?,
                None => Vec::new(),
            };
            (name, sans)
        }
        Some(_) => {
            return Err(ConvertError::unsupported(
                format!("{at}.validation_context_type"),
                "validation contexts other than SDS (optionally combined with SAN matching)",
            ))
        }
        None => {
            return Err(ConvertError::unsupported(
                format!("{at}.validation_context_type"),
                "TLS without peer verification (the mesh always verifies its peers)",
            ))
        }
    };
    Ok((certificate, validation, sans, c.alpn_protocols.clone()))
}

fn uri_sans_from(
    d: &tls::CertificateValidationContext,
    at: &str,
) -> Result<Vec<String>, ConvertError> {
    use tls::subject_alt_name_matcher::SanType;
    let only = tls::CertificateValidationContext {
        match_typed_subject_alt_names: d.match_typed_subject_alt_names.clone(),
        ..Default::default()
    };
    if *d != only {
        return Err(ConvertError::unsupported(
            at,
            "default validation settings other than match_typed_subject_alt_names",
        ));
    }
    let mut out = Vec::with_capacity(d.match_typed_subject_alt_names.len());
    for (i, m) in d.match_typed_subject_alt_names.iter().enumerate() {
        let at = format!("{at}.match_typed_subject_alt_names[{i}]");
        if m.san_type != SanType::Uri as i32 {
            return Err(ConvertError::unsupported(
                format!("{at}.san_type"),
                "SAN types other than URI",
            ));
        }
        match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
            Some(matcher::string_matcher::MatchPattern::Exact(s))
                if !m.matcher.as_ref().is_some_and(|m| m.ignore_case) =>
            {
                out.push(s.clone());
            }
            _ => {
                return Err(ConvertError::unsupported(
                    format!("{at}.matcher"),
                    "SAN matchers other than an exact, case-sensitive string",
                ))
            }
        }
    }
    Ok(out)
}

fn common_to(
    certificate: &str,
    validation: &str,
    sans: &[String],
    alpn: &[String],
) -> tls::CommonTlsContext {
    use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    use tls::subject_alt_name_matcher::SanType;
    let validation_context_type = if sans.is_empty() {
        ValidationContextType::ValidationContextSdsSecretConfig(sds(validation))
    } else {
        ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
            default_validation_context: Some(tls::CertificateValidationContext {
                match_typed_subject_alt_names: sans
                    .iter()
                    .map(|s| tls::SubjectAltNameMatcher {
                        san_type: SanType::Uri as i32,
                        matcher: Some(matcher::StringMatcher {
                            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                                s.clone(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(sds(validation)),
            ..Default::default()
        })
    };
    tls::CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(certificate)],
        validation_context_type: Some(validation_context_type),
        alpn_protocols: alpn.to_vec(),
        ..Default::default()
    }
}

/// A listener chain's TLS transport socket: client certificates always required (in
/// permissive mode the plaintext chain beside it takes what is not TLS).
pub(super) fn downstream_to(t: &DownstreamTls) -> core::TransportSocket {
    transport_socket(pack(&tls::DownstreamTlsContext {
        common_tls_context: Some(common_to(&t.certificate, &t.validation, &[], &t.alpn)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }))
}

/// A listener chain's transport socket back to the model (the mode is the caller's: it
/// depends on the chains around it). `at` is the transport socket's path.
pub(super) fn downstream_from(
    ts: &core::TransportSocket,
    at: &str,
) -> Result<DownstreamTls, ConvertError> {
    let cfg_at = format!("{at}.typed_config");
    let ctx: tls::DownstreamTlsContext = unpack(typed_config(ts, at)?, &cfg_at)?;
    let known = tls::DownstreamTlsContext {
        common_tls_context: ctx.common_tls_context.clone(),
        require_client_certificate: ctx.require_client_certificate,
        ..Default::default()
    };
    if ctx != known {
        return Err(ConvertError::unsupported(
            &cfg_at,
            "downstream TLS settings other than the common context and require_client_certificate",
        ));
    }
    if !ctx.require_client_certificate.is_some_and(|b| b.value) {
        return Err(ConvertError::unsupported(
            format!("{cfg_at}.require_client_certificate"),
            "TLS without client certificates (the mesh's inbound TLS is mutual)",
        ));
    }
    let (certificate, validation, sans, alpn) =
        common_from(ctx.common_tls_context.as_ref(), &cfg_at)?;
    if !sans.is_empty() {
        return Err(ConvertError::unsupported(
            format!("{cfg_at}.common_tls_context.combined_validation_context"),
            "matching client SANs in TLS (authorization is RBAC's)",
        ));
    }
    Ok(DownstreamTls {
        certificate,
        validation,
        mode: MtlsMode::Strict,
        alpn,
    })
}

/// A cluster's TLS transport socket.
pub(super) fn upstream_to(t: &UpstreamTls) -> core::TransportSocket {
    transport_socket(pack(&tls::UpstreamTlsContext {
        common_tls_context: Some(common_to(
            &t.certificate,
            &t.validation,
            &t.match_uri_sans,
            &t.alpn,
        )),
        sni: t.sni.clone().unwrap_or_default(),
        ..Default::default()
    }))
}

/// A cluster's transport socket back to the model.
pub(super) fn upstream_from(ts: &core::TransportSocket) -> Result<UpstreamTls, ConvertError> {
    let at = "transport_socket";
    let cfg_at = format!("{at}.typed_config");
    let ctx: tls::UpstreamTlsContext = unpack(typed_config(ts, at)?, &cfg_at)?;
    let known = tls::UpstreamTlsContext {
        common_tls_context: ctx.common_tls_context.clone(),
        sni: ctx.sni.clone(),
        ..Default::default()
    };
    if ctx != known {
        return Err(ConvertError::unsupported(
            &cfg_at,
            "upstream TLS settings other than the common context and sni",
        ));
    }
    let (certificate, validation, match_uri_sans, alpn) =
        common_from(ctx.common_tls_context.as_ref(), &cfg_at)?;
    Ok(UpstreamTls {
        certificate,
        validation,
        match_uri_sans,
        sni: (!ctx.sni.is_empty()).then_some(ctx.sni),
        alpn,
    })
}

// ---- listener chains ------------------------------------------------------------------------

/// A listener's TLS, read off its chains, and the listener as the plaintext chain logic sees it.
///
/// Two shapes carry TLS: strict (every chain has the same TLS transport socket, no chain
/// matches on the transport protocol) and permissive (Envoy's form: two chains with the same
/// filters, one matching `transport_protocol: "tls"` with the transport socket and one
/// plaintext; the `tls_inspector` listener filter tells them apart). Permissive listeners have
/// one chain kind (HTTP or TCP).
pub(super) fn split_tls(
    p: &lpb::Listener,
) -> Result<(Option<DownstreamTls>, Option<lpb::Listener>), ConvertError> {
    let tls_match = |c: &lpb::FilterChain| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.transport_protocol.is_empty())
    };
    let any_tls = p
        .filter_chains
        .iter()
        .chain(&p.default_filter_chain)
        .any(|c| c.transport_socket.is_some() || tls_match(c));
    if !any_tls {
        return Ok((None, None));
    }
    let tls_only = lpb::FilterChainMatch {
        transport_protocol: "tls".to_owned(),
        ..Default::default()
    };
    if let [a, b] = p.filter_chains.as_slice() {
        for ((ti, t), (_, plain)) in [((0, a), (1, b)), ((1, b), (0, a))] {
            if t.filter_chain_match.as_ref() == Some(&tls_only)
                && plain.filter_chain_match.is_none()
                && plain.transport_socket.is_none()
                && p.default_filter_chain.is_none()
            {
                let at = format!("filter_chains[{ti}]");
                if t.filters != plain.filters {
                    return Err(ConvertError::unsupported(
                        format!("{at}.filters"),
                        "a TLS chain whose filters differ from the plaintext chain's",
                    ));
                }
                let Some(ts) = &t.transport_socket else {
                    return Err(ConvertError::new(
                        format!("{at}.transport_socket"),
                        "missing on the chain matching transport_protocol \"tls\"",
                    ));
                };
                let mut tls = downstream_from(ts, &format!("{at}.transport_socket"))?;
                tls.mode = MtlsMode::Permissive;
                let plain_listener = lpb::Listener {
                    filter_chains: vec![plain.clone()],
                    ..p.clone()
                };
                return Ok((Some(tls), Some(plain_listener)));
            }
        }
    }
    // Strict: the same transport socket on every chain, no transport-protocol match.
    let mut plain = p.clone();
    let mut found: Option<(String, &core::TransportSocket)> = None;
    let chains = plain
        .filter_chains
        .iter_mut()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            plain
                .default_filter_chain
                .iter_mut()
                .map(|c| ("default_filter_chain".to_owned(), c)),
        );
    let originals: Vec<&lpb::FilterChain> = p
        .filter_chains
        .iter()
        .chain(&p.default_filter_chain)
        .collect();
    for ((at, chain), orig) in chains.zip(originals) {
        if tls_match(chain) {
            return Err(ConvertError::unsupported(
                format!("{at}.filter_chain_match.transport_protocol"),
                "transport-protocol matching other than permissive mTLS (a TLS chain and a plaintext chain with the same filters)",
            ));
        }
        let Some(ts) = &orig.transport_socket else {
            return Err(ConvertError::unsupported(
                format!("{at}.transport_socket"),
                "TLS on some chains only (strict mTLS puts it on every chain)",
            ));
        };
        match &found {
            Some((first, t)) if *t != ts => {
                return Err(ConvertError::unsupported(
                    format!("{at}.transport_socket"),
                    format!("a TLS setting that differs from {first}'s"),
                ))
            }
            Some(_) => {}
            None => found = Some((at.clone(), ts)),
        }
        chain.transport_socket = None;
    }
    let Some((at, ts)) = found else {
        return Ok((None, None));
    };
    let tls = downstream_from(ts, &format!("{at}.transport_socket"))?;
    Ok((Some(tls), Some(plain)))
}

/// Puts a listener's TLS on its chains (see [`split_tls`] for the shapes).
pub(super) fn join_tls(
    tls: &DownstreamTls,
    chains: &mut Vec<lpb::FilterChain>,
    default_chain: &mut Option<lpb::FilterChain>,
    listener_filters: &mut Vec<lpb::ListenerFilter>,
) {
    let ts = downstream_to(tls);
    match (tls.mode, chains.as_slice(), &default_chain) {
        (MtlsMode::Permissive, [plain], None) => {
            let mut secure = plain.clone();
            secure.transport_socket = Some(ts);
            secure.filter_chain_match = Some(lpb::FilterChainMatch {
                transport_protocol: "tls".to_owned(),
                ..Default::default()
            });
            chains.insert(0, secure);
            listener_filters.insert(
                0,
                lpb::ListenerFilter {
                    name: TLS_INSPECTOR.to_owned(),
                    config_type: Some(lpb::listener_filter::ConfigType::TypedConfig(pack(
                        &envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default(),
                    ))),
                    ..Default::default()
                },
            );
        }
        // Strict, or a listener with an HTTP and a TCP chain (served strict: see MESH_YAML.md).
        _ => {
            for c in chains.iter_mut().chain(default_chain.iter_mut()) {
                c.transport_socket = Some(ts.clone());
            }
        }
    }
}

#[cfg(test)]
#[path = "tests_tls.rs"]
mod tests;
