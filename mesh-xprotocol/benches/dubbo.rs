//! Cost of `DubboCodec::decode` per frame: a small request (routing fields decoded), a request
//! with ~200 KB of arguments (skipped to reach the attachments), and a response of the same size
//! (cut by its header alone), plus the id rewrite.
//!
//! `cargo bench -p mesh-xprotocol --bench dubbo -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_xprotocol::dubbo::header::Header;
use mesh_xprotocol::dubbo::hessian2::write_string;
use mesh_xprotocol::{DubboCodec, XCodec};

const ATTACHMENTS: [(&str, &str); 5] = [
    ("path", "org.example.Greeter"),
    ("interface", "org.example.Greeter"),
    ("version", "1.0.0"),
    ("group", "blue"),
    ("timeout", "3000"),
];

fn frame(flag: u8, body: &[u8]) -> Vec<u8> {
    let header = Header {
        flag,
        status: 20,
        request_id: 1,
        body_len: body.len(),
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(body);
    out
}

/// A request as a dubbo consumer writes it, with `desc` and pre-encoded `args`.
fn request(desc: &str, args: &[u8]) -> Vec<u8> {
    let mut body = BytesMut::new();
    for s in ["2.0.2", "org.example.Greeter", "1.0.0", "sayHello", desc] {
        write_string(&mut body, s);
    }
    body.put_slice(args);
    body.put_u8(b'H');
    for (k, v) in ATTACHMENTS {
        write_string(&mut body, k);
        write_string(&mut body, v);
    }
    body.put_u8(b'Z');
    frame(0xc2, &body)
}

/// ~200 KB of arguments: a 64K-character string (chunked), 64 KiB of binary (chunked), a list of
/// 10,000 ints and a map of 1,000 string entries.
fn big_args() -> (&'static str, Vec<u8>) {
    let mut args = BytesMut::new();
    write_string(&mut args, &"x".repeat(65_536));
    args.put_u8(b'A');
    args.put_u16(32_768);
    args.put_slice(&[7; 32_768]);
    args.put_u8(b'B');
    args.put_u16(32_768);
    args.put_slice(&[7; 32_768]);
    args.put_u8(b'X');
    args.put_u8(b'I');
    args.put_i32(10_000);
    for i in 0..10_000 {
        args.put_u8(b'I');
        args.put_i32(i);
    }
    args.put_u8(b'H');
    for i in 0..1_000 {
        write_string(&mut args, &format!("key-{i}"));
        write_string(&mut args, "value");
    }
    args.put_u8(b'Z');
    (
        "Ljava/lang/String;[BLjava/util/List;Ljava/util/Map;",
        args.to_vec(),
    )
}

fn bench(c: &mut Criterion) {
    let small = request("Ljava/lang/String;", b"\x05world");
    let (desc, args) = big_args();
    let big = request(desc, &args);
    let response = frame(0x02, &big[16..]);
    let mut group = c.benchmark_group("dubbo_decode");
    for (name, bytes) in [
        ("small_request", &small),
        ("big_request_skipped_args", &big),
        ("big_response_header_only", &response),
    ] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&bytes[..]);
                black_box(DubboCodec.decode(&mut buf, 1 << 20).ok().flatten())
            })
        });
    }
    group.finish();
    let mut frame = DubboCodec
        .decode(&mut BytesMut::from(&small[..]), 1 << 20)
        .ok()
        .flatten()
        .expect("the small request decodes");
    c.bench_function("dubbo_set_request_id", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            DubboCodec.set_request_id(&mut frame, black_box(id));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
