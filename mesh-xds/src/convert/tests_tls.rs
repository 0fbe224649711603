#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use mesh_core::{
    Cluster, Direction, DownstreamTls, HttpProtocolOptions, Listener, MtlsMode, Secret, SecretKind,
    TlsCertificate, UpstreamTls, ValidationContext,
};
use rcgen::{CertificateParams, KeyPair};

use crate::convert::{decode, encode, XdsResource};

fn self_signed(days_from: i64, days_to: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["x.test".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days_from);
    params.not_after = now + time::Duration::days(days_to);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn listener(tls: Option<DownstreamTls>) -> Listener {
    Listener {
        tls,
        rbac: None,
        xprotocol: None,
        name: "inbound".into(),
        address: ([127, 0, 0, 1], 8083).into(),
        direction: Direction::Inbound,
        route_config_name: "inbound".into(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    }
}

fn dtls(mode: MtlsMode) -> DownstreamTls {
    DownstreamTls {
        certificate: "default".into(),
        validation: "ROOTCA".into(),
        mode,
        alpn: vec!["h2".into(), "http/1.1".into()],
    }
}

#[test]
fn secrets_round_trip() {
    let (cert, key) = self_signed(-1, 1);
    for s in [
        Secret {
            name: "default".into(),
            kind: SecretKind::TlsCertificate(TlsCertificate {
                certificate_chain: cert.clone(),
                private_key: key,
            }),
        },
        Secret {
            name: "ROOTCA".into(),
            kind: SecretKind::ValidationContext(ValidationContext { trusted_ca: cert }),
        },
    ] {
        let back: Secret = decode(&encode(&s)).unwrap();
        assert_eq!(back, s);
    }
}

#[test]
fn expired_or_malformed_certificates_are_refused_by_path() {
    let (expired, key) = self_signed(-3, -1);
    let s = Secret {
        name: "default".into(),
        kind: SecretKind::TlsCertificate(TlsCertificate {
            certificate_chain: expired,
            private_key: key.clone(),
        }),
    };
    let err = decode::<Secret>(&encode(&s)).unwrap_err();
    assert_eq!(
        err.path,
        "secret[default].tls_certificate.certificate_chain[0]"
    );
    assert!(err.reason.contains("not valid now"), "{err}");

    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let s = Secret {
        name: "ROOTCA".into(),
        kind: SecretKind::ValidationContext(ValidationContext {
            trusted_ca: garbage.into(),
        }),
    };
    let err = decode::<Secret>(&encode(&s)).unwrap_err();
    assert!(
        err.path
            .starts_with("secret[ROOTCA].validation_context.trusted_ca"),
        "{err}"
    );

    let (cert, _) = self_signed(-1, 1);
    let s = Secret {
        name: "default".into(),
        kind: SecretKind::TlsCertificate(TlsCertificate {
            certificate_chain: cert.clone(),
            private_key: cert,
        }),
    };
    let err = decode::<Secret>(&encode(&s)).unwrap_err();
    assert_eq!(err.path, "secret[default].tls_certificate.private_key");
}

#[test]
fn strict_and_permissive_listeners_round_trip_in_envoys_shapes() {
    let strict = listener(Some(dtls(MtlsMode::Strict)));
    let p = strict.to_proto();
    assert_eq!(p.filter_chains.len(), 1);
    assert!(p.filter_chains[0].transport_socket.is_some());
    assert_eq!(decode::<Listener>(&encode(&strict)).unwrap(), strict);

    let permissive = listener(Some(dtls(MtlsMode::Permissive)));
    let p = permissive.to_proto();
    assert_eq!(p.filter_chains.len(), 2);
    assert_eq!(
        p.filter_chains[0]
            .filter_chain_match
            .as_ref()
            .unwrap()
            .transport_protocol,
        "tls"
    );
    assert!(p.filter_chains[1].transport_socket.is_none());
    assert_eq!(p.listener_filters[0].name, super::TLS_INSPECTOR);
    assert_eq!(
        decode::<Listener>(&encode(&permissive)).unwrap(),
        permissive
    );

    let plain = listener(None);
    assert_eq!(decode::<Listener>(&encode(&plain)).unwrap(), plain);
}

#[test]
fn listener_tls_we_cannot_serve_is_refused_by_path() {
    // TLS without client certificates.
    let mut p = listener(Some(dtls(MtlsMode::Strict))).to_proto();
    let ts = p.filter_chains[0].transport_socket.as_mut().unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &mut ts.config_type
    else {
        panic!()
    };
    let mut ctx: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext =
        crate::convert::unpack(any, "").unwrap();
    ctx.require_client_certificate = None;
    *any = crate::convert::pack(&ctx);
    let err = crate::convert::from_proto_checked::<Listener>(p).unwrap_err();
    assert_eq!(
        err.path,
        "listener[inbound].filter_chains[0].transport_socket.typed_config.require_client_certificate"
    );

    // A TLS chain beside a plaintext one with no transport-protocol match.
    let mut p = listener(Some(dtls(MtlsMode::Strict))).to_proto();
    let mut plain = p.filter_chains[0].clone();
    plain.transport_socket = None;
    plain.filter_chain_match = Some(lpb::FilterChainMatch {
        application_protocols: vec!["h2c".into()],
        ..Default::default()
    });
    p.filter_chains.push(plain);
    let err = crate::convert::from_proto_checked::<Listener>(p).unwrap_err();
    assert_eq!(
        err.path,
        "listener[inbound].filter_chains[1].transport_socket"
    );
}

#[test]
fn upstream_tls_round_trips_with_uri_san_matching() {
    let mut c = Cluster::new("orders");
    c.tls = Some(UpstreamTls {
        certificate: "default".into(),
        validation: "ROOTCA".into(),
        match_uri_sans: vec!["spiffe://mesh.local/ns/default/sa/orders".into()],
        sni: Some("orders".into()),
        alpn: vec!["h2".into()],
    });
    assert_eq!(decode::<Cluster>(&encode(&c)).unwrap(), c);
    c.tls.as_mut().unwrap().match_uri_sans.clear();
    c.tls.as_mut().unwrap().sni = None;
    assert_eq!(decode::<Cluster>(&encode(&c)).unwrap(), c);
}

#[test]
fn upstream_tls_from_files_is_refused_by_path() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let mut c = Cluster::new("orders");
    c.tls = Some(UpstreamTls {
        certificate: "default".into(),
        validation: "ROOTCA".into(),
        match_uri_sans: Vec::new(),
        sni: None,
        alpn: Vec::new(),
    });
    let mut p = c.to_proto();
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate::default()],
            ..Default::default()
        }),
        ..Default::default()
    };
    p.transport_socket.as_mut().unwrap().config_type = Some(
        envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            crate::convert::pack(&ctx),
        ),
    );
    let err = crate::convert::from_proto_checked::<Cluster>(p).unwrap_err();
    assert_eq!(
        err.path,
        "cluster[orders].transport_socket.typed_config.common_tls_context"
    );
}
