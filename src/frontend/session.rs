//! A logged-in client's session: the relay between the client and the
//! server connection it is using.
//!
//! One task per client, one loop, four things it may do next: write to the
//! server, write to the client, read from the server, read from the client.
//! Reads and writes are never awaited one after the other on the same pair
//! of sockets, so a client that pipelines more than the socket buffers hold
//! cannot deadlock the proxy against a server that is busy answering it.
//!
//! Messages pass through as bytes. The session looks only at their headers,
//! and at the few bodies that change its state: ReadyForQuery (the server is
//! done with a request and says whether a transaction is open),
//! ParameterStatus, ErrorResponse. Large DataRow and CopyData messages are
//! streamed through without waiting for their ends.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::watch;

use super::{backend_login_error, refuse, ClientIo, LoginError, Ready};
use crate::backend::pool::Lease;
use crate::cancel::{CancelKey, CancelTarget};
use crate::protocol::messages::{self, Severity};
use crate::protocol::{self, FrameError};
use crate::server::Proxy;

/// Stop reading a side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 1 << 20;
/// Read buffers grow by at most this much at a time, whatever a message's
/// length claims.
const READ_CHUNK: usize = 64 * 1024;

/// What a ReadyForQuery the session waits for belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A request of the client's: its answers go to the client.
    Client,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// Terminate, or the client closed its socket.
    ClientLeft,
    /// The client broke the protocol; it gets this FATAL.
    ClientProtocol(FrameError),
    /// The server connection failed; the client gets an error if the
    /// server did not already send one.
    ServerLost(String),
    /// The proxy is shutting down and the session reached a safe point.
    Drained,
}

enum Event {
    ClientRead(io::Result<usize>),
    ServerRead(io::Result<usize>),
    ClientWrote(io::Result<usize>),
    ServerWrote(io::Result<usize>),
    Shutdown,
}

struct Session {
    proxy: Arc<Proxy>,
    client: tokio::net::TcpStream,
    /// Client bytes read and not yet handled.
    cbuf: BytesMut,
    to_client: BytesMut,
    lease: Option<Lease>,
    to_server: BytesMut,
    /// One entry per ReadyForQuery still to come from the server.
    pending: VecDeque<Expect>,
    /// The server's transaction status from its last ReadyForQuery.
    tx_status: u8,
    /// Bytes left of a client CopyData being streamed to the server.
    client_streaming: usize,
    /// Bytes left of a server message being streamed to the client.
    server_streaming: usize,
    /// The server sent a FATAL error: it is about to close.
    server_fatal: bool,
    cancel: CancelKey,
    draining: bool,
}

/// Runs a logged-in client's session to its end.
pub async fn run(
    proxy: Arc<Proxy>,
    mut io: ClientIo,
    ready: Ready,
    mut shutdown: watch::Receiver<bool>,
) {
    let cancel = proxy.cancels.register();
    let pool = proxy.pools.get(&proxy.primary, &ready.login);
    let mut lease = match pool.checkout().await {
        Ok(lease) => lease,
        Err(e) => {
            tracing::warn!(error = %e, "no server connection for new client");
            refuse(&mut io, backend_login_error(e)).await;
            return;
        }
    };
    if let Err(e) = apply_settings(&mut lease, &ready.settings).await {
        refuse(&mut io, e).await;
        return;
    }
    let mut greeting = BytesMut::with_capacity(512);
    let mut params: Vec<_> = lease.conn.params.iter().collect();
    params.sort();
    for (name, value) in params {
        messages::parameter_status(&mut greeting, name, value);
    }
    messages::backend_key_data(&mut greeting, cancel.pid, cancel.secret);
    messages::ready_for_query(&mut greeting, b'I');
    if io.stream.write_all(&greeting).await.is_err() {
        return;
    }
    cancel.set(Some(CancelTarget {
        addr: lease.conn.peer,
        pid: lease.conn.backend_pid,
        secret: lease.conn.backend_secret,
    }));
    let mut session = Session {
        proxy,
        client: io.stream,
        cbuf: io.rbuf,
        to_client: BytesMut::with_capacity(16 * 1024),
        lease: Some(lease),
        to_server: BytesMut::with_capacity(16 * 1024),
        pending: VecDeque::new(),
        tx_status: b'I',
        client_streaming: 0,
        server_streaming: 0,
        server_fatal: false,
        cancel,
        draining: *shutdown.borrow(),
    };
    let end = session.relay(&mut shutdown).await;
    session.finish(end).await;
}

/// Tells a fresh server connection the client's startup settings,
/// skipping those the server already reports with the same value.
/// `set_config` takes the value as the startup packet gives it (a list
/// setting such as `search_path=a,b` stays a list), unlike `SET x = 'a,b'`.
async fn apply_settings(
    lease: &mut Lease,
    settings: &[(String, String)],
) -> Result<(), LoginError> {
    let calls: Vec<String> = settings
        .iter()
        .filter(|(name, value)| lease.conn.params.get(name) != Some(value))
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                quote_literal(name),
                quote_literal(value)
            )
        })
        .collect();
    if calls.is_empty() {
        return Ok(());
    }
    let sql = format!("SELECT {}", calls.join(", "));
    match lease.conn.run_internal(&sql).await {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(LoginError::Fatal {
            code: e.code,
            message: e.message,
        }),
        Err(e) => Err(backend_login_error(e)),
    }
}

pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

async fn read_opt(half: Option<(ReadHalf<'_>, &mut BytesMut)>) -> io::Result<usize> {
    match half {
        Some((mut half, buf)) => {
            reserve_for_read(buf);
            half.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

async fn write_opt(half: Option<WriteHalf<'_>>, buf: &[u8]) -> io::Result<usize> {
    match half {
        Some(mut half) => half.write(buf).await,
        None => std::future::pending().await,
    }
}

fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_CHUNK);
    }
}

impl Session {
    /// No request in flight, no transaction open, nothing half-read:
    /// a point where the session may end or move without harm.
    fn at_rest(&self) -> bool {
        self.pending.is_empty()
            && self.tx_status == b'I'
            && self.cbuf.is_empty()
            && self.client_streaming == 0
            && self.server_streaming == 0
            && self.to_server.is_empty()
            && self.to_client.is_empty()
    }

    async fn relay(&mut self, shutdown: &mut watch::Receiver<bool>) -> End {
        loop {
            if self.draining && self.at_rest() {
                return End::Drained;
            }
            let event = {
                let (client_read, client_write) = self.client.split();
                let (server_read, server_write) = match self.lease.as_mut() {
                    Some(lease) => {
                        let conn = &mut lease.conn;
                        let (r, w) = conn.stream.split();
                        (Some((r, &mut conn.rbuf)), Some(w))
                    }
                    None => (None, None),
                };
                let server_attached = server_read.is_some();
                let cbuf = &mut self.cbuf;
                let mut client_read = client_read;
                let mut client_write = client_write;
                tokio::select! {
                    biased;
                    r = write_opt(server_write, &self.to_server), if !self.to_server.is_empty() => Event::ServerWrote(r),
                    r = client_write.write(&self.to_client), if !self.to_client.is_empty() => Event::ClientWrote(r),
                    r = read_opt(server_read), if server_attached && self.to_client.len() < HIGH_WATER => Event::ServerRead(r),
                    r = async {
                        reserve_for_read(cbuf);
                        client_read.read_buf(cbuf).await
                    }, if self.to_server.len() < HIGH_WATER && server_attached => Event::ClientRead(r),
                    _ = shutdown.changed(), if !self.draining => Event::Shutdown,
                }
            };
            match event {
                Event::ServerWrote(Ok(n)) => advance(&mut self.to_server, n),
                Event::ClientWrote(Ok(n)) => advance(&mut self.to_client, n),
                Event::ServerWrote(Err(e)) => return End::ServerLost(e.to_string()),
                Event::ClientWrote(Err(_)) => return End::ClientLeft,
                Event::ServerRead(Ok(0)) => {
                    return End::ServerLost("server closed the connection unexpectedly".into())
                }
                Event::ServerRead(Err(e)) => return End::ServerLost(e.to_string()),
                Event::ServerRead(Ok(_)) => {
                    if let Err(e) = self.handle_server_bytes() {
                        return End::ServerLost(e.to_string());
                    }
                }
                Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => return End::ClientLeft,
                Event::ClientRead(Ok(_)) => match self.handle_client_bytes() {
                    Ok(true) => {}
                    Ok(false) => return End::ClientLeft,
                    Err(e) => return End::ClientProtocol(e),
                },
                Event::Shutdown => self.draining = true,
            }
        }
    }

    /// Handles every whole client message in `cbuf`. Returns false on Terminate.
    fn handle_client_bytes(&mut self) -> Result<bool, FrameError> {
        loop {
            if self.client_streaming > 0 {
                let n = self.client_streaming.min(self.cbuf.len());
                self.to_server.extend_from_slice(&self.cbuf[..n]);
                self.cbuf.advance(n);
                self.client_streaming -= n;
                if self.cbuf.is_empty() {
                    return Ok(true);
                }
            }
            let Some(header) = protocol::frontend_header(&self.cbuf)? else {
                return Ok(true);
            };
            let len = header.wire_len();
            if self.cbuf.len() < len {
                if header.tag == b'd' {
                    // Stream big COPY data on; nothing in it matters to routing.
                    self.client_streaming = len;
                    continue;
                }
                return Ok(true);
            }
            match header.tag {
                b'X' => return Ok(false),
                b'Q' | b'F' | b'S' => self.pending.push_back(Expect::Client),
                _ => {}
            }
            self.to_server.extend_from_slice(&self.cbuf[..len]);
            self.cbuf.advance(len);
        }
    }

    /// Handles every whole server message in the server's read buffer.
    fn handle_server_bytes(&mut self) -> Result<(), FrameError> {
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        let rbuf = &mut lease.conn.rbuf;
        loop {
            if self.server_streaming > 0 {
                let n = self.server_streaming.min(rbuf.len());
                self.to_client.extend_from_slice(&rbuf[..n]);
                rbuf.advance(n);
                self.server_streaming -= n;
                if rbuf.is_empty() {
                    return Ok(());
                }
            }
            let Some(header) = protocol::backend_header(rbuf)? else {
                return Ok(());
            };
            let len = header.wire_len();
            if rbuf.len() < len {
                if matches!(header.tag, b'D' | b'd') {
                    self.server_streaming = len;
                    continue;
                }
                return Ok(());
            }
            let message = &rbuf[..len];
            match header.tag {
                b'Z' => {
                    self.tx_status = message[5];
                    self.pending.pop_front();
                }
                b'S' => {
                    if let Some((name, value)) = messages::parse_parameter_status(&message[5..]) {
                        lease.conn.params.insert(name, value);
                    }
                }
                b'E' => {
                    let fields = messages::parse_error_fields(&message[5..]);
                    if fields.severity == "FATAL" || fields.severity == "PANIC" {
                        self.server_fatal = true;
                    }
                }
                _ => {}
            }
            self.to_client.extend_from_slice(message);
            rbuf.advance(len);
        }
    }

    /// Says the last word to the client and returns or closes the server
    /// connection.
    async fn finish(mut self, end: End) {
        let mut farewell = BytesMut::new();
        let client_left = matches!(end, End::ClientLeft);
        match &end {
            End::ClientLeft => {}
            End::ClientProtocol(e) => {
                tracing::debug!(error = %e, "client broke the protocol");
                messages::error_response(
                    &mut farewell,
                    Severity::Fatal,
                    "08P01",
                    &e.to_string(),
                    None,
                );
            }
            End::ServerLost(why) => {
                tracing::warn!(reason = %why, "server connection lost");
                if !self.server_fatal {
                    messages::error_response(
                        &mut farewell,
                        Severity::Fatal,
                        "08006",
                        "server closed the connection unexpectedly",
                        Some(why),
                    );
                }
                // Never reuse a connection that failed.
                self.lease = None;
            }
            End::Drained => messages::error_response(
                &mut farewell,
                Severity::Fatal,
                "57P01",
                "terminating connection due to administrator command",
                None,
            ),
        }
        if !client_left {
            self.to_client.extend_from_slice(&farewell);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.client.write_all(&self.to_client),
            )
            .await;
            let _ = self.client.shutdown().await;
        }
        self.cancel.set(None);
        self.release_server().await;
    }

    /// Gives the server connection back to its pool if it can be made
    /// clean for the next client; closes it otherwise.
    async fn release_server(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        let quiet = self.pending.is_empty()
            && self.server_streaming == 0
            && self.to_server.is_empty()
            && lease.conn.rbuf.is_empty()
            && !self.server_fatal;
        if !quiet {
            lease.conn.terminate().await;
            return;
        }
        let reset_query = self.proxy.config.pool.reset_query.clone();
        let in_transaction = self.tx_status != b'I';
        let reset = async {
            if in_transaction && lease.conn.run_internal("ROLLBACK").await?.is_some() {
                return Ok(false);
            }
            Ok::<bool, crate::backend::BackendError>(
                lease.conn.run_internal(&reset_query).await?.is_none(),
            )
        };
        match tokio::time::timeout(Duration::from_secs(5), reset).await {
            Ok(Ok(true)) => lease.give_back(),
            _ => lease.conn.terminate().await,
        }
    }
}

fn advance(buf: &mut BytesMut, n: usize) {
    buf.advance(n);
    if buf.is_empty() {
        buf.clear();
    }
}
