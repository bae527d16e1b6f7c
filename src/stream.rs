//! A socket to a client or a server: plain TCP, or TLS over it after an
//! SSLRequest.
//!
//! A session reads and writes both ends concurrently: each turn of its loop
//! polls both directions of the same socket, plain or TLS, through the one
//! type here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TLS stream over TCP, as a server (towards clients) or as a client
/// (towards Postgres servers).
pub trait TlsOverTcp: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl TlsOverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl TlsOverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// How a task waits for a socket to be readable without leaving its waker
/// there at every turn of its loop.
///
/// The waker left is the arm's own: it notes that it fired, then wakes the
/// task. Until it fires it is still with the socket, and a turn that finds
/// the socket not readable need not leave it again. Once it fired it is
/// gone, whatever the readiness says: tokio marks a socket readable and
/// then, in a second step, takes and wakes its waker, and a read between
/// the two steps consumes the readiness of an event whose wake then takes
/// the waker. Trusting the readiness alone, the task would sleep through
/// every later byte.
#[derive(Debug, Default)]
pub struct ReadArm {
    left: Option<(std::sync::Arc<ArmWaker>, std::task::Waker)>,
    armed: bool,
}

#[derive(Debug)]
struct ArmWaker {
    fired: std::sync::atomic::AtomicBool,
    task: std::task::Waker,
}

impl std::task::Wake for ArmWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.fired.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl ReadArm {
    /// Forgets the waker left: the socket was read another way (a login,
    /// a look whether it closed), or is being lent to another task.
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Whether `task` left a waker with the socket, and if so whether it
    /// fired since (and so is gone from it).
    fn left_by(&self, task: &std::task::Waker) -> Option<bool> {
        match &self.left {
            Some((arm, _)) if self.armed && arm.task.will_wake(task) => {
                Some(arm.fired.load(std::sync::atomic::Ordering::Acquire))
            }
            _ => None,
        }
    }

    /// The waker to leave for `task`, marked not fired.
    fn leave(&mut self, task: &std::task::Waker) -> &std::task::Waker {
        if let Some((arm, _)) = &self.left {
            if arm.task.will_wake(task) {
                arm.fired.store(false, std::sync::atomic::Ordering::Release);
            } else {
                self.left = None;
            }
        }
        let (_, waker) = self.left.get_or_insert_with(|| {
            let arm = std::sync::Arc::new(ArmWaker {
                fired: std::sync::atomic::AtomicBool::new(false),
                task: task.clone(),
            });
            let waker = std::task::Waker::from(arm.clone());
            (arm, waker)
        });
        waker
    }
}

pub enum Socket<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// Taken for the TLS handshake, which failed: nothing to talk to.
    Gone,
}

/// A client's socket; the proxy is the TLS server.
pub type ClientStream = Socket<tokio_rustls::server::TlsStream<TcpStream>>;
/// A Postgres server's socket; the proxy is the TLS client.
pub type ServerStream = Socket<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T> std::fmt::Debug for Socket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Socket::Plain(_) => "Socket::Plain",
            Socket::Tls(_) => "Socket::Tls",
            Socket::Gone => "Socket::Gone",
        })
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the client's connection is gone",
    )
}

impl<T: TlsOverTcp> Socket<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }

    /// Writes what a plain socket takes now, without waiting: the bytes
    /// written, or `None` if nothing was (TLS, a full socket buffer, an
    /// error the next awaited write will report).
    pub fn try_write_now(&self, buf: &[u8]) -> Option<usize> {
        match self {
            Socket::Plain(s) => s.try_write(buf).ok().filter(|&n| n > 0),
            _ => None,
        }
    }

    /// Reads into `buf` only if the socket is known to be readable, without
    /// leaving a waker: `None` when it is not, `Some` with what a read
    /// returned when it was. `None` says nothing of a waker left earlier:
    /// the readiness of an event can be consumed before the event's wake
    /// takes that waker (see [`ReadArm`], which knows). A `WouldBlock` in
    /// `Some` means the readiness was stale and is now cleared: the caller
    /// must poll to leave a waker. Plain TCP only; TLS always says
    /// `Some(WouldBlock)`.
    pub fn read_if_ready(&self, buf: &mut bytes::BytesMut) -> Option<io::Result<usize>> {
        let Socket::Plain(tcp) = self else {
            return Some(Err(io::ErrorKind::WouldBlock.into()));
        };
        let (mut ran, mut partial) = (false, None);
        let spare = buf.capacity() - buf.len();
        let read = tcp.try_io(tokio::io::Interest::READABLE, || {
            ran = true;
            match tcp.try_read_buf(buf) {
                // Less than the buffer could take: the socket is drained.
                // Saying WouldBlock has tokio clear its readiness, as its
                // own poll_read does after such a read; without it the
                // next poll would make a read that finds nothing.
                Ok(n) if n < spare => {
                    partial = Some(n);
                    Err(io::ErrorKind::WouldBlock.into())
                }
                other => other,
            }
        });
        if let Some(n) = partial {
            return Some(Ok(n));
        }
        ran.then_some(read)
    }

    /// Polls for reading into `buf`, leaving a waker with the socket only
    /// when the one `arm` left there last is gone (see [`ReadArm`]): an
    /// armed, quiet socket costs two atomic loads instead of a lock of its
    /// waiters.
    pub fn poll_read_armed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
        arm: &mut ReadArm,
    ) -> Poll<io::Result<usize>> {
        if let Some(fired) = arm.left_by(cx.waker()) {
            // Readable or not, a read that finds bytes needs no waker; one
            // that finds none needs the waker left again once it fired.
            match self.read_if_ready(buf) {
                None if !fired => return Poll::Pending,
                None => {}
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Some(read) => {
                    arm.armed = false;
                    return Poll::Ready(read);
                }
            }
        }
        let polled = {
            let mut own = Context::from_waker(arm.leave(cx.waker()));
            tokio_util::io::poll_read_buf(Pin::new(self), &mut own, buf)
        };
        // A task out of its cooperative budget hears `Pending` from tokio
        // before the socket is asked: its waker was scheduled to run again,
        // not left with the socket.
        arm.armed = polled.is_pending() && tokio::task::coop::has_budget_remaining();
        polled
    }

    /// The TCP connection under it, if any.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Socket::Plain(s) => Some(s),
            Socket::Tls(s) => Some(s.tcp()),
            Socket::Gone => None,
        }
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().ok_or_else(gone)?.peer_addr()
    }
}

impl<T: TlsOverTcp> AsyncRead for Socket<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Socket::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<T: TlsOverTcp> AsyncWrite for Socket<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Socket::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Socket::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Socket::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    type Plain = Socket<tokio_rustls::server::TlsStream<TcpStream>>;

    async fn pair() -> (Plain, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.expect("accept");
        (Socket::Plain(accepted), peer.expect("connect"))
    }

    struct Task;
    impl std::task::Wake for Task {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    /// tokio marks a socket readable, then takes and wakes its waker: a
    /// read between the two consumes the readiness, and the waker is gone
    /// all the same. The arm trusts its waker only until it fired, and
    /// never for another task.
    #[test]
    fn an_arm_trusts_its_waker_until_it_fired() {
        let task = std::task::Waker::from(std::sync::Arc::new(Task));
        let mut arm = ReadArm::default();
        assert_eq!(arm.left_by(&task), None, "nothing left yet");
        let left = arm.leave(&task).clone();
        arm.armed = true;
        assert_eq!(arm.left_by(&task), Some(false), "still there");
        left.wake_by_ref();
        assert_eq!(arm.left_by(&task), Some(true), "a waker that fired is gone");
        arm.leave(&task);
        arm.armed = true;
        assert_eq!(arm.left_by(&task), Some(false), "left again");
        let other = std::task::Waker::from(std::sync::Arc::new(Task));
        assert_eq!(arm.left_by(&other), None, "another task's waker");
        arm.disarm();
        assert_eq!(arm.left_by(&task), None, "disarmed");
    }

    /// A read polled when the task has spent its cooperative budget is
    /// `Pending` with no waker left at the socket: the next poll must leave
    /// one, or bytes that come later never wake the task.
    #[tokio::test]
    async fn a_read_polled_out_of_budget_still_wakes_the_task() {
        let (mut socket, mut peer) = pair().await;
        let reader = tokio::spawn(async move {
            let mut buf = bytes::BytesMut::with_capacity(64);
            let mut armed = ReadArm::default();
            // 0: read the first byte (which leaves the socket drained, its
            // readiness cleared); 1: spend the budget, as a busy turn of a
            // session can, and poll; 2: wait for the rest.
            let mut phase = 0;
            poll_fn(|cx| loop {
                match phase {
                    0 => match socket.poll_read_armed(cx, &mut buf, &mut armed) {
                        Poll::Ready(read) => {
                            read?;
                            phase = 1;
                        }
                        Poll::Pending => return Poll::Pending,
                    },
                    1 => {
                        while let Poll::Ready(spent) = tokio::task::coop::poll_proceed(cx) {
                            spent.made_progress();
                        }
                        let polled = socket.poll_read_armed(cx, &mut buf, &mut armed);
                        assert!(polled.is_pending(), "a read without budget: {polled:?}");
                        phase = 2;
                        return Poll::Pending;
                    }
                    _ => return socket.poll_read_armed(cx, &mut buf, &mut armed),
                }
            })
            .await
            .map(|_| buf.to_vec())
        });
        peer.write_all(b"x").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        peer.write_all(b"hello").await.expect("write");
        let read = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader was never woken by the bytes")
            .expect("reader task");
        assert_eq!(read.expect("read"), b"xhello");
    }
}
