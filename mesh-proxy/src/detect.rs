//! Protocol detection: what a client speaks, from the first bytes it sent.
//!
//! [`detect`] is a pure function over the prefix read so far; the accept path (see
//! `crate::accept`) reads into a small buffer, calls it after every read until it decides, and
//! replays the bytes to whichever side serves the connection. Nothing here does I/O.
//!
//! What each answer needs (and why it is enough):
//! - **HTTP/2 prior knowledge**: the whole 24-byte client preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`
//!   (as hyper-util's auto server checks it).
//! - **TLS**: a handshake record header, `0x16 0x03 0x00..=0x04` (what Envoy's
//!   `tls_inspector` looks for before parsing the ClientHello).
//! - **HTTP/1.x**: a request line's method: an RFC 9110 token then a space. What follows is
//!   hyper's to judge (a malformed request still gets its 400 from hyper), so detection
//!   never buffers a whole request line.
//! - **bolt** (SOFARPC): protocol code `0x01` (v1) or `0x02` with version `0x01` (v2), then a
//!   type byte (response, request, oneway) and a command code (heartbeat, request, response).
//!   MOSN's own matcher checks the first byte alone; the extra bytes keep a binary protocol
//!   that happens to start with `0x01` from being taken for bolt.
//! - **dubbo**: the magic `0xda 0xbb`.
//! - Anything else is **opaque**.

/// The longest prefix detection needs (the HTTP/2 preface). A caller that has read this many
/// bytes always gets an answer other than [`Detection::NeedMore`].
pub const MAX_PREFIX: usize = H2_PREFACE.len();

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest method accepted as HTTP/1, so that a method, its space and a target byte fit in
/// [`MAX_PREFIX`] (the longest registered method, `UPDATEREDIRECTREF`, has
/// 17 characters; extension methods get some room).
const MAX_METHOD: usize = MAX_PREFIX - 2;

/// What a prefix says about the connection's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// Not decided yet: read more (or give up at the detection timeout).
    NeedMore,
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface (h2c, gRPC).
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// SOFA bolt (v1 or v2).
    Bolt,
    /// Apache Dubbo.
    Dubbo,
    /// None of the above.
    Opaque,
}

impl Detection {
    /// A short name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeedMore => "undecided",
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tls => "tls",
            Self::Bolt => "bolt",
            Self::Dubbo => "dubbo",
            Self::Opaque => "opaque",
        }
    }

    /// Whether the HTTP server takes it.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http1 | Self::Http2)
    }
}

/// Classifies a connection by the bytes it sent first.
pub fn detect(prefix: &[u8]) -> Detection {
    let Some(&first) = prefix.first() else {
        return Detection::NeedMore;
    };
    match first {
        0x16 => tls(prefix),
        0x01 | 0x02 => bolt(prefix),
        0xda => dubbo(prefix),
        b'P' => {
            // `PRI * HTTP/2.0`… or an HTTP/1 method starting with P (POST, PUT, PATCH).
            let n = prefix.len().min(H2_PREFACE.len());
            if prefix[..n] == H2_PREFACE[..n] {
                if n == H2_PREFACE.len() {
                    Detection::Http2
                } else {
                    Detection::NeedMore
                }
            } else {
                http1(prefix)
            }
        }
        _ => http1(prefix),
    }
}

fn tls(p: &[u8]) -> Detection {
    match p {
        [0x16] | [0x16, 0x03] => Detection::NeedMore,
        [0x16, 0x03, minor, ..] if *minor <= 0x04 => Detection::Tls,
        _ => Detection::Opaque,
    }
}

fn bolt(p: &[u8]) -> Detection {
    // v1: proto, type, cmdcode (2 bytes); v2: proto, ver1, type, cmdcode (2 bytes).
    let (header, need) = match p[0] {
        0x01 => (&p[1..], 3),
        _ => match p.get(1) {
            None => return Detection::NeedMore,
            Some(0x01) => (&p[2..], 3),
            Some(_) => return Detection::Opaque,
        },
    };
    if header.len() < need {
        // Each byte seen so far must still fit.
        let fits = match header {
            [] => true,
            [ty] => *ty <= 2,
            [ty, hi, ..] => *ty <= 2 && *hi == 0,
        };
        return if fits {
            Detection::NeedMore
        } else {
            Detection::Opaque
        };
    }
    let (ty, cmd) = (header[0], u16::from_be_bytes([header[1], header[2]]));
    if ty <= 2 && cmd <= 2 {
        Detection::Bolt
    } else {
        Detection::Opaque
    }
}

fn dubbo(p: &[u8]) -> Detection {
    match p {
        [0xda] => Detection::NeedMore,
        [0xda, 0xbb, ..] => Detection::Dubbo,
        _ => Detection::Opaque,
    }
}

/// A request line's start: a method, a space, and the first byte of a request target.
///
/// Methods are RFC 9110 tokens, but every method in use (and every one Envoy's `http_inspector`
/// knows) is upper-case letters, `-` or `_`; accepting only those keeps other text protocols
/// (an SSH banner, `SSH-2.0-…`) out. The target starts with `/` (origin form), `*` (asterisk
/// form) or a letter or digit (absolute and authority forms).
fn http1(p: &[u8]) -> Detection {
    for (i, &b) in p.iter().enumerate() {
        if b == b' ' {
            if i == 0 {
                return Detection::Opaque;
            }
            return match p.get(i + 1) {
                None => Detection::NeedMore,
                Some(t) if *t == b'/' || *t == b'*' || t.is_ascii_alphanumeric() => {
                    Detection::Http1
                }
                Some(_) => Detection::Opaque,
            };
        }
        if !(b.is_ascii_uppercase() || b == b'-' || b == b'_') || i >= MAX_METHOD {
            return Detection::Opaque;
        }
    }
    Detection::NeedMore
}

#[cfg(test)]
mod tests {
    use super::*;
    use Detection::*;

    /// Every prefix of `bytes` shorter than where the answer is known says `NeedMore`, and from
    /// there on every longer prefix says `want`.
    fn settles(bytes: &[u8], at: usize, want: Detection) {
        for n in 0..at {
            assert_eq!(detect(&bytes[..n]), NeedMore, "{n} bytes of {bytes:02x?}");
        }
        for n in at..=bytes.len() {
            assert_eq!(detect(&bytes[..n]), want, "{n} bytes of {bytes:02x?}");
        }
    }

    #[test]
    fn http1_request_lines() {
        // As curl sends them.
        settles(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 5, Http1);
        settles(b"POST /x HTTP/1.1\r\n", 6, Http1);
        settles(b"PUT /x HTTP/1.1\r\n", 5, Http1);
        settles(b"PATCH /x HTTP/1.0\r\n", 7, Http1);
        // Upgrade requests are HTTP/1 too (WebSocket handshake from Python `websockets`).
        settles(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
            5,
            Http1,
        );
        settles(b"CONNECT db:5432 HTTP/1.1\r\n", 9, Http1);
        settles(b"OPTIONS * HTTP/1.1\r\n", 9, Http1);
        // Malformed after the method: hyper's 400, not ours.
        assert_eq!(detect(b"GET\x00"), Opaque);
        assert_eq!(detect(b"GET /\x00\x01"), Http1);
        assert_eq!(detect(b"GET \x00"), Opaque);
        assert_eq!(
            detect(b"get / HTTP/1.1"),
            Opaque,
            "methods are case-sensitive"
        );
    }

    #[test]
    fn http2_preface() {
        let mut with_settings = H2_PREFACE.to_vec();
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        settles(&with_settings, 24, Http2);
        // A POST is not fooled for the preface, and the preface is not taken for a method.
        assert_eq!(detect(b"PRI "), NeedMore);
        assert_eq!(detect(b"PRI * HTTP/1.1\r\n"), Http1);
    }

    #[test]
    fn tls_client_hello() {
        // The record header and the start of a ClientHello as OpenSSL 3 sends it.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        settles(&hello, 3, Tls);
        // SSL 3.0 to TLS 1.3 record versions.
        assert_eq!(detect(&[0x16, 0x03, 0x00]), Tls);
        assert_eq!(detect(&[0x16, 0x03, 0x04]), Tls);
        assert_eq!(detect(&[0x16, 0x03, 0x09]), Opaque);
        assert_eq!(detect(&[0x16, 0x02]), Opaque);
    }

    #[test]
    fn bolt_v1_and_v2() {
        // v1 request: proto 1, type 1 (request), cmdcode 1, ver2 1, request id …
        let v1 = [0x01, 0x01, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x2a];
        settles(&v1, 4, Bolt);
        // v1 heartbeat: type 1, cmdcode 0.
        assert_eq!(detect(&[0x01, 0x01, 0x00, 0x00]), Bolt);
        // v2 request: proto 2, ver1 1, type 1, cmdcode 1.
        let v2 = [0x02, 0x01, 0x01, 0x00, 0x01, 0x01];
        settles(&v2, 5, Bolt);
        // Not bolt: a type or command out of range, a v2 with another version.
        assert_eq!(detect(&[0x01, 0x07]), Opaque);
        assert_eq!(detect(&[0x01, 0x01, 0x03]), Opaque);
        assert_eq!(detect(&[0x01, 0x01, 0x00, 0x09]), Opaque);
        assert_eq!(detect(&[0x02, 0x05]), Opaque);
    }

    #[test]
    fn dubbo_magic() {
        // Magic, flag (request, two-way, hessian2), status, request id …
        let req = [0xda, 0xbb, 0xc2, 0x00, 0, 0, 0, 0, 0, 0, 0, 1];
        settles(&req, 2, Dubbo);
        assert_eq!(detect(&[0xda, 0x00]), Opaque);
    }

    #[test]
    fn anything_else_is_opaque() {
        // Redis RESP (`*1\r\n$4\r\nPING\r\n`), a PostgreSQL startup message, SSH's banner.
        assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n"), Opaque);
        assert_eq!(detect(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]), Opaque);
        // An SSH banner is a token too, but no method.
        settles(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", 5, Opaque);
        // A token with no space within the longest method is no request line either.
        settles(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 23, Opaque);
        assert_eq!(detect(b" GET"), Opaque);
        assert_eq!(detect(&[0xff; MAX_PREFIX]), Opaque);
    }

    #[test]
    fn a_full_prefix_always_decides() {
        // Whatever the bytes, MAX_PREFIX of them settle it: the reader never needs more.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let mut p = [0u8; MAX_PREFIX];
            for b in &mut p {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = (seed >> 32) as u8;
            }
            // Bias towards the interesting first bytes.
            p[0] = [0x16, 0x01, 0x02, 0xda, b'P', b'G', p[0]][(seed % 7) as usize];
            assert_ne!(detect(&p), NeedMore, "{p:02x?}");
        }
        assert_ne!(detect(b"GETGETGETGETGETGETGETGET"), NeedMore);
        assert_ne!(detect(H2_PREFACE), NeedMore);
    }
}
