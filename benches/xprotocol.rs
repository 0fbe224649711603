//! Cost of the bolt codec and the multiplexing state per request: decoding a request frame (as
//! a SOFARPC client writes it: class, three headers, a 200-byte body), rewriting its id through
//! `InFlight::insert`, and matching the response back (`complete` + id restore).
//!
//! `cargo bench -p mesh-benches --bench xprotocol -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use mesh_xprotocol::bolt::{self, BoltRequest};
use mesh_xprotocol::{BoltCodec, InFlight, XCodec};

fn request(id: u32) -> bytes::Bytes {
    bolt::request(&BoltRequest {
        id,
        codec: bolt::CODEC_HESSIAN2,
        timeout_ms: 3000,
        oneway: false,
        class: "com.alipay.sofa.rpc.core.request.SofaRequest",
        headers: &[
            ("service", "com.example.Hello:1.0"),
            ("sofa_head_method_name", "sayHi"),
            ("sofa_head_target_app", "demo"),
        ],
        content: &[0x42; 200],
    })
}

fn codec(c: &mut Criterion) {
    let wire = request(7);
    c.bench_function("bolt_decode_request", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            black_box(BoltCodec.decode(&mut buf, 1 << 20).ok().flatten())
        })
    });
    let response = bolt::response(1, 9, 0, bolt::CMD_RESPONSE, &[0x42; 200]);
    c.bench_function("bolt_decode_response", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&response[..]);
            black_box(BoltCodec.decode(&mut buf, 1 << 20).ok().flatten())
        })
    });
    // One request's whole multiplexing round: insert (id rewritten), complete, id restored.
    let mut buf = BytesMut::from(&wire[..]);
    let Ok(Some(frame)) = BoltCodec.decode(&mut buf, 1 << 20) else {
        return;
    };
    let mut map: InFlight<u32> = InFlight::new(10_000);
    let deadline = Instant::now() + Duration::from_secs(3);
    c.bench_function("mux_insert_complete", |b| {
        b.iter(|| {
            let mut f = frame.clone();
            let Ok(id) = map.insert(&BoltCodec, &mut f, 1, deadline) else {
                return;
            };
            if let Some(p) = map.complete(id) {
                BoltCodec.set_request_id(&mut f, p.original_id);
            }
            black_box(f.request_id);
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
