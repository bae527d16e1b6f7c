//! A client connection from its first byte to the start of its session:
//! SSL/GSS negotiation, cancel requests, startup, authentication, and the
//! greeting (ParameterStatus, BackendKeyData, ReadyForQuery). Then
//! [`session`] takes over.

pub mod auth;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::auth_query::Stored;
use crate::backend::scram::ScramKeys;
use crate::backend::{BackendError, Login, ServerSecret};
use crate::config::AuthMethod;
use crate::protocol::messages::{self, Severity};
use crate::protocol::startup::{self, StartupPacket, StartupParams};
use crate::protocol::MAX_STARTUP_PACKET;
use crate::server::{Proxy, ProxyHandle};
use crate::stream;
use auth::{ScramError, ScramExchange, ScramSecret};

/// The client's socket during startup, with its read buffer.
pub struct ClientIo {
    pub stream: stream::ClientStream,
    pub rbuf: BytesMut,
}

/// Why a client was turned away before its session started. Each maps to
/// the error Postgres would send, or to a silent close.
#[derive(Debug)]
pub enum LoginError {
    /// Send this FATAL and close.
    Fatal { code: String, message: String },
    /// Pass the server's own ErrorResponse through and close.
    Server(BytesMut),
    /// The client went away or broke off; nobody to tell.
    Gone,
}

impl LoginError {
    fn fatal(code: &str, message: impl Into<String>) -> LoginError {
        LoginError::Fatal {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl From<std::io::Error> for LoginError {
    fn from(_: std::io::Error) -> Self {
        LoginError::Gone
    }
}

/// Serves one client connection to the end.
pub async fn serve(handle: Arc<ProxyHandle>, stream: TcpStream, shutdown: watch::Receiver<bool>) {
    let proxy = handle.get();
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let mut io = ClientIo {
        stream: stream::ClientStream::Plain(stream),
        rbuf: BytesMut::with_capacity(8 * 1024),
    };
    let login_timeout = Duration::from_millis(proxy.config.proxy.client_login_timeout_ms);
    let started = tokio::time::timeout(login_timeout, login(&proxy, &mut io)).await;
    let ready = match started {
        Ok(Ok(Some(ready))) => ready,
        Ok(Ok(None)) => return, // a cancel request, answered
        Ok(Err(e)) => {
            refuse(&mut io, e).await;
            return;
        }
        Err(_) => {
            refuse(
                &mut io,
                LoginError::fatal("08006", "canceling authentication due to timeout"),
            )
            .await;
            return;
        }
    };
    tracing::debug!(?peer, user = %ready.params.user().unwrap_or(""), "client logged in");
    if ready.admin {
        // The console is served by pgwire on the logged-in socket; see
        // `crate::admin` for why the login stays here.
        let application_name = ready.params.get("application_name").unwrap_or("");
        let application_name = application_name.to_string();
        crate::admin::serve(handle, io.stream, io.rbuf, application_name, shutdown).await;
        return;
    }
    session::run(proxy, io, ready, shutdown).await;
}

/// Answers an SSLRequest with `S` and runs the TLS handshake; the rest of
/// the session speaks over it.
async fn start_tls(
    io: &mut ClientIo,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
) -> Result<(), LoginError> {
    if !io.rbuf.is_empty() {
        // Bytes sent before the handshake would be read as if they had come
        // over TLS (CVE-2021-23222): refuse, as Postgres does.
        return Err(LoginError::fatal(
            "08P01",
            "received unencrypted data after SSL request",
        ));
    }
    io.stream.write_all(b"S").await?;
    let stream::ClientStream::Plain(tcp) =
        std::mem::replace(&mut io.stream, stream::ClientStream::Gone)
    else {
        return Err(LoginError::Gone);
    };
    match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
        Ok(tls) => {
            io.stream = stream::ClientStream::Tls(Box::new(tls));
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake with a client failed");
            Err(LoginError::Gone)
        }
    }
}

async fn refuse(io: &mut ClientIo, error: LoginError) {
    let mut out = BytesMut::new();
    match error {
        LoginError::Fatal { code, message } => {
            tracing::debug!(code, %message, "client refused");
            messages::error_response(&mut out, Severity::Fatal, &code, &message, None);
        }
        LoginError::Server(raw) => out = raw,
        LoginError::Gone => return,
    }
    let _ = io.stream.write_all(&out).await;
    let _ = io.stream.shutdown().await;
}

/// What a logged-in client brings to its session.
pub struct Ready {
    pub params: StartupParams,
    pub login: Login,
    /// `-c name=value` settings from the `options` startup parameter and the
    /// other startup parameters a server must be told about.
    pub settings: Vec<(String, String)>,
    /// Asked for the admin console (database `causeway`), and may use it.
    pub admin: bool,
    pub peer: Option<std::net::SocketAddr>,
}

/// Startup parameters that are not settings to pass on to a server.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

async fn login(proxy: &Proxy, io: &mut ClientIo) -> Result<Option<Ready>, LoginError> {
    // A client may ask for GSS encryption and then SSL before its startup.
    let mut negotiations = 0;
    let params = loop {
        let body = read_startup_packet(io).await?;
        match startup::parse(&body) {
            Ok(StartupPacket::SslRequest) if negotiations < 2 && !io.stream.is_tls() => {
                negotiations += 1;
                match &proxy.tls {
                    Some(config) => start_tls(io, config.clone()).await?,
                    None => io.stream.write_all(b"N").await?,
                }
            }
            Ok(StartupPacket::GssEncRequest) if negotiations < 2 => {
                negotiations += 1;
                io.stream.write_all(b"N").await?;
            }
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                return Err(LoginError::fatal("08P01", "unsupported frontend protocol"));
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                if let Some(target) = proxy.cancels.lookup(pid, secret) {
                    tracing::debug!(?target, "forwarding cancel request");
                    if let Err(e) = crate::cancel::send_cancel(target).await {
                        tracing::warn!(error = %e, "could not forward cancel request");
                    }
                }
                return Ok(None);
            }
            Ok(StartupPacket::Startup(params)) => break params,
            Err(e @ startup::StartupError::UnsupportedVersion { .. }) => {
                return Err(LoginError::fatal("0A000", e.to_string()))
            }
            Err(e) => return Err(LoginError::fatal("08P01", e.to_string())),
        }
    };
    if params.minor_version > 0 || !params.protocol_options().is_empty() {
        let mut out = BytesMut::new();
        messages::negotiate_protocol_version(&mut out, 0, &params.protocol_options());
        io.stream.write_all(&out).await?;
    }
    let user = params
        .user()
        .ok_or_else(|| {
            LoginError::fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    if params
        .get("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(LoginError::fatal(
            "08P01",
            "replication connections are not supported by causeway; connect to the primary directly",
        ));
    }
    let database = params.database().unwrap_or(&user).to_string();
    if proxy.config.tls.mode() == crate::tls::ClientMode::Require && !io.stream.is_tls() {
        // What a server whose pg_hba.conf has only `hostssl` lines says.
        let host = io
            .stream
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        return Err(LoginError::fatal(
            "28000",
            format!(
                "no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", no encryption"
            ),
        ));
    }
    let mut settings: Vec<(String, String)> = params
        .params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    if let Some(options) = params.get("options") {
        let parsed = startup::parse_options(options).map_err(|word| {
            LoginError::fatal(
                "42601",
                format!("invalid command-line argument for server process: {word}"),
            )
        })?;
        settings.extend(parsed);
    }

    let secret = authenticate(proxy, io, &user, &database).await?;

    let admin = database == crate::admin::ADMIN_DATABASE;
    if admin && !proxy.config.auth.admin_users.contains(&user) {
        return Err(LoginError::fatal(
            "42501",
            format!("permission denied: user \"{user}\" is not in [auth] admin_users of the causeway console"),
        ));
    }
    let mut login = proxy.server_login(&user, &database);
    if login.password.is_none() {
        // No password for the servers: log in to them with what the
        // client's own login gave (SCRAM keys, or the md5 hash).
        login.secret = secret;
    }
    Ok(Some(Ready {
        params,
        login,
        settings,
        admin,
        peer: io.stream.peer_addr().ok(),
    }))
}

/// Reads the length-prefixed first packet, refusing silly lengths before
/// reading any body.
async fn read_startup_packet(io: &mut ClientIo) -> Result<BytesMut, LoginError> {
    read_at_least(io, 4).await?;
    let len = i32::from_be_bytes([io.rbuf[0], io.rbuf[1], io.rbuf[2], io.rbuf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(LoginError::fatal(
            "08P01",
            "invalid length of startup packet",
        ));
    }
    read_at_least(io, len as usize).await?;
    let mut packet = io.rbuf.split_to(len as usize);
    packet.advance(4);
    Ok(packet)
}

async fn read_at_least(io: &mut ClientIo, n: usize) -> Result<(), LoginError> {
    while io.rbuf.len() < n {
        io.rbuf.reserve(n - io.rbuf.len());
        if io.stream.read_buf(&mut io.rbuf).await? == 0 {
            return Err(LoginError::Gone);
        }
    }
    Ok(())
}

/// Reads one password-type message ('p') during authentication.
async fn read_password_message(io: &mut ClientIo) -> Result<BytesMut, LoginError> {
    read_at_least(io, 5).await?;
    let tag = io.rbuf[0];
    if tag != b'p' {
        return Err(LoginError::fatal(
            "08P01",
            format!("expected password response, got message type {tag}"),
        ));
    }
    let len = i32::from_be_bytes([io.rbuf[1], io.rbuf[2], io.rbuf[3], io.rbuf[4]]);
    if !(4..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(LoginError::fatal("08P01", "invalid message length"));
    }
    read_at_least(io, len as usize + 1).await?;
    let mut message = io.rbuf.split_to(len as usize + 1);
    message.advance(5);
    Ok(message)
}

fn auth_failed(user: &str, method: AuthMethod) -> LoginError {
    crate::metrics::auth_failed();
    let message = match method {
        AuthMethod::Trust => format!("role \"{user}\" does not exist"),
        _ => format!("password authentication failed for user \"{user}\""),
    };
    let code = if method == AuthMethod::Trust {
        "28000"
    } else {
        "28P01"
    };
    LoginError::fatal(code, message)
}

/// Checks the client's password by the user's method, then says
/// AuthenticationOk. Returns what the login gave that lets the proxy log in
/// to the servers as this user without a password: the SCRAM keys its
/// proof revealed, or the md5 hash it was checked against.
async fn authenticate(
    proxy: &Proxy,
    io: &mut ClientIo,
    user: &str,
    database: &str,
) -> Result<Option<ServerSecret>, LoginError> {
    let known = proxy.users.get(user);
    // Not listed: what the servers store for it, if `auth_query` is set.
    let stored = match known {
        Some(_) => None,
        None => crate::auth_query::lookup(proxy, user, database)
            .await
            .map_err(|why| {
                tracing::warn!(%user, error = %why, "auth_query lookup failed; login refused");
                crate::metrics::auth_failed();
                LoginError::fatal(
                    "28000",
                    format!("causeway could not look up user \"{user}\" with auth_query: {why}"),
                )
            })?,
    };
    let (scram, md5) = match (known, &stored) {
        (Some(u), _) => (u.scram.clone(), u.md5.clone()),
        (None, Some(Stored::Scram(secret))) => (Some(secret.clone()), None),
        (None, Some(Stored::Md5(hash))) => (None, Some(hash.clone())),
        (None, None) => (None, None),
    };
    let exists = known.is_some() || stored.is_some();
    // An unknown user gets the default method's exchange and fails at the
    // end, so a client cannot tell unknown users from wrong passwords.
    let mut method = known.map(|u| u.method).unwrap_or(proxy.config.auth.method);
    if method == AuthMethod::Md5 && md5.is_none() && scram.is_some() {
        // As Postgres: md5 with a SCRAM secret is done with SCRAM.
        method = AuthMethod::ScramSha256;
    }
    let mut out = BytesMut::new();
    let mut secret = None;
    match method {
        AuthMethod::Trust => {
            if known.is_none() {
                return Err(auth_failed(user, AuthMethod::Trust));
            }
        }
        AuthMethod::Md5 => {
            let mut salt = [0u8; 4];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
            messages::authentication_md5(&mut out, salt);
            io.stream.write_all(&out).await?;
            let response = read_password_message(io).await?;
            let response = response.strip_suffix(b"\0").unwrap_or(&response);
            if !md5
                .as_deref()
                .is_some_and(|s| auth::md5_check(s, salt, response))
            {
                return Err(auth_failed(user, method));
            }
            secret = md5.map(ServerSecret::Md5);
        }
        AuthMethod::ScramSha256 => {
            let scram = scram.unwrap_or_else(ScramSecret::random);
            let server_key = scram.server_key;
            // Over TLS, channel binding to the proxy's certificate is
            // offered first, as Postgres does.
            let end_point = proxy.tls_binding.as_deref().filter(|_| io.stream.is_tls());
            let mechanisms: &[&str] = match end_point {
                Some(_) => &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
                None => &["SCRAM-SHA-256"],
            };
            messages::authentication_sasl(&mut out, mechanisms);
            io.stream.write_all(&out).await?;
            let initial = read_password_message(io).await?;
            let (plus_selected, client_first) = parse_sasl_choice(&initial, end_point.is_some())?;
            let malformed = |e: ScramError| match e {
                ScramError::Malformed(why) => {
                    LoginError::fatal("08P01", format!("malformed SCRAM message: {why}"))
                }
                ScramError::WrongProof => auth_failed(user, method),
            };
            let binding = auth::Binding {
                plus_selected,
                end_point,
            };
            let (exchange, server_first) =
                ScramExchange::start_bound(scram, client_first, binding).map_err(malformed)?;
            out.clear();
            messages::authentication_sasl_continue(&mut out, server_first.as_bytes());
            io.stream.write_all(&out).await?;
            let client_final = read_password_message(io).await?;
            let (server_final, client_key) =
                exchange.finish_keys(&client_final).map_err(malformed)?;
            if !exists {
                return Err(auth_failed(user, method));
            }
            secret = Some(ServerSecret::Scram(ScramKeys {
                client_key,
                server_key,
            }));
            out.clear();
            messages::authentication_sasl_final(&mut out, server_final.as_bytes());
            io.stream.write_all(&out).await?;
        }
    }
    out.clear();
    messages::authentication_ok(&mut out);
    io.stream.write_all(&out).await?;
    Ok(secret)
}

/// SASLInitialResponse: mechanism name, then a length-prefixed
/// client-first-message, on a connection where only SCRAM-SHA-256 was
/// offered.
pub fn parse_sasl_initial(body: &[u8]) -> Result<&[u8], LoginError> {
    parse_sasl_choice(body, false).map(|(_, data)| data)
}

/// [`parse_sasl_initial`] where SCRAM-SHA-256-PLUS may have been offered:
/// returns whether the client chose it, and the message.
pub fn parse_sasl_choice(body: &[u8], plus_offered: bool) -> Result<(bool, &[u8]), LoginError> {
    let bad = || LoginError::fatal("08P01", "malformed SASLInitialResponse message");
    let end = body.iter().position(|&b| b == 0).ok_or_else(bad)?;
    let plus = match &body[..end] {
        b"SCRAM-SHA-256" => false,
        b"SCRAM-SHA-256-PLUS" if plus_offered => true,
        _ => {
            return Err(LoginError::fatal(
                "08P01",
                "client selected an invalid SASL authentication mechanism",
            ))
        }
    };
    let rest = &body[end + 1..];
    if rest.len() < 4 {
        return Err(bad());
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(bad());
    }
    Ok((plus, data))
}

/// Maps a failure to get a server connection at login to what the client sees.
pub fn backend_login_error(error: BackendError) -> LoginError {
    match error {
        BackendError::Refused { raw, .. } => LoginError::Server(raw),
        BackendError::PoolTimeout { .. } => LoginError::fatal("53300", error.to_string()),
        other => LoginError::fatal("08006", other.to_string()),
    }
}
