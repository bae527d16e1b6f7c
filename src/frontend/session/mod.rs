//! A logged-in client's session: the relay between the client and whichever
//! server each of its units of work is routed to.
//!
//! One task per client, one loop, with four things it may do next: write to
//! the server, write to the client, read from the server, read from the
//! client. Reads and writes are never awaited one after the other on one pair
//! of sockets, so a client that pipelines more than the socket buffers hold
//! cannot deadlock the proxy against a server busy answering it.
//!
//! A session starts in [`start`] (the greeting) and runs in [`relay`]'s
//! loop. Client messages are grouped into units ([`units`]); each unit is
//! routed ([`dispatch`]) when the session is at a point where it may move,
//! and the server's answers are passed back ([`responses`]). Messages pass
//! through as bytes; only headers and a few bodies are read.

mod aborted;
mod attach;
mod causal;
mod dispatch;
mod end;
pub(crate) mod greeting;
mod inflight;
mod local;
mod optimistic;
mod outage;
mod parses;
mod refusals;
mod relay;
mod responses;
mod route;
mod start;
pub mod state;
pub mod texts;
pub mod units;

pub use start::run;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::watch;

use crate::backend::pool::Lease;
use crate::backend::Login;
use crate::cancel::CancelKey;
use crate::lsn::Lsn;
use crate::protocol::FrameError;
use crate::replicas::Mark;
use crate::router::{Effect, Server};
use crate::server::Proxy;
use inflight::{Expect, InFlight};
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
    /// The status the server will be in once it has run the client units
    /// sent and not yet answered (a pipeline: BEGIN, UPDATE and COMMIT
    /// each in its own Sync, sent at once); only meaningful while such a
    /// unit is pending.
    tx_after_sent: u8,
    /// The open transaction wrote, so its commit moves the causal LSN.
    tx_wrote: bool,
    /// The client's transaction block was lost with its server: its units
    /// are answered here as Postgres answers an aborted block, until it
    /// ends (see `outage.rs`).
    lost_block: bool,
    /// Why, for the next statement, when nothing was in flight to say it.
    lost_block_news: Option<String>,
    /// A batch the client had not synced failed with its server: what the
    /// client sends up to its Sync is skipped, as Postgres skips it after
    /// an error, and the Sync answered (see `outage.rs`).
    skip_to_sync: bool,
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
    /// What `SHOW CLIENTS` last showed the session doing.
    shown_state: crate::stats::ClientState,
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
    /// Its transactions default to SERIALIZABLE (its settings, else the
    /// role's default): worked out when its settings change, not per unit.
    serializable_default: bool,
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
    /// The client id, and the causal LSN a change of it drops, as they were
    /// before the open block set it: put back if the block rolls back, as
    /// the server undoes a SET.
    client_id_before_block: Option<(Option<String>, Option<crate::replicas::Mark>)>,
    cancel: CancelKey,
    draining: bool,
    bytes_received: metrics::Counter,
    bytes_sent: metrics::Counter,
    /// This client in `SHOW CLIENTS`.
    entry: crate::stats::ClientEntry,
    /// The connection and causal LSN `entry` shows, so that it is written
    /// only when they change; `None` makes the next unit write it.
    shown: Option<(u64, Option<Lsn>)>,
    /// The waker the relay left with the client socket (see
    /// [`crate::stream::ReadArm`]).
    client_arm: crate::stream::ReadArm,
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

    /// The current server connection failed. A read that nothing of has
    /// reached the client is re-run elsewhere; otherwise the session ends.
    fn server_failed(&mut self, why: String) -> Result<(), End> {
        let Some(attached) = self.current.take() else {
            return Err(End::ServerLost(why));
        };
        if self.answer_lost_units(&attached, &why) {
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
        // The unit of an optimistic block in flight, kept for a re-run
        // (the proxy's own statements may be queued behind it).
        let mut clients = self.pending.iter().filter_map(|e| match e {
            Expect::Client(inflight) => Some(inflight),
            Expect::Internal(_) => None,
        });
        let retry = match (clients.next(), clients.next()) {
            (Some(only), None) => only.retry.clone(),
            _ => None,
        };
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
        self.note_reruns(&attached, &why, 1);
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
