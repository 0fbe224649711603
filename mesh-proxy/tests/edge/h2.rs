//! Raw HTTP/2 for the edge tests: frames built by hand, a reader of the frames that come back,
//! and a normal h2c request through the `h2` client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::{Edge, CASE_BOUND};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

/// One frame on the wire: a 9-byte header (24-bit length, type, flags, 31-bit stream id) and
/// the payload. `length` overrides the payload's length (a frame past the peer's maximum).
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8], length: Option<u32>) -> Vec<u8> {
    let len = length.unwrap_or(u32::try_from(payload.len()).unwrap());
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    if length.is_none() {
        f.extend_from_slice(payload);
    }
    f
}

/// Opens a connection and writes the preface, an empty SETTINGS, `frames` and a PING
/// (`liveness`).
pub fn open(addr: std::net::SocketAddr, frames: &[Vec<u8>]) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(CASE_BOUND)).unwrap();
    s.set_write_timeout(Some(CASE_BOUND)).unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[], None));
    for f in frames {
        out.extend_from_slice(f);
    }
    out.extend(frame(PING, 0, 0, b"liveness", None));
    // A server that gave up on the connection may close before reading it all.
    let _ = s.write_all(&out);
    Ok(s)
}

/// Whether a frame is the ACK of [`open`]'s PING.
pub fn is_liveness_ack(ty: u8, flags: u8, payload: &[u8]) -> bool {
    ty == PING && flags & 0x1 == 1 && payload == b"liveness"
}

/// The error code of a GOAWAY or RST_STREAM payload.
pub fn error_code(ty: u8, payload: &[u8]) -> Option<u32> {
    let at = match ty {
        GOAWAY => 4,
        RST_STREAM => 0,
        _ => return None,
    };
    Some(u32::from_be_bytes(
        payload.get(at..at + 4)?.try_into().ok()?,
    ))
}

/// RST_STREAM's frame type.
pub const RST_STREAM: u8 = 0x3;

/// Reads frames (type, flags, stream, payload) until `f` answers, within [`CASE_BOUND`] of
/// `started`; the peer closing first is an error.
pub fn read_until<T>(
    s: &mut TcpStream,
    started: Instant,
    mut f: impl FnMut(u8, u8, u32, &[u8]) -> Option<T>,
) -> Result<T, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            if let Some(t) = f(ty, flags, stream, &payload) {
                return Ok(t);
            }
        }
        if started.elapsed() >= CASE_BOUND {
            return Err(format!("no answer within {CASE_BOUND:?}"));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed without a GOAWAY".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A normal HTTP/2 request through the `h2` client: the sidecar still serves h2c.
pub fn h2_request_is_200(edge: &Edge) -> Result<(), String> {
    edge.rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (client, conn) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get("http://a/h2").body(()).unwrap();
        let mut client = client.ready().await.map_err(|e| e.to_string())?;
        let (resp, _) = client.send_request(req, true).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(CASE_BOUND, resp)
            .await
            .map_err(|_| "no h2 response in time".to_string())?
            .map_err(|e| e.to_string())?;
        conn.abort();
        (resp.status() == 200)
            .then_some(())
            .ok_or_else(|| format!("h2 status {}", resp.status()))
    })
}
