//! `bench-rpcapp`: the chain benchmark's RPC app, answering every bolt or dubbo request with a
//! success response of about the request's size (a ~200-byte body) and the request's id;
//! heartbeats are answered as the protocol says.
//!
//! `bench-rpcapp 127.0.0.1:18602` (worker threads: `TOKIO_WORKER_THREADS`, default one per core).
//! One port serves both protocols: each connection's first byte tells them apart (bolt v1
//! starts with 0x01, dubbo with 0xda), as the sidecar's protocol detection does. Responses are a
//! prebuilt frame with the id patched in, so the app stays cheap and is never the bottleneck.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use mesh_xprotocol::bolt;
use mesh_xprotocol::dubbo::header::{Header, HESSIAN2};
use mesh_xprotocol::dubbo::hessian2::write_string;
use mesh_xprotocol::dubbo::{self, DubboCodec};
use mesh_xprotocol::{BoltCodec, FrameKind, XCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value every call returns (~190 bytes, about what the request carried).
const REPLY: &str = "Echo: the quick brown fox jumps over the lazy dog; the lazy dog sleeps on. \
                     Pack my box with five dozen liquor jugs. How vexingly quick daft zebras \
                     jump! Sphinx of black quartz, judge my vow.";
const MAX_FRAME: usize = 16 << 20;

/// A success response with id 0 (bolt: the SofaResponse's hessian2 value; dubbo: the
/// `RESPONSE_VALUE` marker and the string, as Apache Dubbo's `DecodeableRpcResult` reads it).
fn response(dubbo: bool) -> Bytes {
    let mut body = BytesMut::new();
    if dubbo {
        body.put_u8(0x91); // hessian2 int 1: RESPONSE_VALUE
        write_string(&mut body, REPLY);
        let header = Header {
            flag: HESSIAN2,
            status: dubbo::status::OK,
            request_id: 0,
            body_len: body.len(),
        };
        let mut out = BytesMut::with_capacity(16 + body.len());
        out.put_slice(&header.encode());
        out.put_slice(&body);
        return out.freeze();
    }
    write_string(&mut body, REPLY);
    bolt::response(
        bolt::CODEC_HESSIAN2,
        0,
        bolt::status::SUCCESS,
        bolt::CMD_RESPONSE,
        &body,
    )
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    if stream.read_buf(&mut rbuf).await? == 0 {
        return Ok(());
    }
    let is_dubbo = match rbuf[0] {
        bolt::PROTOCOL_V1 => false,
        0xda => true,
        b => {
            return Err(std::io::Error::other(format!(
                "unknown first byte 0x{b:02x}"
            )))
        }
    };
    let codec: &dyn XCodec = if is_dubbo { &DubboCodec } else { &BoltCodec };
    let template = response(is_dubbo);
    loop {
        while let Some(frame) = codec
            .decode(&mut rbuf, MAX_FRAME)
            .map_err(std::io::Error::other)?
        {
            match frame.kind {
                FrameKind::Request { oneway: false } => {
                    let at = wbuf.len();
                    wbuf.put_slice(&template);
                    if is_dubbo {
                        wbuf[at + 4..at + 12].copy_from_slice(&frame.request_id.to_be_bytes());
                    } else {
                        let id = (frame.request_id as u32).to_be_bytes();
                        wbuf[at + 5..at + 9].copy_from_slice(&id);
                    }
                }
                FrameKind::HeartbeatRequest => {
                    wbuf.put_slice(&codec.heartbeat_response(&frame));
                }
                _ => {}
            }
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18602".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("bench-rpcapp listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(e) = serve(stream).await {
                eprintln!("bench-rpcapp: connection ended: {e}");
            }
        });
    }
}
