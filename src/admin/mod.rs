//! The admin console: connect to the database `causeway` as one of the
//! `[auth] admin_users` and ask, in the style of PgBouncer's console,
//! `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW REPLICAS`, `SHOW POOLS`,
//! `SHOW DATABASES`, `SHOW STATS`, `SHOW CONFIG`, `SHOW VERSION`,
//! `SHOW HELP`, `RELOAD`, `PAUSE` or `RESUME` (see `crate::pause`),
//! `KILL pid` (one client, as `SHOW CLIENTS` numbers them) or `SHUTDOWN`
//! (drain and exit, as SIGTERM).
//!
//! Here causeway is the server, not a proxy, and it speaks Postgres through
//! the pgwire crate: [`handler`] answers both the simple and the extended
//! query protocol, so psql, psycopg with `prepare=True`, JDBC and
//! tokio-postgres's `query` (which always prepares) all work. The commands
//! are data ([`command`]) and what they show is read from the proxy's state
//! without I/O ([`show`]).
//!
//! ## Where pgwire takes over, and who checks passwords
//!
//! pgwire's `process_socket` wants the connection from its first byte: it
//! negotiates TLS and runs a `StartupHandler` that would authenticate. The
//! console does not use it. By the time a client is known to want the
//! console, causeway's own login (`crate::frontend`) has already answered
//! SSLRequest/GSSENCRequest (so the socket may be TLS), read the startup
//! packet whose `database` says "console", checked the password (SCRAM with
//! channel binding over TLS, md5, trust, `auth_query`), checked
//! `admin_users`, and sent AuthenticationOk. Handing pgwire the socket
//! before that would mean a second implementation of every method, of the
//! TLS negotiation and of channel binding, which could drift from the one
//! the application clients get; and pgwire would have to re-read a startup
//! packet causeway has already consumed.
//!
//! So [`serve`] takes the logged-in socket (plain or TLS, with any bytes
//! the client already pipelined after its password), wraps it in pgwire's
//! own codec in the `ReadyForQuery` state, sends the rest of the greeting
//! (ParameterStatus, BackendKeyData, ReadyForQuery), and then runs pgwire's
//! per-message dispatcher (`pgwire::tokio::server::process_message` and
//! `process_error`, the pieces `process_socket` loops over) on it. There
//! is one authentication implementation; pgwire's startup handler here is
//! [`NoStartup`], which refuses a second startup rather than trusting it.

mod command;
mod handler;
mod show;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use futures_util::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::{ClientInfo, DefaultClient, NoopHandler, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::sync::watch;
use tokio_util::codec::{Framed, FramedParts};

use crate::server::ProxyHandle;
use crate::stream::ClientStream;

pub const ADMIN_DATABASE: &str = "causeway";

/// A console connection as pgwire sees it.
type Console = Framed<ClientStream, PgWireMessageServerCodec<command::Command>>;

/// Serves a logged-in console client until it leaves, or until the proxy
/// drains (`shutdown`): the console holds no transaction, so it ends at
/// once then, as an idle session does.
///
/// `unread` is what the client sent after its last login message that
/// causeway has read but not used; `application_name` is echoed back as a
/// server would.
pub async fn serve(
    handle: Arc<ProxyHandle>,
    stream: ClientStream,
    unread: BytesMut,
    application_name: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let client = DefaultClient::new(peer, stream.is_tls());
    let mut parts = FramedParts::new(stream, PgWireMessageServerCodec::new(client));
    parts.read_buf = unread;
    let mut socket: Console = Framed::from_parts(parts);
    socket.set_state(PgWireConnectionState::ReadyForQuery);
    if greet(&mut socket, &application_name).await.is_err() {
        return;
    }

    let console = Arc::new(handler::ConsoleHandler::new(handle));
    let no_startup = Arc::new(NoStartup);
    let noop = Arc::new(NoopHandler);
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            () = drained(&mut shutdown) => {
                let _ = socket.send(fatal("57P01", "terminating connection due to administrator command")).await;
                return;
            }
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // A frame pgwire cannot read: as Postgres, say so and close.
                let _ = socket.send(fatal("08P01", &e.to_string())).await;
                return;
            }
            None => return,
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return;
        }
        // An error in the extended protocol skips to the next Sync.
        let extended = message.is_extended_query();
        if let Err(error) = process_message(
            message,
            &mut socket,
            no_startup.clone(),
            console.clone(),
            console.clone(),
            noop.clone(),
            noop.clone(),
        )
        .await
        {
            let fatal = error.is_fatal();
            if process_error(&mut socket, error, extended).await.is_err() || fatal {
                return;
            }
        }
    }
}

/// Returns once the proxy drains; never if it cannot tell.
async fn drained(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The part of a server's greeting that comes after AuthenticationOk, which
/// causeway's login has sent.
async fn greet(socket: &mut Console, application_name: &str) -> std::io::Result<()> {
    let version = format!("15.0 (causeway {})", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", application_name),
    ] {
        socket
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                name.to_string(),
                value.to_string(),
            )))
            .await?;
    }
    // No cancel key: console commands are short, and PAUSE gives up by
    // itself after a minute.
    socket
        .feed(PgWireBackendMessage::BackendKeyData(BackendKeyData::new(
            0,
            SecretKey::I32(0),
        )))
        .await?;
    socket
        .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
            TransactionStatus::Idle,
        )))
        .await
}

fn fatal(code: &str, message: &str) -> PgWireBackendMessage {
    PgWireBackendMessage::ErrorResponse(
        ErrorInfo::new("FATAL".to_string(), code.to_string(), message.to_string()).into(),
    )
}

/// pgwire's startup handler for a connection whose startup causeway has
/// already done: reached only if the connection state were reset, and then
/// it refuses rather than let anyone in.
struct NoStartup;

#[async_trait]
impl StartupHandler for NoStartup {
    async fn on_startup<C>(
        &self,
        _client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Err(PgWireError::UserError(Box::new(ErrorInfo::new(
            "FATAL".to_string(),
            "08P01".to_string(),
            "the console's login is already done".to_string(),
        ))))
    }
}
