//! A logged-in client's session: the relay between the client and whichever
//! server each of its units of work is routed to.
//!
//! One task per client, one loop, with four things it may do next: write to
//! the server, write to the client, read from the server, read from the
//! client. Reads and writes are never awaited one after the other on one pair
//! of sockets, so a client that pipelines more than the socket buffers hold
//! cannot deadlock the proxy against a server busy answering it.
//!
//! Client messages are grouped into units ([`units`]); each unit is routed
//! ([`dispatch`]) when the session is at a point where it may move, and the
//! server's answers are passed back ([`responses`]). Messages pass through
//! as bytes; only headers and a few bodies are read.

mod attach;
mod causal;
mod dispatch;
mod end;
pub(crate) mod greeting;
mod local;
mod optimistic;
mod outage;
mod responses;
pub mod state;
pub mod units;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::{backend_login_error, refuse, ClientIo, Ready};
use crate::backend::pool::Lease;
use crate::backend::Login;
use crate::cancel::CancelKey;
use crate::lsn::Lsn;
use crate::protocol::messages;
use crate::protocol::FrameError;
use crate::replicas::Mark;
use crate::router::{Effect, Server};
use crate::server::Proxy;
use crate::stats::SessionSignal;
use responses::{Expect, InFlight};
use state::SessionState;
use units::{Unit, UnitBuilder};

/// Stop reading a side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 1 << 20;
/// Read buffers grow by at most this much at a time, whatever a message's
/// length claims.
const READ_CHUNK: usize = 64 * 1024;
/// Units parsed ahead of the one running, at most.
const MAX_QUEUED_UNITS: usize = 64;

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
    /// No server could be had for the client.
    NoServer { code: &'static str, message: String },
    /// The proxy is shutting down and the session reached a safe point.
    Drained,
    /// The console's `KILL`.
    Killed,
    /// Idle inside a transaction past `client_idle_in_transaction_timeout_ms`.
    IdleInTransaction,
}

enum Event {
    ClientRead(io::Result<usize>),
    ServerRead(io::Result<usize>),
    ClientWrote(io::Result<usize>),
    ServerWrote(io::Result<usize>),
    Shutdown,
    /// `PAUSE` or `RESUME` while units were held.
    PauseChanged,
    /// The console's `KILL`.
    Killed,
    /// Idle inside a transaction for too long.
    IdleInTransaction,
}

/// A server connection in use by the session.
struct Attached {
    server: Server,
    lease: Lease,
    /// What a unit sent on it counts.
    counters: Arc<crate::stats::ServerCounters>,
}

/// A server this session has used: its pool and counters, looked up in
/// the proxy's maps once rather than for every unit.
struct Known {
    pool: Arc<crate::backend::pool::Pool>,
    counters: Arc<crate::stats::ServerCounters>,
}

struct Session {
    proxy: Arc<Proxy>,
    client: crate::stream::ClientStream,
    /// Client bytes read and not yet handled.
    cbuf: BytesMut,
    to_client: BytesMut,
    to_server: BytesMut,
    current: Option<Attached>,
    /// Session pooling: connections kept for this client, one per server.
    stash: Vec<Attached>,
    /// The connection last used on each server, asked for again first.
    last_conn: Vec<(Server, u64)>,
    /// The servers used so far.
    known: Vec<Known>,
    /// Which replica is this session's own (see `router::pick_replica`).
    replica_home: usize,
    builder: UnitBuilder,
    /// Units read from the client and not yet sent to a server.
    queued: VecDeque<Unit>,
    /// What the server still owes, one entry per ReadyForQuery to come.
    pending: VecDeque<Expect>,
    /// A batch sent up to a Flush, whose Sync has not come yet.
    open_batch: Option<InFlight>,
    /// The server's transaction status from its last ReadyForQuery.
    tx_status: u8,
    /// The open transaction wrote, so its commit moves the causal LSN.
    tx_wrote: bool,
    /// The client's transaction block was lost with its server: its units
    /// are answered here as Postgres answers an aborted block, until it
    /// ends (see `outage.rs`).
    lost_block: bool,
    /// Why, for the next statement, when nothing was in flight to say it.
    lost_block_news: Option<String>,
    /// SET effects inside the open transaction, applied on commit.
    tx_effects: Vec<Effect>,
    /// A lone BEGIN held back until the next unit shows where the
    /// transaction should run.
    deferred_begin: Option<bytes::Bytes>,
    /// The held-back BEGIN said `READ WRITE`.
    deferred_begin_read_write: bool,
    /// A block running optimistically on a replica, or moving off it.
    optimistic: Option<Box<optimistic::Optimistic>>,
    /// Bytes left of a client CopyData being streamed to the server.
    client_streaming: usize,
    /// Bytes left of a server message being streamed to the client.
    server_streaming: usize,
    /// Answers from a replica held back until they are complete, so a
    /// refused read can be re-run on the primary with the client none the wiser.
    held: BytesMut,
    /// The server sent a FATAL error: it is about to close.
    server_fatal: bool,
    state: SessionState,
    /// The end of this session's last committed write, and its epoch.
    causal: Option<Mark>,
    /// The epoch of the primary the current unit went to: its commit LSN
    /// is on that timeline.
    primary_epoch: u32,
    /// The last client unit committed a write; the LSN query after it
    /// moves `causal`.
    commit_awaiting_lsn: bool,
    /// State only the primary has (LISTEN, temp table, ...).
    pinned: Vec<&'static str>,
    /// `PAUSE` / `RESUME` of the console.
    pause: watch::Receiver<bool>,
    /// Units are held by `PAUSE`.
    held_by_pause: bool,
    /// The session has work on a server (a unit in flight, a transaction
    /// open), as `PAUSE` counts it.
    busy: bool,
    /// Function volatility of the session's database.
    catalog: Arc<crate::catalog::Catalog>,
    /// It ran DDL that may change functions; the catalog is read again
    /// when its transaction ends.
    functions_changed: bool,
    /// A server's FATAL was kept from the client (its session was to
    /// survive the loss): if it ends after all, it must say why itself.
    fatal_swallowed: bool,
    /// A commit's LSN was lost with the primary's connection: reads go to
    /// the primary until an LSN query answers again.
    causal_unknown: bool,
    /// Rows of a catalog query in flight (`None` if it failed).
    catalog_rows: Option<Vec<String>>,
    /// `default_transaction_read_only` is on (as the server reports it):
    /// plain `BEGIN` blocks are read-only and may run on a replica.
    declared_read_only: bool,
    /// The role's or database's `default_transaction_isolation`, as the
    /// greeting connection found it.
    role_isolation: String,
    /// A replica refused this session's reads as SERIALIZABLE (a default
    /// the proxy could not see): its reads go to the primary from now on.
    serializable_refused: bool,
    /// The answer to the last LSN query, until its ReadyForQuery.
    lsn_answer: Option<Lsn>,
    /// A write's ReadyForQuery, passed on once its commit LSN is known.
    ready_after_lsn: Option<BytesMut>,
    /// A commit's causal LSN to record in the shared causal store, under
    /// this key, on this timeline; its ReadyForQuery waits in
    /// `ready_after_store` until the store has it.
    store_write: Option<(String, u32, Lsn)>,
    ready_after_store: Option<BytesMut>,
    /// The shared causal store did not answer this session's last read:
    /// its reads go to the primary until it does.
    store_down: std::sync::atomic::AtomicBool,
    /// How this client's server connections log in.
    login: Login,
    /// The login role, for `causal_scope = "user"`.
    user: String,
    /// `causeway.client_id`, naming the client across connections.
    client_id: Option<String>,
    cancel: CancelKey,
    draining: bool,
    bytes_received: metrics::Counter,
    bytes_sent: metrics::Counter,
    /// This client in `SHOW CLIENTS`.
    entry: crate::stats::ClientEntry,
    /// The connection and causal LSN `entry` shows, so that it is written
    /// only when they change; `None` makes the next unit write it.
    shown: Option<(u64, Option<Lsn>)>,
    /// The relay's last poll of the client socket was pending, so this
    /// task's waker is with the socket (see the relay's poll).
    client_armed: bool,
}

/// Runs a logged-in client's session to its end.
pub async fn run(
    proxy: Arc<Proxy>,
    mut io: ClientIo,
    ready: Ready,
    shutdown: watch::Receiver<bool>,
) {
    let cancel = proxy.cancels.register();
    let mut state = SessionState::default();
    let mut client_id = None;
    let mut min_lsn = None;
    for (name, value) in &ready.settings {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "causeway.client_id" => client_id = Some(value.clone()).filter(|v| !v.is_empty()),
            "causeway.min_lsn" => match value.parse::<Lsn>() {
                Ok(lsn) => min_lsn = Some(lsn),
                Err(e) => {
                    let message = format!("invalid value for parameter \"causeway.min_lsn\": {e}");
                    let fatal = super::LoginError::Fatal {
                        code: "22023".into(),
                        message,
                    };
                    refuse(&mut io, fatal).await;
                    return;
                }
            },
            _ => {
                let sql = crate::router::facts::set_config_sql(&name, value);
                state.settings.insert(name, sql);
            }
        }
    }
    // Counted from here, before the client hears it is in: a client told
    // it is in is always counted against the next one's limits, as a
    // Postgres backend counts from its start.
    let entry = proxy.stats.register(crate::stats::ClientInfo {
        pid: cancel.pid,
        user: ready.params.user().unwrap_or_default().to_string(),
        database: ready.login.database.clone(),
        addr: ready.peer,
        application_name: ready
            .params
            .get("application_name")
            .unwrap_or_default()
            .to_string(),
        connected_at: std::time::SystemTime::now(),
        live: std::sync::Mutex::new(crate::stats::ClientLive {
            client_id: client_id.clone(),
            ..Default::default()
        }),
        units: std::sync::atomic::AtomicU64::new(0),
        signal: crate::stats::SessionSignal::default(),
    });
    if let Some(refusal) = greeting::over_client_limits(&proxy, &ready) {
        refuse(&mut io, refusal).await;
        return;
    }
    // The greeting comes from a primary connection, which also proves the
    // database and login work before the client is told it is in.
    let (greeting_server, pool, mut lease) =
        match greeting::greeting_connection(&proxy, &ready.login).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "no server connection for new client");
                refuse(&mut io, backend_login_error(e)).await;
                return;
            }
        };
    // Bring the greeting connection to the client's startup settings. A
    // connection another client used first may fail to be undone: it is
    // closed, and a new one tried, before the client is blamed.
    let mut attempt = 0;
    loop {
        let used_before = !lease.conn.settings.is_empty();
        let catchup = state.catch_up(&mut lease.conn, &[], &[]);
        let Some(sql) = catchup.settings else { break };
        match lease.conn.run_internal(&sql).await {
            Ok(None) => break,
            Ok(Some(e)) if used_before && attempt == 0 => {
                tracing::warn!(code = %e.code, message = %e.message, "could not undo another client's settings; closing that server connection");
                lease.conn.unclean = true;
                lease.give_back();
                attempt += 1;
                lease = match pool.checkout_new().await {
                    Ok(lease) => lease,
                    Err(e) => {
                        refuse(&mut io, backend_login_error(e)).await;
                        return;
                    }
                };
            }
            Ok(Some(e)) => {
                lease.conn.unclean = true;
                lease.give_back();
                refuse(
                    &mut io,
                    super::LoginError::Fatal {
                        code: e.code,
                        message: e.message,
                    },
                )
                .await;
                return;
            }
            Err(e) => {
                refuse(&mut io, backend_login_error(e)).await;
                return;
            }
        }
    }
    // The first session of a database reads which of its functions may
    // write, before any of its reads is routed.
    let catalog = proxy.catalogs.get(&ready.login.database);
    if !catalog.is_loaded() {
        match lease
            .conn
            .query_column(crate::catalog::VOLATILE_FUNCTIONS_QUERY)
            .await
        {
            Ok(Ok(names)) => catalog.load(names),
            Ok(Err(e)) => {
                tracing::warn!(code = %e.code, message = %e.message, "could not read the function catalog; calls go to the primary")
            }
            Err(e) => {
                refuse(&mut io, backend_login_error(e)).await;
                return;
            }
        }
    }
    let declared_read_only = lease
        .conn
        .params
        .get("default_transaction_read_only")
        .is_some_and(|v| v == "on");
    let role_isolation = lease.conn.default_isolation.clone();
    let mut greeting = BytesMut::with_capacity(512);
    let mut params: Vec<_> = lease.conn.params.iter().collect();
    params.sort();
    for (name, value) in params {
        messages::parameter_status(&mut greeting, name, value);
    }
    messages::backend_key_data(&mut greeting, cancel.pid, cancel.secret);
    messages::ready_for_query(&mut greeting, b'I');
    if io.stream.write_all(&greeting).await.is_err() {
        lease.give_back();
        return;
    }
    let lease_id = lease.conn.id;
    let counters = proxy.stats.server(&lease.conn.server_name);
    let known = vec![Known {
        pool,
        counters: counters.clone(),
    }];
    let replica_home = proxy
        .spread
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pause_rx = proxy.pause.subscribe();
    let causal = min_lsn.map(|lsn| proxy.monitor.mark(lsn));
    let mut session = Session {
        proxy,
        client: io.stream,
        cbuf: io.rbuf,
        // Empty until used: an idle client holds no write buffers.
        to_client: BytesMut::new(),
        to_server: BytesMut::new(),
        current: Some(Attached {
            server: greeting_server,
            lease,
            counters,
        }),
        stash: Vec::new(),
        last_conn: vec![(greeting_server, lease_id)],
        known,
        replica_home,
        builder: UnitBuilder::default(),
        queued: VecDeque::new(),
        pending: VecDeque::new(),
        open_batch: None,
        tx_status: b'I',
        tx_wrote: false,
        lost_block: false,
        lost_block_news: None,
        tx_effects: Vec::new(),
        deferred_begin: None,
        deferred_begin_read_write: false,
        optimistic: None,
        client_streaming: 0,
        server_streaming: 0,
        held: BytesMut::new(),
        server_fatal: false,
        state,
        causal,
        primary_epoch: 0,
        commit_awaiting_lsn: false,
        lsn_answer: None,
        ready_after_lsn: None,
        store_write: None,
        ready_after_store: None,
        store_down: std::sync::atomic::AtomicBool::new(false),
        login: ready.login.clone(),
        user: ready.params.user().unwrap_or_default().to_string(),
        client_id,
        pinned: Vec::new(),
        pause: pause_rx,
        held_by_pause: false,
        busy: false,
        catalog,
        functions_changed: false,
        catalog_rows: None,
        causal_unknown: false,
        fatal_swallowed: false,
        declared_read_only,
        role_isolation,
        serializable_refused: false,
        cancel,
        draining: *shutdown.borrow(),
        bytes_received: metrics::counter!("causeway_client_bytes_received_total"),
        bytes_sent: metrics::counter!("causeway_client_bytes_sent_total"),
        entry,
        shown: None,
        client_armed: false,
    };
    session.set_cancel_target();
    crate::metrics::client_connected();
    let end = session.relay().await;
    session.proxy.pause.set_busy(session.busy, false);
    session.finish(end).await;
    crate::metrics::client_disconnected();
}

fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_CHUNK);
    }
}

fn advance(buf: &mut BytesMut, n: usize) {
    buf.advance(n);
    if buf.is_empty() {
        buf.clear();
    }
}

impl Session {
    /// No request in flight, no transaction or batch open, nothing
    /// half-read: the session may release its server or end here.
    fn at_rest(&self) -> bool {
        self.pending.is_empty()
            && self.tx_status == b'I'
            && self.open_batch.is_none()
            && self.deferred_begin.is_none()
            && self.optimistic.is_none()
            && self.queued.is_empty()
            && !self.builder.is_building()
            && self.client_streaming == 0
            && self.server_streaming == 0
            && self.to_server.is_empty()
    }

    fn set_cancel_target(&mut self) {
        self.cancel
            .set(self.current.as_ref().map(|a| crate::cancel::CancelTarget {
                addr: a.lease.conn.peer,
                pid: a.lease.conn.backend_pid,
                secret: a.lease.conn.backend_secret,
            }));
    }

    async fn relay(&mut self) -> End {
        // KILL and the shutdown's drain come through the client's signal.
        let info = self.entry.info.clone();
        // A timer that lives as long as the loop, so a turn does not read
        // the clock.
        let idle_limit = std::time::Duration::from_millis(
            self.proxy
                .config
                .proxy
                .client_idle_in_transaction_timeout_ms,
        );
        let mut idle_timer = std::pin::pin!(tokio::time::sleep(idle_limit));
        let mut idle_timer_armed = false;
        loop {
            if let Some((key, timeline, lsn)) = self.store_write.take() {
                self.store_commit(key, timeline, lsn).await;
            }
            if let Err(end) = self.dispatch_queued().await {
                return end;
            }
            // Bytes already buffered that no read will announce again:
            // messages pipelined behind the startup packet, and those left
            // when a burst held more than MAX_QUEUED_UNITS units. Without
            // this a client waiting for their answers waits forever.
            if !self.cbuf.is_empty() && self.queued.len() < MAX_QUEUED_UNITS {
                match self.handle_client_bytes() {
                    Ok(true) => {}
                    Ok(false) => return End::ClientLeft,
                    Err(e) => return End::ClientProtocol(e),
                }
                if let Err(end) = self.dispatch_queued().await {
                    return end;
                }
            }
            self.write_eagerly();
            self.release_if_at_rest();
            let busy = !self.pending.is_empty()
                || self.open_batch.is_some()
                || self.optimistic.is_some()
                || (self.tx_status != b'I' && self.deferred_begin.is_none() && !self.lost_block);
            if busy != self.busy {
                self.proxy.pause.set_busy(self.busy, busy);
                self.busy = busy;
            }
            if self.draining && self.at_rest() && self.to_client.is_empty() && self.cbuf.is_empty()
            {
                return End::Drained;
            }
            // Idle inside a transaction on a server: the timer runs, from
            // the moment the session became idle.
            let idle_in_transaction = !idle_limit.is_zero()
                && self.tx_status != b'I'
                && self.deferred_begin.is_none()
                && self.pending.is_empty()
                && self.queued.is_empty()
                && self.to_server.is_empty()
                && !self.builder.is_building();
            if idle_in_transaction && !idle_timer_armed {
                idle_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + idle_limit);
            }
            idle_timer_armed = idle_in_transaction;
            let client_room =
                self.to_server.len() < HIGH_WATER && self.queued.len() < MAX_QUEUED_UNITS;
            let read_server = self.to_client.len() < HIGH_WATER;
            let draining = self.draining;
            // The four sockets' directions and the session's signals, polled
            // in this order (writes first) by hand: a `select!` would build
            // and drop a future per branch every turn.
            let mut server = self.current.as_mut().map(|attached| {
                let conn = &mut *attached.lease.conn;
                (&mut conn.stream, &mut conn.rbuf, &mut conn.read_armed)
            });
            let client = &mut self.client;
            let cbuf = &mut self.cbuf;
            let client_armed = &mut self.client_armed;
            let (to_server, to_client) = (&self.to_server, &self.to_client);
            let mut pause_changed = self.held_by_pause.then(|| Box::pin(self.pause.changed()));
            let event = std::future::poll_fn(|cx| {
                use std::future::Future;
                use std::pin::Pin;
                use std::task::Poll;
                use tokio::io::AsyncWrite;
                if !to_server.is_empty() {
                    if let Some((stream, _, _)) = server.as_mut() {
                        if let Poll::Ready(r) = Pin::new(&mut **stream).poll_write(cx, to_server) {
                            return Poll::Ready(Event::ServerWrote(r));
                        }
                    }
                }
                if !to_client.is_empty() {
                    if let Poll::Ready(r) = Pin::new(&mut *client).poll_write(cx, to_client) {
                        return Poll::Ready(Event::ClientWrote(r));
                    }
                }
                // Reads leave this task's waker with a socket once per
                // wait, not once per turn (see `Socket::poll_read_armed`).
                if read_server {
                    if let Some((stream, rbuf, armed)) = server.as_mut() {
                        reserve_for_read(rbuf);
                        if let Poll::Ready(r) = stream.poll_read_armed(cx, rbuf, armed) {
                            return Poll::Ready(Event::ServerRead(r));
                        }
                    }
                }
                if client_room {
                    reserve_for_read(cbuf);
                    if let Poll::Ready(r) = client.poll_read_armed(cx, cbuf, client_armed) {
                        return Poll::Ready(Event::ClientRead(r));
                    }
                }
                let raised = info.signal.poll_raised(cx);
                if !draining && raised & SessionSignal::DRAIN != 0 {
                    return Poll::Ready(Event::Shutdown);
                }
                if let Some(changed) = pause_changed.as_mut() {
                    if changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::PauseChanged);
                    }
                }
                if raised & SessionSignal::KILL != 0 {
                    return Poll::Ready(Event::Killed);
                }
                if idle_in_transaction && idle_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::IdleInTransaction);
                }
                Poll::Pending
            })
            .await;
            drop(pause_changed);
            match event {
                Event::ServerWrote(Ok(n)) => advance(&mut self.to_server, n),
                Event::ClientWrote(Ok(n)) => {
                    self.bytes_sent.increment(n as u64);
                    advance(&mut self.to_client, n)
                }
                Event::ServerWrote(Err(e)) => {
                    if let Err(end) = self.server_failed(e.to_string()) {
                        return end;
                    }
                }
                Event::ClientWrote(Err(_)) => return End::ClientLeft,
                Event::ServerRead(Ok(0)) => {
                    if let Err(end) =
                        self.server_failed("server closed the connection unexpectedly".into())
                    {
                        return end;
                    }
                }
                Event::ServerRead(Err(e)) => {
                    if let Err(end) = self.server_failed(e.to_string()) {
                        return end;
                    }
                }
                Event::ServerRead(Ok(_)) => {
                    if let Err(e) = self.handle_server_bytes() {
                        if let Err(end) = self.server_failed(e.to_string()) {
                            return end;
                        }
                    }
                }
                Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => return End::ClientLeft,
                Event::ClientRead(Ok(n)) => {
                    self.bytes_received.increment(n as u64);
                    match self.handle_client_bytes() {
                        Ok(true) => {}
                        Ok(false) => return End::ClientLeft,
                        Err(e) => return End::ClientProtocol(e),
                    }
                }
                Event::Shutdown => self.draining = true,
                Event::PauseChanged => self.held_by_pause = false,
                Event::Killed => return End::Killed,
                Event::IdleInTransaction => return End::IdleInTransaction,
            }
        }
    }

    /// Writes what is waiting for the server and the client at once, where
    /// the socket takes it without waiting: a turn of the loop saved for
    /// each. Whatever is left (TLS, a full socket) goes through the loop.
    fn write_eagerly(&mut self) {
        if !self.to_server.is_empty() {
            let written = self
                .current
                .as_ref()
                .and_then(|a| a.lease.conn.stream.try_write_now(&self.to_server));
            if let Some(n) = written {
                advance(&mut self.to_server, n);
            }
        }
        if !self.to_client.is_empty() {
            if let Some(n) = self.client.try_write_now(&self.to_client) {
                self.bytes_sent.increment(n as u64);
                advance(&mut self.to_client, n);
            }
        }
    }

    /// Groups whole client messages into units. Returns false on Terminate.
    fn handle_client_bytes(&mut self) -> Result<bool, FrameError> {
        let source = units::CachedFacts {
            cache: &self.proxy.facts_cache,
            extra_write_functions: &self.proxy.config.routing.extra_write_functions,
            catalog: &self.catalog,
        };
        // COPY data goes to the server in COPY mode, which is the current
        // one; if units are still queued it must wait behind them.
        let mut copy = BytesMut::new();
        let parsed = self.builder.parse(
            &mut self.cbuf,
            &mut self.queued,
            &mut copy,
            &mut self.client_streaming,
            &self.state,
            &source,
            MAX_QUEUED_UNITS,
        )?;
        if !copy.is_empty() {
            match self.queued.back_mut() {
                Some(last) => {
                    let mut bytes = BytesMut::from(&last.bytes[..]);
                    bytes.extend_from_slice(&copy);
                    last.bytes = bytes.freeze();
                }
                None => self.to_server.extend_from_slice(&copy),
            }
        }
        Ok(!matches!(parsed, units::Parsed::Terminate))
    }

    /// Gives the server back (transaction pooling) or keeps it aside
    /// (session pooling) once the session is at rest.
    fn release_if_at_rest(&mut self) {
        if self.current.is_none() || !self.at_rest() || !self.pinned.is_empty() {
            return;
        }
        if let Some(attached) = self.current.take() {
            if !attached.lease.conn.rbuf.is_empty() {
                // Something unasked-for is buffered (a notice): keep it with
                // the session, which reads it next.
                self.current = Some(attached);
                return;
            }
            match self.proxy.config.pool.mode {
                crate::config::PoolMode::Transaction => attached.lease.give_back(),
                crate::config::PoolMode::Session => self.stash.push(attached),
            }
            self.cancel.set(None);
        }
    }

    /// The current server connection failed. A read that nothing of has
    /// reached the client is re-run elsewhere; otherwise the session ends.
    fn server_failed(&mut self, why: String) -> Result<(), End> {
        let Some(attached) = self.current.take() else {
            return Err(End::ServerLost(why));
        };
        if self.answer_lost_unit(&attached) {
            return Ok(());
        }
        if self.idle_between_units() {
            // Closed between units (a restart, pg_terminate_backend, an idle
            // timeout): nothing was lost, the next unit gets a new one, with
            // the session's state replayed.
            tracing::info!(server = %attached.lease.conn.server_name, reason = %why, "server connection closed while idle; the next unit gets a new one");
            self.server_fatal = false;
            return Ok(());
        }
        // A unit kept for a re-run: a replica's read at rest, or a read
        // sent to the primary because its session's commit LSN was lost
        // with it (the proxy's LSN query may be queued behind it).
        let retry = self
            .pending
            .iter()
            .rev()
            .find_map(|e| match e {
                Expect::Client(inflight) => Some(inflight.retry.clone()),
                Expect::Internal(_) => None,
            })
            .flatten();
        // An optimistic block on a replica moves to the primary whole, as
        // long as no answer of the unit in flight reached the client.
        let client_waiting = self.pending.iter().any(|e| matches!(e, Expect::Client(_)));
        let optimistic = matches!(attached.server, Server::Replica(_))
            && (retry.is_some() || !client_waiting)
            && self
                .optimistic
                .as_ref()
                .is_some_and(|b| b.phase == optimistic::Phase::OnReplica);
        if retry.is_none() && !optimistic {
            if self.answer_lost_block(&attached, &why) {
                return Ok(());
            }
            self.current = Some(attached);
            return Err(End::ServerLost(why));
        }
        let name = attached.lease.conn.server_name.clone();
        tracing::warn!(server = %name, reason = %why, "server failed during a read; re-running it elsewhere");
        let lost = match attached.server {
            Server::Replica(_) => {
                self.proxy.monitor.report_failure(&name, &why);
                "replica_lost"
            }
            Server::Primary => "primary_lost",
        };
        self.proxy.pools.drop_idle(&name);
        crate::metrics::retried(&name, lost, "");
        self.proxy
            .stats
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending.clear();
        self.held.clear();
        self.server_streaming = 0;
        self.server_fatal = false;
        self.fatal_swallowed = false;
        self.tx_status = b'I';
        if let Some(block) = self.optimistic.as_mut().filter(|_| optimistic) {
            block.phase = optimistic::Phase::Leaving;
            block.moved = Some(optimistic::Move::Replica);
            if retry.is_some() {
                // It runs again after the replay, not in it.
                block.forget_last();
            }
            // The client is still in its transaction, now being moved.
            self.tx_status = b'T';
        }
        if let Some(mut unit) = retry {
            unit.retried = true;
            self.queued.push_front(unit);
        }
        Ok(())
    }
}
