use bytes::{BufMut, BytesMut};

use super::*;

const MAX: usize = 1 << 20;

fn sample(id: u32, oneway: bool, content: &[u8]) -> Bytes {
    request(&BoltRequest {
        id,
        codec: CODEC_HESSIAN2,
        timeout_ms: 3000,
        oneway,
        class: "com.alipay.sofa.rpc.core.request.SofaRequest",
        headers: &[
            (SERVICE_KEY, "com.example.Hello:1.0"),
            (METHOD_KEY, "sayHi"),
            ("sofa_head_target_app", "demo"),
        ],
        content,
    })
}

#[test]
fn decodes_a_request_and_leaves_the_body_untouched() {
    let wire = sample(7, false, b"\x01\x02body");
    let mut buf = BytesMut::from(&wire[..]);
    let frame = BoltCodec.decode(&mut buf, MAX).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(frame.kind, FrameKind::Request { oneway: false });
    assert_eq!(frame.request_id, 7);
    assert_eq!(frame.header.service, "com.example.Hello:1.0");
    assert_eq!(frame.header.method, "sayHi");
    assert_eq!(frame.header.attachments.len(), 3);
    assert_eq!(frame.status, None);
    assert_eq!(&frame.raw[..], &wire[..]);
}

#[test]
fn oneway_and_heartbeat_kinds() {
    let mut buf = BytesMut::from(&sample(1, true, b"")[..]);
    let f = BoltCodec.decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(f.kind, FrameKind::Request { oneway: true });

    let mut buf = BytesMut::from(&heartbeat_request(9)[..]);
    let hb = BoltCodec.decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(hb.kind, FrameKind::HeartbeatRequest);
    let ack = BoltCodec.heartbeat_response(&hb);
    let mut buf = BytesMut::from(&ack[..]);
    let ack = BoltCodec.decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(ack.kind, FrameKind::HeartbeatResponse);
    assert_eq!(ack.request_id, 9);
    assert_eq!(ack.status, Some(status::SUCCESS));
}

#[test]
fn decodes_a_response_with_its_status() {
    let wire = response(
        CODEC_HESSIAN2,
        42,
        status::SERVER_EXCEPTION,
        CMD_RESPONSE,
        b"xyz",
    );
    let mut buf = BytesMut::from(&wire[..]);
    let f = BoltCodec.decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(f.kind, FrameKind::Response);
    assert_eq!(f.request_id, 42);
    assert_eq!(f.status, Some(status::SERVER_EXCEPTION));
    assert_eq!(f.raw.len(), RESPONSE_HEADER_LEN + 3);
    assert!(!BoltCodec.is_success(&f));
    let ok = response(CODEC_HESSIAN2, 43, status::SUCCESS, CMD_RESPONSE, b"");
    let f = BoltCodec
        .decode(&mut BytesMut::from(&ok[..]), MAX)
        .unwrap()
        .unwrap();
    assert!(BoltCodec.is_success(&f));
}

#[test]
fn split_reads_decode_once_whole() {
    let a = sample(1, false, &[0xab; 300]);
    let b = sample(2, false, b"second");
    let mut wire = a.to_vec();
    wire.extend_from_slice(&b);
    // Feed one byte at a time: nothing comes out until a frame is whole, nothing is lost.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in wire {
        buf.put_u8(byte);
        while let Some(f) = BoltCodec.decode(&mut buf, MAX).unwrap() {
            got.push(f);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].raw[..], &a[..]);
    assert_eq!(&got[1].raw[..], &b[..]);
}

#[test]
fn garbage_is_malformed() {
    for bad in [
        &b"GET / HTTP/1.1\r\n"[..],
        &[0x01, 0x07, 0, 1],
        &[0x01, 0x00, 0, 1],
        &[0x02, 0x01],
    ] {
        let mut buf = BytesMut::from(bad);
        assert!(
            matches!(
                BoltCodec.decode(&mut buf, MAX),
                Err(CodecError::Malformed { .. })
            ),
            "{bad:?}"
        );
    }
    // A header map whose lengths overrun it, in an intact frame: a bad request, cut out and
    // answered with CODEC_EXCEPTION under its own id; the next frame decodes.
    let good = sample(4, false, b"");
    let mut wire = BytesMut::from(&sample(3, false, b"")[..]);
    let at = REQUEST_HEADER_LEN + "com.alipay.sofa.rpc.core.request.SofaRequest".len();
    wire[at..at + 4].copy_from_slice(&1000i32.to_be_bytes());
    wire.extend_from_slice(&good);
    let Err(CodecError::BadRequest { frame, reason, .. }) = BoltCodec.decode(&mut wire, MAX) else {
        panic!("not a bad request");
    };
    assert!(reason.contains("header key"), "{reason}");
    assert_eq!(frame.request_id, 3);
    let answer = BoltCodec.error_response(&frame, XError::Malformed);
    let r = BoltCodec
        .decode(&mut BytesMut::from(&answer[..]), MAX)
        .unwrap()
        .unwrap();
    assert_eq!((r.request_id, r.status), (3, Some(status::CODEC_EXCEPTION)));
    assert_eq!(&wire[..], &good[..]);
    let next = BoltCodec.decode(&mut wire, MAX).unwrap().unwrap();
    assert_eq!(next.request_id, 4);
}

#[test]
fn oversize_is_refused_from_the_header_alone() {
    let wire = sample(1, false, &[0; 2000]);
    // Only the fixed header has arrived: the declared length already decides.
    let mut buf = BytesMut::from(&wire[..REQUEST_HEADER_LEN]);
    match BoltCodec.decode(&mut buf, 1024) {
        Err(CodecError::TooLarge { len, limit, .. }) => {
            assert_eq!(len, wire.len());
            assert_eq!(limit, 1024);
        }
        other => panic!("{other:?}"),
    }
    let mut buf = BytesMut::from(&wire[..]);
    assert!(BoltCodec.decode(&mut buf, wire.len()).unwrap().is_some());
}

#[test]
fn request_id_is_rewritten_in_place() {
    let mut buf = BytesMut::from(&sample(5, false, b"body")[..]);
    let mut f = BoltCodec.decode(&mut buf, MAX).unwrap().unwrap();
    BoltCodec.set_request_id(&mut f, 0xdead_beef);
    assert_eq!(f.request_id, 0xdead_beef);
    let mut again = f.raw.clone();
    let g = BoltCodec.decode(&mut again, MAX).unwrap().unwrap();
    assert_eq!(g.request_id, 0xdead_beef);
    assert_eq!(g.header, f.header);
}

#[test]
fn error_responses_carry_the_mapped_status_and_the_id() {
    let mut buf = BytesMut::from(&sample(77, false, b"")[..]);
    let req = BoltCodec.decode(&mut buf, MAX).unwrap().unwrap();
    for (error, want) in [
        (XError::NoProvider, status::NO_PROCESSOR),
        (XError::Timeout, status::TIMEOUT),
        (XError::Overloaded, status::SERVER_THREADPOOL_BUSY),
        (XError::UpstreamFailure, status::CONNECTION_CLOSED),
        (XError::Malformed, status::CODEC_EXCEPTION),
    ] {
        let mut wire = BytesMut::from(&BoltCodec.error_response(&req, error)[..]);
        let r = BoltCodec.decode(&mut wire, MAX).unwrap().unwrap();
        assert_eq!(r.kind, FrameKind::Response);
        assert_eq!(r.request_id, 77);
        assert!(!BoltCodec.is_success(&r));
        assert_eq!(r.status, Some(want), "{error:?}");
    }
}
