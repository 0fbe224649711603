//! The codec without sockets: requests, responses, heartbeats, split reads, garbage, oversize.

use bytes::BufMut;

use super::hessian2::{write_string, Reader};
use super::*;
use crate::XCodec;

const MAX: usize = 1 << 20;

/// A request frame as a dubbo 2.7 consumer writes it, with `args` as raw hessian2 values.
fn request(id: u64, flag: u8, desc: &str, args: &[u8], attachments: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    for s in ["2.0.2", "org.example.Greeter", "1.0.0", "sayHello", desc] {
        write_string(&mut body, s);
    }
    body.extend_from_slice(args);
    body.put_u8(b'H');
    for (k, v) in attachments {
        write_string(&mut body, k);
        write_string(&mut body, v);
    }
    body.put_u8(b'Z');
    frame(flag, 0, id, &body)
}

fn frame(flag: u8, status: u8, id: u64, body: &[u8]) -> Vec<u8> {
    Header::frame(flag, status, id, body).to_vec()
}

const TWO_WAY_REQ: u8 = 0x80 | 0x40 | HESSIAN2;

/// Arguments of several shapes: a string, an int, a typed map, an object with its class def.
fn mixed_args() -> (&'static str, Vec<u8>) {
    let mut args = b"\x05world\xd4\x08\x00".to_vec();
    args.extend(b"M\x0djava.util.Map\x03key\x91Z");
    args.extend(b"C\x03Car\x91\x05colorO\x90\x03red");
    ("Ljava/lang/String;ILjava/util/Map;Lexample/Car;", args)
}

#[test]
fn request_decodes_routing_fields_and_skips_arguments() {
    let (desc, args) = mixed_args();
    let bytes = request(
        7,
        TWO_WAY_REQ,
        desc,
        &args,
        &[
            ("group", "blue"),
            ("interface", "org.example.Greeter"),
            ("version", "1.0.0"),
            ("timeout", "3000"),
        ],
    );
    let mut buf = BytesMut::from(&bytes[..]);
    let f = DubboCodec.decode(&mut buf, MAX).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(f.kind, FrameKind::Request { oneway: false });
    assert_eq!(f.request_id, 7);
    assert_eq!(f.status, None);
    assert_eq!(f.header.service, "org.example.Greeter");
    assert_eq!(f.header.method, "sayHello");
    let a: Vec<(&str, &str)> = f
        .header
        .attachments
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        a,
        [
            ("dubbo", "2.0.2"),
            ("path", "org.example.Greeter"),
            ("version", "1.0.0"),
            ("group", "blue"),
            ("interface", "org.example.Greeter"),
            ("timeout", "3000")
        ]
    );
    assert_eq!(&f.raw[..], &bytes[..], "the frame passes through untouched");
}

#[test]
fn oneway_requests_and_non_string_attachments() {
    // an int-valued attachment is skipped, not a decode error
    let mut bytes = request(1, 0x80 | HESSIAN2, "", &[], &[("group", "g")]);
    let z = bytes.len() - 1;
    bytes.splice(z..z, *b"\x01n\x95");
    let body_len = (bytes.len() - 16) as i32;
    bytes[12..16].copy_from_slice(&body_len.to_be_bytes());
    let f = DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), MAX)
        .unwrap()
        .unwrap();
    assert_eq!(f.kind, FrameKind::Request { oneway: true });
    assert!(f.header.attachments.contains(&("group".into(), "g".into())));
    assert!(!f.header.attachments.iter().any(|(k, _)| k == "n"));
}

#[test]
fn split_reads_wait_for_the_whole_frame() {
    let (desc, args) = mixed_args();
    let one = request(1, TWO_WAY_REQ, desc, &args, &[("group", "a")]);
    let two = request(2, TWO_WAY_REQ, "", &[], &[]);
    let stream: Vec<u8> = one.iter().chain(&two).copied().collect();
    let mut buf = BytesMut::new();
    let mut ids = Vec::new();
    for byte in stream {
        buf.put_u8(byte);
        while let Some(f) = DubboCodec.decode(&mut buf, MAX).unwrap() {
            ids.push(f.request_id);
        }
    }
    assert_eq!(ids, [1, 2]);
    assert!(buf.is_empty());
}

#[test]
fn garbage_is_refused_at_the_first_byte() {
    for junk in [&b"GET / HTTP/1.1\r\n"[..], &[0xda, 0x00], &[0x00]] {
        let err = DubboCodec
            .decode(&mut BytesMut::from(junk), MAX)
            .unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Malformed {
                    protocol: "dubbo",
                    ..
                }
            ),
            "{err}"
        );
    }
    // a negative body length
    let mut bytes = frame(TWO_WAY_REQ, 0, 1, b"");
    bytes[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    assert!(DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), MAX)
        .is_err());
}

/// The request a bad body is reported with, asserting it is one.
fn bad_request(bytes: &[u8]) -> (String, Box<Frame>) {
    match DubboCodec.decode(&mut BytesMut::from(bytes), MAX) {
        Err(CodecError::BadRequest {
            protocol: "dubbo",
            reason,
            frame,
        }) => (reason, frame),
        other => panic!("not a bad request: {other:?}"),
    }
}

#[test]
fn bad_bodies_are_bad_requests_answered_under_their_id() {
    // a body that is not a dubbo invocation names the field
    let (reason, f) = bad_request(&frame(TWO_WAY_REQ, 0, 9, b"\x052.0.2\x91"));
    assert!(reason.contains("request body: service path"), "{reason}");
    assert_eq!(
        (f.kind, f.request_id),
        (FrameKind::Request { oneway: false }, 9)
    );
    // a descriptor promising more arguments than the body holds
    let (reason, _) = bad_request(&request(3, TWO_WAY_REQ, "III", b"\x91", &[]));
    assert!(reason.contains("argument 2"), "{reason}");
    // a non-hessian2 request body is refused, not misread
    let (reason, f) = bad_request(&frame(0x80 | 0x40 | 6, 0, 4, b"{}"));
    assert!(reason.contains("serialization id 6"), "{reason}");
    // the answer: BAD_REQUEST (40) under the request's id, in the request's serialization,
    // with a message the client raises
    let resp = DubboCodec.error_response(&f, XError::Malformed);
    let r = DubboCodec
        .decode(&mut BytesMut::from(&resp[..]), MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.kind, r.request_id, r.status),
        (FrameKind::Response, 4, Some(u16::from(status::BAD_REQUEST)))
    );
    assert_eq!(resp[2], 6);
    // a oneway one is reported as oneway (the proxy does not answer it)
    let (_, f) = bad_request(&frame(0x80 | HESSIAN2, 0, 5, b"\x91"));
    assert_eq!(f.kind, FrameKind::Request { oneway: true });
}

#[test]
fn a_bad_body_is_cut_out_and_the_next_frame_decodes() {
    let mut buf = BytesMut::from(&frame(TWO_WAY_REQ, 0, 1, b"\x91\x92")[..]);
    buf.extend_from_slice(&request(2, TWO_WAY_REQ, "", &[], &[]));
    let Err(CodecError::BadRequest { frame: bad, .. }) = DubboCodec.decode(&mut buf, MAX) else {
        panic!("not a bad request");
    };
    assert_eq!((bad.request_id, bad.raw.len()), (1, HEADER_LEN + 2));
    let next = DubboCodec.decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(
        (next.request_id, next.header.method.as_str()),
        (2, "sayHello")
    );
    assert!(buf.is_empty());
}

#[test]
fn events_other_than_heartbeats_are_read_only_notices() {
    let event = |body: &[u8], flag: u8| {
        let bytes = frame(0x80 | flag | header::FLAG_EVENT | HESSIAN2, 0, 8, body);
        DubboCodec
            .decode(&mut BytesMut::from(&bytes[..]), MAX)
            .unwrap()
            .unwrap()
            .kind
    };
    // Apache Dubbo's HeaderExchangeServer sends `R` one-way before it shuts down
    assert_eq!(
        event(b"\x01R", 0),
        FrameKind::Event {
            read_only: Some(true)
        }
    );
    assert_eq!(
        event(b"\x01W", 0),
        FrameKind::Event {
            read_only: Some(false)
        }
    );
    assert_eq!(
        event(b"\x03zzz", 0x40),
        FrameKind::Event { read_only: None }
    );
    assert_eq!(event(b"\x91", 0x40), FrameKind::Event { read_only: None });
    // the serialized null (and an empty body) is a heartbeat; one without the two-way bit is
    // not answered by Dubbo, so it is an event
    assert_eq!(event(b"N", 0x40), FrameKind::HeartbeatRequest);
    assert_eq!(event(b"", 0x40), FrameKind::HeartbeatRequest);
    assert_eq!(event(b"N", 0), FrameKind::Event { read_only: None });
    // an event response stays a heartbeat response
    let bytes = frame(header::FLAG_EVENT | HESSIAN2, status::OK, 8, b"\x01R");
    let f = DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), MAX)
        .unwrap()
        .unwrap();
    assert_eq!(f.kind, FrameKind::HeartbeatResponse);
}

#[test]
fn oversize_is_refused_from_the_header_alone() {
    let mut header_only = BytesMut::from(&frame(TWO_WAY_REQ, 0, 1, &[])[..]);
    header_only[12..16].copy_from_slice(&(1_000_000i32).to_be_bytes());
    let err = DubboCodec.decode(&mut header_only, 4096).unwrap_err();
    assert_eq!(
        err,
        CodecError::TooLarge {
            protocol: "dubbo",
            len: 1_000_016,
            limit: 4096
        }
    );
    // exactly at the limit is fine
    let bytes = request(1, TWO_WAY_REQ, "", &[], &[]);
    assert!(DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), bytes.len())
        .unwrap()
        .is_some());
    assert!(DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), bytes.len() - 1)
        .is_err());
}

#[test]
fn responses_and_heartbeats_are_cut_by_header() {
    // an OK response: body int 1 (RESPONSE_VALUE) then the value, never parsed
    let bytes = frame(HESSIAN2, status::OK, 42, b"\x91\x02hi");
    let f = DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        (f.kind, f.request_id, f.status),
        (FrameKind::Response, 42, Some(20))
    );
    assert!(
        DubboCodec.is_success(&f),
        "OK (20) is success, not bolt's 0"
    );
    // a heartbeat request gets dubbo's heartbeat response: OK, event bit, null body
    let hb = frame(TWO_WAY_REQ | header::FLAG_EVENT, 0, 5, b"N");
    let f = DubboCodec
        .decode(&mut BytesMut::from(&hb[..]), MAX)
        .unwrap()
        .unwrap();
    assert_eq!(f.kind, FrameKind::HeartbeatRequest);
    let resp = DubboCodec.heartbeat_response(&f);
    assert_eq!(
        &resp[..],
        &frame(HESSIAN2 | header::FLAG_EVENT, status::OK, 5, b"N")[..]
    );
    let f = DubboCodec
        .decode(&mut BytesMut::from(&resp[..]), MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        (f.kind, f.request_id, f.status),
        (FrameKind::HeartbeatResponse, 5, Some(20))
    );
}

#[test]
fn request_id_rewrite_round_trips() {
    let bytes = request(
        0x0102_0304_0506_0708,
        TWO_WAY_REQ,
        "",
        &[],
        &[("group", "g")],
    );
    let mut f = DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), MAX)
        .unwrap()
        .unwrap();
    DubboCodec.set_request_id(&mut f, u64::MAX - 1);
    let mut again = f.raw.clone();
    let g = DubboCodec.decode(&mut again, MAX).unwrap().unwrap();
    assert_eq!(g.request_id, u64::MAX - 1);
    assert_eq!(g.header, f.header);
    DubboCodec.set_request_id(&mut f, 0x0102_0304_0506_0708);
    assert_eq!(&f.raw[..], &bytes[..]);
}

#[test]
fn error_responses_in_dubbo_form() {
    let bytes = request(77, TWO_WAY_REQ, "", &[], &[]);
    let req = DubboCodec
        .decode(&mut BytesMut::from(&bytes[..]), MAX)
        .unwrap()
        .unwrap();
    let cases = [
        (XError::NoProvider, status::SERVICE_NOT_FOUND),
        (XError::Timeout, status::SERVER_TIMEOUT),
        (
            XError::Overloaded,
            status::SERVER_THREADPOOL_EXHAUSTED_ERROR,
        ),
        (XError::UpstreamFailure, status::SERVER_ERROR),
        (XError::Malformed, status::BAD_REQUEST),
    ];
    for (error, want) in cases {
        let resp = DubboCodec.error_response(&req, error);
        let f = DubboCodec
            .decode(&mut BytesMut::from(&resp[..]), MAX)
            .unwrap()
            .unwrap();
        assert_eq!(
            (f.kind, f.request_id, f.status),
            (FrameKind::Response, 77, Some(u16::from(want)))
        );
        assert!(!DubboCodec.is_success(&f));
        assert_eq!(resp[2], HESSIAN2, "response flag: serialization id only");
        let message = Reader::new(&resp[16..])
            .read_string()
            .unwrap()
            .unwrap()
            .into_owned();
        assert_eq!(message, DubboCodec::error_status(error).1);
    }
}

#[test]
fn mutated_real_shaped_frames_never_panic() {
    let (desc, args) = mixed_args();
    let good = request(
        3,
        TWO_WAY_REQ,
        desc,
        &args,
        &[("group", "g"), ("version", "2")],
    );
    for i in 0..good.len() {
        for value in [0x00, 0xff, b'Z', b'C', b'O', b'R', 0x30, good[i] ^ 0x80] {
            let mut bytes = good.clone();
            bytes[i] = value;
            let mut buf = BytesMut::from(&bytes[..]);
            // Any outcome but a panic is fine; a frame never takes more than was there.
            if let Ok(Some(f)) = DubboCodec.decode(&mut buf, MAX) {
                assert!(f.raw.len() <= bytes.len());
            }
        }
    }
    // A body cut short anywhere (with a matching length field) is an error, never a frame; but
    // for right after the arguments, where old clients end a body without attachments.
    let args_end = request(3, TWO_WAY_REQ, desc, &args, &[]).len() - 2;
    for cut in (HEADER_LEN..good.len() - 1).filter(|cut| *cut != args_end) {
        let mut bytes = good[..cut].to_vec();
        bytes[12..16].copy_from_slice(&((cut - HEADER_LEN) as i32).to_be_bytes());
        let got = DubboCodec.decode(&mut BytesMut::from(&bytes[..]), MAX);
        assert!(got.is_err(), "cut at {cut}: {got:?}");
    }
}
