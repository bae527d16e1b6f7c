//! Connections from the proxy to Postgres servers: opening and logging in
//! (`connect`), and lending them out (`pool`).

pub mod pool;
pub mod scram;
pub mod settings;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::{self, messages};
use crate::stream::{ServerStream, Socket};
use crate::tls::SslMode;

/// Where a server is and what the proxy calls it.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// TLS towards it (`sslmode`); `None`: plain text.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

impl ServerTarget {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The role, password and database a server connection logs in with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// Without a password: what the client's own login gave the proxy.
    pub secret: Option<ServerSecret>,
}

/// How the proxy proves a role to a server when it has no password for it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ServerSecret {
    /// SCRAM keys: the ClientKey from the client's proof, the ServerKey
    /// from the verifier (pass-through).
    Scram(scram::ScramKeys),
    /// The md5 hash as `pg_authid` stores it, which is all md5 needs.
    Md5(String),
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerSecret::Scram(_) => "ServerSecret::Scram(..)",
            ServerSecret::Md5(_) => "ServerSecret::Md5(..)",
        })
    }
}

/// A SASL exchange in progress towards a server.
enum Sasl {
    Password(ScramSha256),
    Keys(scram::KeyedScram),
}

/// A prepared statement a server connection has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStatement {
    /// Hash of how it was prepared (text and parameter types).
    pub hash: u64,
    /// When a unit last used or made it, in [`ServerConn::catch_ups`].
    pub used: u64,
}

/// One logged-in connection to a server.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: ServerStream,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    /// The server's ParameterStatus values, kept current as it reports changes.
    pub params: HashMap<String, String>,
    /// Session settings this connection has now (name -> the SQL that set
    /// them), so a session can tell what to replay before using it.
    pub settings: settings::Settings,
    /// Prepared statements this connection has, by name.
    pub prepared: HashMap<String, ServerStatement, foldhash::fast::RandomState>,
    /// Units this connection has been brought up to date for: the clock
    /// of [`ServerStatement::used`].
    pub catch_ups: u64,
    /// The server's BackendKeyData, for cancelling its queries.
    pub backend_pid: i32,
    pub backend_secret: i32,
    pub peer: SocketAddr,
    pub server_name: String,
    /// The waker a session's relay left with the socket (see
    /// [`crate::stream::ReadArm`]). Disarmed whenever the connection is
    /// lent, or read another way, so the next poll leaves one again.
    pub read_arm: crate::stream::ReadArm,
    /// Unique in this process, so a session can ask for the same
    /// connection again.
    pub id: u64,
    /// Idle in its pool since at least then (see
    /// [`pool::Pools::close_idle_older_than`]).
    pub idle_since: Option<std::time::Instant>,
    /// Something the proxy sent to bring it up to date failed, so what it
    /// holds is not what `settings` says: it is closed, never lent again.
    pub unclean: bool,
    /// The client (its process ID as the proxy gave it) that last wrote on
    /// it: its `nextval`s, explicit or in a column default, are what
    /// `currval` and `lastval` answer here.
    pub sequences_of: Option<i32>,
    /// `default_transaction_isolation` as the connection started (the
    /// role's or database's default), read once after login: a hot standby
    /// refuses reads of sessions whose default is serializable.
    pub default_isolation: String,
}

static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Why a server connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to server \"{server}\" at {address}: {source}")]
    Connect {
        server: String,
        address: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to server \"{server}\" at {address}")]
    ConnectTimeout { server: String, address: String },
    /// The server refused the login with an ErrorResponse; `raw` is the
    /// whole message, to pass on to the client unchanged.
    #[error("server \"{server}\" refused login: {message}")]
    Refused {
        server: String,
        code: String,
        message: String,
        raw: BytesMut,
    },
    #[error("server \"{server}\" asked for a password and none is configured for user \"{user}\"")]
    NoPassword { server: String, user: String },
    #[error("server \"{server}\" broke the protocol during login: {detail}")]
    Protocol { server: String, detail: String },
    #[error("lost connection to server \"{server}\": {source}")]
    Io {
        server: String,
        source: std::io::Error,
    },
    #[error("no connection to server \"{server}\" became free within {waited_ms} ms (query_wait_timeout_ms)")]
    PoolTimeout { server: String, waited_ms: u128 },
    /// TLS was required and could not be had, or the handshake failed
    /// (a certificate that does not verify, ...).
    #[error("TLS with server \"{server}\" at {address} failed: {detail}")]
    Tls {
        server: String,
        address: String,
        detail: String,
    },
}

impl ServerConn {
    /// Opens a TCP connection to `target` and logs in as `login`.
    pub async fn connect(
        target: &ServerTarget,
        login: &Login,
        timeout: Duration,
    ) -> Result<ServerConn, BackendError> {
        match tokio::time::timeout(timeout, Self::connect_inner(target, login)).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::ConnectTimeout {
                server: target.name.clone(),
                address: target.address(),
            }),
        }
    }

    async fn connect_inner(
        target: &ServerTarget,
        login: &Login,
    ) -> Result<ServerConn, BackendError> {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| BackendError::Connect {
                server: target.name.clone(),
                address: target.address(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().map_err(|source| BackendError::Io {
            server: target.name.clone(),
            source,
        })?;
        let stream = match &target.tls {
            Some(tls) => Self::start_tls(target, tls, stream).await?,
            None => Socket::Plain(stream),
        };
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            params: HashMap::new(),
            settings: settings::Settings::default(),
            prepared: HashMap::default(),
            catch_ups: 0,
            backend_pid: 0,
            backend_secret: 0,
            peer,
            server_name: target.name.clone(),
            id: NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            idle_since: None,
            read_arm: Default::default(),
            unclean: false,
            sequences_of: None,
            default_isolation: String::new(),
        };
        conn.login(login).await?;
        if let Ok(Ok(rows)) = conn
            .query_column("SHOW default_transaction_isolation")
            .await
        {
            conn.default_isolation = rows.into_iter().next().unwrap_or_default();
        }
        Ok(conn)
    }

    /// SSLRequest, then the TLS handshake if the server agrees; plain text
    /// if it does not and `sslmode` is `prefer`.
    async fn start_tls(
        target: &ServerTarget,
        tls: &crate::tls::ServerTls,
        mut stream: TcpStream,
    ) -> Result<ServerStream, BackendError> {
        let failed = |detail: String| BackendError::Tls {
            server: target.name.clone(),
            address: target.address(),
            detail,
        };
        let io = |source| BackendError::Io {
            server: target.name.clone(),
            source,
        };
        stream
            .write_all(&protocol::startup::SSL_REQUEST_PACKET)
            .await
            .map_err(io)?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.map_err(io)?;
        match answer[0] {
            b'S' => {}
            b'N' if tls.mode == SslMode::Prefer => return Ok(Socket::Plain(stream)),
            b'N' => {
                return Err(failed(
                    "server does not support SSL, but SSL was required".into(),
                ))
            }
            other => {
                return Err(failed(format!(
                    "unexpected answer {other:#04x} to SSLRequest"
                )))
            }
        }
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| failed(format!("host {:?} is not a valid name: {e}", target.host)))?;
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let tls_stream = connector
            .connect(name, stream)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Socket::Tls(Box::new(tls_stream)))
    }

    async fn login(&mut self, login: &Login) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        messages::startup_message(
            &mut out,
            &[("user", &login.user), ("database", &login.database)],
        );
        self.send(&out).await?;
        let mut scram: Option<Sasl> = None;
        loop {
            let (tag, body, raw) = self.read_message().await?;
            match tag {
                b'R' => {
                    let mut body = &body[..];
                    if body.len() < 4 {
                        return Err(self.protocol("short authentication request"));
                    }
                    let kind = body.get_i32();
                    out.clear();
                    match kind {
                        0 => {}
                        3 => {
                            let password = self.password(login)?;
                            let mut data = password.as_bytes().to_vec();
                            data.push(0);
                            messages::password_message(&mut out, &data);
                        }
                        5 => {
                            let salt: [u8; 4] = body
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| self.protocol("short md5 salt"))?;
                            let hash = match (&login.password, &login.secret) {
                                (None, Some(ServerSecret::Md5(stored))) => {
                                    crate::frontend::auth::md5_response(stored, salt)
                                        .ok_or_else(|| self.protocol("bad stored md5 hash"))?
                                }
                                _ => postgres_protocol::authentication::md5_hash(
                                    login.user.as_bytes(),
                                    self.password(login)?.as_bytes(),
                                    salt,
                                ),
                            };
                            let mut data = hash.into_bytes();
                            data.push(0);
                            messages::password_message(&mut out, &data);
                        }
                        10 => {
                            let offers = |name: &[u8]| body.split(|&b| b == 0).any(|m| m == name);
                            if !offers(b"SCRAM-SHA-256") && !offers(b"SCRAM-SHA-256-PLUS") {
                                return Err(
                                    self.protocol("server offers no SASL mechanism we know")
                                );
                            }
                            // Over TLS, bind the exchange to the server's
                            // certificate when it offers that, as libpq does.
                            let end_point = self.tls_end_point();
                            let plus = offers(b"SCRAM-SHA-256-PLUS");
                            let mechanism = match (&end_point, plus) {
                                (Some(_), true) => "SCRAM-SHA-256-PLUS",
                                _ => "SCRAM-SHA-256",
                            };
                            let s = match (&login.password, &login.secret) {
                                (None, Some(ServerSecret::Scram(keys))) => {
                                    let (header, data) = match (end_point, plus) {
                                        (Some(hash), true) => ("p=tls-server-end-point,,", hash),
                                        (Some(_), false) => ("y,,", Vec::new()),
                                        (None, _) => ("n,,", Vec::new()),
                                    };
                                    Sasl::Keys(scram::KeyedScram::new(keys.clone(), header, &data))
                                }
                                _ => {
                                    let binding = match (end_point, plus) {
                                        (Some(hash), true) => {
                                            ChannelBinding::tls_server_end_point(hash)
                                        }
                                        (Some(_), false) => ChannelBinding::unrequested(),
                                        (None, _) => ChannelBinding::unsupported(),
                                    };
                                    let password = self.password(login)?;
                                    Sasl::Password(ScramSha256::new(password.as_bytes(), binding))
                                }
                            };
                            let first = match &s {
                                Sasl::Password(s) => s.message().to_vec(),
                                Sasl::Keys(k) => k.client_first(),
                            };
                            messages::sasl_initial_response(&mut out, mechanism, &first);
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol("unexpected SASL continue"))?;
                            let reply = match s {
                                Sasl::Password(s) => {
                                    s.update(body)
                                        .map_err(|e| self.protocol(&format!("SCRAM: {e}")))?;
                                    s.message().to_vec()
                                }
                                Sasl::Keys(k) => k
                                    .client_final(body)
                                    .map_err(|e| self.protocol(&format!("SCRAM: {e}")))?,
                            };
                            messages::password_message(&mut out, &reply);
                        }
                        12 => {
                            let s = scram
                                .take()
                                .ok_or_else(|| self.protocol("unexpected SASL final"))?;
                            match s {
                                Sasl::Password(mut s) => s
                                    .finish(body)
                                    .map_err(|e| self.protocol(&format!("SCRAM: {e}")))?,
                                Sasl::Keys(k) => k
                                    .verify(body)
                                    .map_err(|e| self.protocol(&format!("SCRAM: {e}")))?,
                            }
                        }
                        other => {
                            return Err(self
                                .protocol(&format!("unsupported authentication request {other}")))
                        }
                    }
                    if !out.is_empty() {
                        self.send(&out).await?;
                    }
                }
                b'S' => {
                    if let Some((name, value)) = messages::parse_parameter_status(&body) {
                        self.params.insert(name, value);
                    }
                }
                b'K' => {
                    if body.len() >= 8 {
                        self.backend_pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        self.backend_secret =
                            i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    }
                }
                b'Z' => return Ok(()),
                b'E' => {
                    let fields = messages::parse_error_fields(&body);
                    return Err(BackendError::Refused {
                        server: self.server_name.clone(),
                        code: fields.code,
                        message: fields.message,
                        raw,
                    });
                }
                b'N' | b'v' => {}
                other => {
                    return Err(self.protocol(&format!(
                        "unexpected message '{}' during login",
                        other as char
                    )))
                }
            }
        }
    }

    /// The `tls-server-end-point` data of the server's certificate, when
    /// the connection is TLS.
    fn tls_end_point(&self) -> Option<Vec<u8>> {
        let Socket::Tls(tls) = &self.stream else {
            return None;
        };
        let leaf = tls.get_ref().1.peer_certificates()?.first()?;
        Some(crate::tls::end_point_hash(leaf))
    }

    fn password<'a>(&self, login: &'a Login) -> Result<&'a str, BackendError> {
        login
            .password
            .as_deref()
            .ok_or_else(|| BackendError::NoPassword {
                server: self.server_name.clone(),
                user: login.user.clone(),
            })
    }

    fn protocol(&self, detail: &str) -> BackendError {
        BackendError::Protocol {
            server: self.server_name.clone(),
            detail: detail.to_string(),
        }
    }

    fn io(&self, source: std::io::Error) -> BackendError {
        BackendError::Io {
            server: self.server_name.clone(),
            source,
        }
    }

    /// Notes that the connection has statement `name`, prepared as `hash`,
    /// made by the unit being caught up for now.
    pub fn note_statement(&mut self, name: &str, hash: u64) {
        let made = ServerStatement {
            hash,
            used: self.catch_ups,
        };
        match self.prepared.get_mut(name) {
            Some(have) => *have = made,
            None => {
                self.prepared.insert(name.to_string(), made);
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        let result = self.stream.write_all(bytes).await;
        result.map_err(|e| self.io(e))
    }

    /// Reads one whole message: tag, body, and the raw bytes. Used outside
    /// the hot path (login, reset), where one message at a time is fine.
    pub async fn read_message(&mut self) -> Result<(u8, BytesMut, BytesMut), BackendError> {
        self.read_arm.disarm();
        loop {
            match protocol::backend_header(&self.rbuf) {
                Err(e) => return Err(self.protocol(&e.to_string())),
                Ok(Some(h)) if self.rbuf.len() >= h.wire_len() => {
                    let raw = self.rbuf.split_to(h.wire_len());
                    let body = BytesMut::from(&raw[5..]);
                    return Ok((h.tag, body, raw));
                }
                Ok(_) => {}
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await;
            match n {
                Ok(0) => {
                    return Err(self.io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Runs `sql` with the simple protocol and waits for ReadyForQuery,
    /// keeping ParameterStatus current. Returns the first error, if any.
    pub async fn run_internal(
        &mut self,
        sql: &str,
    ) -> Result<Option<messages::ErrorFields>, BackendError> {
        Ok(self.query_column(sql).await?.err())
    }

    /// Runs one statement of the proxy's own and returns its first column,
    /// row by row (NULLs left out), or the server's error.
    pub async fn query_column(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<String>, messages::ErrorFields>, BackendError> {
        let rows = self.query_rows(sql).await?;
        Ok(rows.map(|rows| {
            rows.into_iter()
                .filter_map(|row| row.into_iter().next().flatten())
                .collect()
        }))
    }

    /// Runs one statement of the proxy's own and returns its rows, every
    /// column as text (`None` for NULL), or the server's error.
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<Vec<Option<String>>>, messages::ErrorFields>, BackendError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.send(&out).await?;
        let mut error = None;
        let mut rows = Vec::new();
        loop {
            let (tag, body, _) = self.read_message().await?;
            match tag {
                b'S' => {
                    if let Some((name, value)) = messages::parse_parameter_status(&body) {
                        self.params.insert(name, value);
                    }
                }
                b'D' => rows.extend(messages::data_row_columns(&body)),
                b'E' if error.is_none() => error = Some(messages::parse_error_fields(&body)),
                b'Z' => return Ok(error.map_or(Ok(rows), Err)),
                _ => {}
            }
        }
    }

    /// Nothing arrived while the connection sat idle, and it is not closed.
    /// May consume a byte when it is not: such a connection is dropped.
    pub fn is_quiet(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match &mut self.stream {
            Socket::Plain(tcp) => {
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Socket::Tls(tls) => {
                // One read without waiting, through TLS: plaintext rustls
                // holds already counts, and so does a closed socket.
                use tokio::io::AsyncRead;
                let mut buf = tokio::io::ReadBuf::new(&mut probe);
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                std::pin::Pin::new(tls.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
            Socket::Gone => false,
        }
    }

    /// The server has closed the connection, or said it is about to (a
    /// FATAL error waiting to be read: `pg_terminate_backend`, a restart,
    /// an idle timeout). Looks without consuming anything.
    pub async fn is_closed(&mut self) -> bool {
        // The look leaves the task's own waker with the socket.
        self.read_arm.disarm();
        let Some(tcp) = self.stream.tcp() else {
            return true;
        };
        let mut probe = [0u8; 1];
        // One non-blocking look: `Pending` means nothing to read, open.
        let peeked = std::future::poll_fn(|cx| {
            let mut buf = tokio::io::ReadBuf::new(&mut probe);
            std::task::Poll::Ready(match tcp.poll_peek(cx, &mut buf) {
                std::task::Poll::Ready(Ok(n)) => Some(Ok(n)),
                std::task::Poll::Ready(Err(e)) => Some(Err(e)),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        match peeked {
            Some(Ok(0)) | Some(Err(_)) => true,
            // Encrypted: what it says cannot be seen without reading it;
            // an idle server says something only when it is closing (or a
            // notice, which costs a reconnect).
            Some(Ok(_)) if self.stream.is_tls() => true,
            Some(Ok(_)) => self.rbuf.is_empty() && probe[0] == b'E',
            None => false,
        }
    }

    /// Says goodbye to the server; errors do not matter any more.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        messages::terminate(&mut out);
        let _ = self.stream.write_all(&out).await;
    }
}
