//! A client's socket: plain TCP, or TLS over it after an SSLRequest.
//!
//! The session reads and writes the client concurrently, so it splits the
//! socket each turn of its loop. A plain socket splits into borrowed halves
//! at no cost (`TcpStream::split`); a TLS stream is one state machine for
//! both directions and splits through `tokio::io::split`'s lock. The enums
//! here give the session one type either way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{tcp, TcpStream};
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Taken for the TLS handshake, which failed: nothing to talk to.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the client's connection is gone",
    )
}

pub enum ClientRead<'a> {
    Plain(tcp::ReadHalf<'a>),
    Tls(ReadHalf<&'a mut TlsStream<TcpStream>>),
    Gone,
}

pub enum ClientWrite<'a> {
    Plain(tcp::WriteHalf<'a>),
    Tls(WriteHalf<&'a mut TlsStream<TcpStream>>),
    Gone,
}

impl ClientStream {
    pub fn split(&mut self) -> (ClientRead<'_>, ClientWrite<'_>) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
            ClientStream::Gone => (ClientRead::Gone, ClientWrite::Gone),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            ClientStream::Plain(s) => s.peer_addr(),
            ClientStream::Tls(s) => s.get_ref().0.peer_addr(),
            ClientStream::Gone => Err(gone()),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for ClientRead<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ClientRead::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for ClientWrite<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientWrite::Tls(s) => Pin::new(s).poll_write(cx, buf),
            ClientWrite::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientWrite::Tls(s) => Pin::new(s).poll_flush(cx),
            ClientWrite::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientWrite::Tls(s) => Pin::new(s).poll_shutdown(cx),
            ClientWrite::Gone => Poll::Ready(Ok(())),
        }
    }
}
