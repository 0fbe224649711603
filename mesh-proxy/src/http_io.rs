//! The connection the HTTP server gets: plaintext (the detection prefix replayed) or TLS
//! terminated over that same replayed stream. An enum rather than a boxed trait object, so
//! the plaintext path keeps its static dispatch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::conn::TrackedIo;
use crate::rewind::Rewind;

/// The plaintext connection with its detection prefix replayed.
pub(crate) type PlainIo = Rewind<TrackedIo<TcpStream>>;

/// A connection as the HTTP server gets it.
pub(crate) enum HttpIo {
    /// Plaintext.
    Plain(PlainIo),
    /// TLS terminated by the listener.
    Tls(Box<TlsStream<PlainIo>>),
}

macro_rules! forward {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            HttpIo::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            HttpIo::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
        }
    };
}

impl AsyncRead for HttpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, io => io.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            HttpIo::Plain(io) => io.is_write_vectored(),
            HttpIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, io => io.poll_write_vectored(cx, bufs))
    }
}
