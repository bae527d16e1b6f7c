//! Sending units to servers: each in its turn, where routing says (see
//! `route.rs`), on a connection brought up to date with the session's
//! state, and asking the primary for the commit LSN after a write.

use std::sync::atomic::Ordering;

use super::inflight::{Expect, InFlight, Internal};
use super::units::Unit;
use super::{End, Session};
use crate::protocol::messages;
use crate::router::{Reason, Server};

/// Asks the primary how far its WAL goes, right after a commit, on the
/// connection that committed. The insert position, not the flush position:
/// with `synchronous_commit = off` the flush position can still be short of
/// the commit record.
pub const LSN_QUERY: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()";

/// Asked inside a block, just before its `COMMIT`: whether the transaction
/// has a transaction ID, which it gets at its first write of any kind.
pub const WROTE_QUERY: &str = "SELECT pg_catalog.txid_current_if_assigned() IS NOT NULL";

/// Whether a read could write where its text does not show it: it calls a
/// function, or names what may be a view over one (`FROM`, `JOIN`, `TABLE`),
/// or runs what was prepared or declared earlier (`EXECUTE`, `FETCH`, a
/// Bind without a Parse). `SELECT 1` and `SHOW x` cannot.
fn may_hide_a_write(unit: &Unit) -> bool {
    if !unit.facts.calls.is_empty() || !unit.facts.executes.is_empty() {
        return true;
    }
    let texts = super::units::sql_texts(&unit.bytes);
    let names_more = |sql: &str| {
        sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| {
                ["from", "join", "table", "execute", "fetch", "move"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
            })
    };
    texts.is_empty() || !unit.uses.is_empty() || texts.iter().any(|t| names_more(t))
}

impl Session {
    /// Sends every queued unit that may go now. A unit that needs a
    /// routing decision waits until the server has answered everything
    /// before it, so the decision sees the latest causal LSN.
    pub(super) async fn dispatch_queued(&mut self) -> Result<(), End> {
        while let Some(unit) = self.queued.front() {
            if self.skip_to_sync {
                let Some(unit) = self.queued.pop_front() else {
                    break;
                };
                self.skip_unsynced(&unit);
                continue;
            }
            if self.must_leave_open_batch(unit) {
                self.sync_open_batch();
                continue;
            }
            let current = self.current.as_ref().map(|a| a.server);
            let in_block = self.tx_status != b'I'
                || self.open_batch.is_some()
                || self.deferred_begin.is_some();
            if self.lost_block || self.lacks_statement_in_aborted_block(unit) {
                // Answered here, in order, as an aborted block is.
                if !self.pending.is_empty() || self.open_batch.is_some() {
                    return Ok(());
                }
                let Some(unit) = self.queued.pop_front() else {
                    break;
                };
                self.answer_in_lost_block(&unit);
                continue;
            }
            if unit.local.is_some() || unit.answered.is_some() {
                // Answered here, in order: wait until the server has
                // answered everything before it.
                if !self.pending.is_empty() || self.open_batch.is_some() {
                    return Ok(());
                }
                let Some(unit) = self.queued.pop_front() else {
                    break;
                };
                match &unit.answered {
                    Some(answer) => {
                        self.to_client.extend_from_slice(answer);
                        self.skip_to_sync = !unit.synced;
                    }
                    None => self.answer_local(&unit),
                }
                continue;
            }
            // PAUSE: units that would start work on a server wait; those
            // of a transaction already open go on, so it can finish.
            let in_server_transaction = (self.tx_status != b'I' && self.deferred_begin.is_none())
                || self.open_batch.is_some()
                || self.optimistic.is_some();
            if !in_server_transaction && *self.pause.borrow_and_update() {
                self.held_by_pause = true;
                return Ok(());
            }
            if self.optimistic.is_some() {
                use super::optimistic::Step;
                match self.optimistic_step().await? {
                    Step::Wait => return Ok(()),
                    Step::Continue => continue,
                    Step::Route(server, reason) => {
                        let Some(unit) = self.queued.pop_front() else {
                            break;
                        };
                        if let Some(block) = self.optimistic.as_mut() {
                            if (reason == Reason::Optimistic && unit.facts.is_read())
                                || block.read_only
                            {
                                block.record(&unit);
                            }
                        }
                        if let Some(unit) = self.send_now(unit, server, reason)? {
                            self.send(unit, server, reason).await?;
                        }
                        continue;
                    }
                }
            }
            let Some(unit) = self.queued.front() else {
                break;
            };
            let (server, reason) = if self.deferred_begin.is_some() {
                // The held-back BEGIN goes where its first statement goes,
                // whatever server the session used before it (nothing has
                // been sent since the BEGIN, so moving is safe).
                let view = self.view();
                let read_only = !unit.facts.writes()
                    && !unit.facts.serializable
                    && !unit.facts.read_write
                    && !self.deferred_begin_read_write
                    && (unit.facts.set_tx_read_only || view.read_only_blocks);
                let optimistic = self.optimistic_enabled()
                    && unit.facts.is_read()
                    && unit.synced
                    && !view.serializable
                    && !view.pinned;
                if view.serializable && read_only {
                    (Server::Primary, Reason::Serializable)
                } else if read_only {
                    match self.choose_replica(true).await? {
                        Some(choice) => choice,
                        None => (Server::Primary, Reason::Transaction),
                    }
                } else if optimistic {
                    let begin = self.deferred_begin.clone().unwrap_or_default();
                    self.start_optimistic(begin).await?
                } else {
                    (Server::Primary, Reason::Transaction)
                }
            } else if in_block || !self.pinned.is_empty() {
                match current {
                    Some(server) => (
                        server,
                        if !self.pinned.is_empty() {
                            Reason::Pinned
                        } else {
                            Reason::Transaction
                        },
                    ),
                    None => (Server::Primary, Reason::Pinned),
                }
            } else if !self.pending.is_empty() {
                // Pipelined behind a client request still running: only the
                // primary is safe without knowing how that request ends. Behind
                // the proxy's own statements (the commit LSN), just wait: they
                // take microseconds and decide where a read may go.
                let client_waiting = self.pending.iter().any(|e| matches!(e, Expect::Client(_)));
                if current != Some(Server::Primary) || !client_waiting {
                    return Ok(());
                }
                let reason = if unit.facts.is_read() {
                    Reason::Pipelined
                } else {
                    Reason::Write
                };
                (Server::Primary, reason)
            } else if unit.retried {
                (Server::Primary, Reason::Retry)
            } else if (unit.lone_begin || (unit.begin_with_modes && self.optimistic_enabled()))
                && self.pinned.is_empty()
            {
                let Some(unit) = self.queued.pop_front() else {
                    break;
                };
                self.hold_begin(unit);
                continue;
            } else if self.opens_optimistic_block(unit) {
                // BEGIN and its first reads in one batch (pgjdbc sends
                // them so): the batch is the block's first unit.
                self.start_optimistic(bytes::Bytes::new()).await?
            } else {
                match self.route(unit).await? {
                    Some(choice) => choice,
                    None => {
                        let Some(unit) = self.queued.pop_front() else {
                            break;
                        };
                        self.refuse_stale(&unit);
                        continue;
                    }
                }
            };
            let Some(unit) = self.queued.pop_front() else {
                break;
            };
            let read_only_block = self.opens_read_only_block(&unit, server, reason);
            if read_only_block {
                // Kept, so that the block can move to the primary if its
                // replica fails under it.
                let begin = self.deferred_begin.clone().unwrap_or_default();
                self.optimistic = Some(Box::new(super::optimistic::Optimistic::read_only(begin)));
            }
            if reason == Reason::Optimistic || read_only_block {
                if let Some(block) = self.optimistic.as_mut() {
                    block.record(&unit);
                }
            }
            // The proxy's own idle connections must not block DROP DATABASE.
            for database in &unit.facts.frees_database {
                self.proxy.pools.drop_idle_database(database);
            }
            if let Some(unit) = self.send_now(unit, server, reason)? {
                self.send(unit, server, reason).await?;
            }
        }
        Ok(())
    }

    /// Attaches to `server` for `unit`. A read that needs the primary only
    /// because its session's last commit LSN was lost with the primary's
    /// connection (the primary shutting down or crashing under it), or
    /// because no replica is fresh or healthy (replicas fall behind when the
    /// primary fails), or that runs again after its server failed or
    /// refused it, waits
    /// for a primary that answers, a promoted one or the same one back, as
    /// PgBouncer queues clients while its server is down: up to
    /// `query_wait_timeout_ms`, trying again every poll of the monitor.
    /// A setting goes to a replica instead. Every other unit hears at once
    /// that no primary is available.
    async fn attach_for(
        &mut self,
        unit: &Unit,
        server: Server,
        reason: Reason,
    ) -> Result<Server, End> {
        // Read from the clock only once a unit has to wait.
        let mut deadline = None;
        loop {
            match self.attach(server).await {
                Err(End::NoServer { code, .. })
                    if code != "53300"
                        && (reason == Reason::Retry || self.replica_read_on_primary(reason))
                        && unit.facts.is_read()
                        && self.may_refuse_unit(unit)
                        && std::time::Instant::now()
                            < *deadline.get_or_insert_with(|| {
                                std::time::Instant::now()
                                    + std::time::Duration::from_millis(
                                        self.proxy.config.pool.query_wait_timeout_ms,
                                    )
                            }) =>
                {
                    let pause = std::time::Duration::from_millis(
                        self.proxy.config.routing.poll_interval_ms.max(1),
                    );
                    tokio::time::sleep(pause).await;
                }
                // A setting (SET, RESET, DISCARD, PREPARE) needs no
                // particular server: a replica checks it as the primary
                // would, and the session's mirror carries it to the next
                // server. Postgres never refuses one for want of a server,
                // and a driver's connection setup sends them.
                Err(End::NoServer { code, message })
                    if code != "53300"
                        && reason == Reason::Session
                        && server == Server::Primary
                        && self.may_refuse_unit(unit) =>
                {
                    if let Some((i, _)) = self.any_replica() {
                        if let Ok(attached) = self.attach(Server::Replica(i)).await {
                            return Ok(attached);
                        }
                    }
                    return Err(End::NoServer { code, message });
                }
                attached => return attached,
            }
        }
    }

    /// Whether a read sent to the primary for `reason` would have gone to
    /// a replica but for the state of the cluster: its session's commit
    /// LSN lost with the primary (or a read pipelined behind one that
    /// was), or no replica fresh enough or healthy while replicas are
    /// configured. Such a read waits for a primary that answers, and runs
    /// again if the primary goes under it.
    fn replica_read_on_primary(&self, reason: Reason) -> bool {
        match reason {
            Reason::CausalUnknown => true,
            Reason::Pipelined => self.causal_unknown,
            Reason::Stale | Reason::NoReplica => !self.proxy.replicas.is_empty(),
            _ => false,
        }
    }

    /// Sends `unit` at once when attaching to `server` need not wait (see
    /// [`Session::attach_now`]): every unit of a transaction, and most
    /// between them. Gives the unit back otherwise, for [`Session::send`].
    /// The caller builds the future of `send`, and copies it into its own,
    /// only for the units that may wait.
    fn send_now(
        &mut self,
        unit: Unit,
        server: Server,
        reason: Reason,
    ) -> Result<Option<Unit>, End> {
        match self.attach_now(server) {
            Some(Ok(server)) => self.send_attached(unit, Ok(server), reason).map(|()| None),
            _ => Ok(Some(unit)),
        }
    }

    /// Attaches to `server`, waiting if need be, then sends the unit.
    async fn send(&mut self, unit: Unit, server: Server, reason: Reason) -> Result<(), End> {
        self.show_state(crate::stats::ClientState::Waiting);
        let attached = self.attach_for(&unit, server, reason).await;
        self.send_attached(unit, attached, reason)
    }

    /// Replays what the server attached lacks and sends the unit; or, when
    /// attaching failed, answers the client as the failure allows.
    fn send_attached(
        &mut self,
        unit: Unit,
        attached: Result<Server, End>,
        reason: Reason,
    ) -> Result<(), End> {
        let server = match attached {
            Ok(server) => server,
            // No primary: a unit that opened nothing on any server gets an
            // ERROR, and the session goes on (its reads still reach the
            // replicas; its writes work again once the primary is back).
            // No server connection came free in time: the same, with the
            // pool's words.
            Err(End::NoServer {
                code: "53300",
                message,
            }) if self.may_refuse_unit(&unit) => {
                self.refuse_unit(&unit, "53300", &format!("causeway: {message}"), None);
                return Ok(());
            }
            // A BEGIN alone, with modes (READ ONLY, ...), that needed a
            // server: on a server it cannot fail, and drivers take it so
            // (asyncpg then thinks itself in a block for good). It is held
            // back, as a lone BEGIN is, and goes with the block's first
            // statement, which may find a server, or fail in the block.
            Err(End::NoServer { .. })
                if self.may_refuse_unit(&unit) && super::aborted::begins_alone(&unit) =>
            {
                self.hold_begin(unit);
                return Ok(());
            }
            // The same for a BEGIN alone in the extended protocol (pgjdbc);
            // and a COMMIT or ROLLBACK outside any block, which needs no
            // server (a driver's ROLLBACK in an error path must not fail).
            Err(End::NoServer { message, .. }) if self.may_refuse_unit(&unit) => {
                let at_rest = self.deferred_begin.is_none() && self.tx_status == b'I';
                let lone_end = at_rest.then(|| super::units::lone_end(&unit.bytes));
                if let Some(commit) = lone_end.flatten() {
                    self.end_outside_block(commit);
                    return Ok(());
                }
                match at_rest.then(|| self.extended_begin_alone(&unit)).flatten() {
                    Some(sql) => self.hold_extended_begin(unit, &sql),
                    None => self.refuse_no_primary(&unit, &message),
                }
                return Ok(());
            }
            // Inside a block whose primary is no longer the primary (a
            // split brain, a demotion): the block is rolled back, the
            // client hears why and the session goes on.
            Err(End::NoServer {
                code: "57P03",
                message,
            }) if self.may_abort_block() => {
                self.abort_block_without_primary(&unit, &message);
                return Ok(());
            }
            Err(end) => return Err(end),
        };
        if server == Server::Primary
            && self
                .optimistic
                .as_ref()
                .is_some_and(|b| b.phase == super::optimistic::Phase::OnReplica)
        {
            // The replica could not be reached: the block simply runs on
            // the primary.
            self.optimistic = None;
        }
        let reason = if server == Server::Primary && reason == Reason::Fresh {
            Reason::NoReplica
        } else {
            reason
        };
        let Some(attached) = self.current.as_ref() else {
            return Err(End::ServerLost("no server attached".into()));
        };
        let server_name = attached.lease.conn.server_name.as_str();
        attached
            .counters
            .routed(&self.proxy.stats, server == Server::Primary, reason);
        self.entry.info.units.fetch_add(1, Ordering::Relaxed);
        let shown = (attached.lease.conn.id, self.causal.map(|m| m.lsn));
        if self.shown != Some(shown) {
            self.shown = Some(shown);
            let client_id = &self.client_id;
            self.entry.update(|live| {
                if live.server.as_deref() != Some(server_name) {
                    live.server = Some(server_name.to_string());
                }
                live.causal = shown.1;
                if live.client_id != *client_id {
                    live.client_id.clone_from(client_id);
                }
            });
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let session = self
                .causal
                .map(|m| m.lsn.to_string())
                .unwrap_or_else(|| "none".into());
            let kind = if unit.facts.is_read() { "read" } else { "unit" };
            match server {
                Server::Replica(i) => {
                    let replayed = self
                        .proxy
                        .monitor
                        .with_positions(|p| p.replicas.get(i).map(|r| r.replayed));
                    let replayed = replayed.map(|l| l.to_string()).unwrap_or_default();
                    tracing::debug!(
                        reason = reason.as_str(),
                        "{kind} from {server_name} (replayed {replayed} >= session {session})"
                    );
                }
                Server::Primary => {
                    tracing::debug!(
                        reason = reason.as_str(),
                        "{kind} to {server_name} (session {session})"
                    );
                }
            }
        }
        self.catch_up_for(&unit, unit.retried)?;
        if let Some(begin) = self.deferred_begin.take() {
            self.pending.push_back(Expect::Internal(Internal::Begin));
            self.to_server.extend_from_slice(&begin);
        }
        // State only this server has (a temp table, a LISTEN, a cursor WITH
        // HOLD made in a READ ONLY block on a replica...) keeps the session
        // on it until that state ends.
        for pin in &unit.facts.pins {
            if !self.pinned.contains(pin) {
                let name = self
                    .current
                    .as_ref()
                    .map(|a| a.lease.conn.server_name.as_str());
                tracing::debug!(reason = pin, server = name, "session pinned");
                crate::metrics::session_pinned(pin);
                self.pinned.push(pin);
            }
        }
        // Behind client units not answered yet, the status they will leave.
        let pipelined = self.pending.iter().any(|e| matches!(e, Expect::Client(_)));
        let status_before = if pipelined {
            self.tx_after_sent
        } else {
            self.tx_status
        };
        let at_rest = status_before == b'I';
        self.tx_after_sent = if unit.facts.ends_tx {
            b'I'
        } else if unit.facts.begin.is_some() && at_rest {
            b'T'
        } else {
            status_before
        };
        let wrote = unit.facts.writes();
        // A write in a transaction that stays open after this unit: inside
        // one already, or in the unit that begins it (`BEGIN; UPDATE ...`
        // in one query, or pgjdbc's BEGIN and first statement in one
        // Sync). The COMMIT that ends it must ask for the commit LSN.
        let opens_tx = at_rest && unit.facts.begin.is_some() && !unit.facts.ends_tx;
        if wrote && (!at_rest || opens_tx) {
            self.tx_wrote = true;
        }
        // Ask for the commit LSN after a unit that may commit a write.
        let mut want_lsn = server == Server::Primary
            && unit.synced
            && !unit.facts.copy_in
            && if at_rest {
                wrote && (unit.facts.begin.is_none() || unit.facts.ends_tx)
            } else {
                unit.facts.ends_tx && (self.tx_wrote || wrote)
            };
        // The end of a block on the primary in which the proxy saw no
        // write may still commit one: a view over a function that writes,
        // a function made behind the proxy's back (the catalog is read
        // again only every so often); so may a whole block in one unit
        // (`BEGIN; SELECT ...; COMMIT`).
        let unseen_write = server == Server::Primary
            && unit.synced
            && unit.facts.ends_tx
            && !unit.facts.copy_in
            && !(self.tx_wrote || wrote)
            && (status_before == b'T'
                || (at_rest && unit.facts.begin.is_some() && may_hide_a_write(&unit)));
        // So may a read the primary serves outside a block because of the
        // session (hinted there, pinned, serializable) or of the replicas
        // (none healthy), which then commits what it wrote: with replicas
        // to read from later, it asks for the LSN as a write does. Not a
        // read that found the replicas behind the session's own LSN (see
        // docs/consistency.md, "Not promised").
        let unseen_autocommit_write = server == Server::Primary
            && at_rest
            && unit.synced
            && matches!(
                reason,
                Reason::Hint | Reason::Pinned | Reason::Serializable | Reason::NoReplica
            )
            && unit.facts.is_read()
            && !self.proxy.replicas.is_empty()
            && !self.causal_unknown
            && may_hide_a_write(&unit);
        // A lone ROLLBACK commits nothing (SQLAlchemy's pool sends one at
        // every return): nothing to ask. A lone COMMIT (not behind a batch
        // cut at Flush, whose messages and Sync nothing of the proxy's may
        // come between) is preceded by the question whether the block
        // wrote (see `Session::wrote_check_answered`); anything else is
        // taken as a write.
        let lone_end = if unseen_write {
            super::units::lone_end(&unit.bytes)
        } else {
            None
        };
        let ask_first = unseen_write && lone_end == Some(true) && self.open_batch.is_none();
        if ask_first {
            self.pending
                .push_back(Expect::Internal(Internal::WroteCheck));
            messages::query(&mut self.to_server, WROTE_QUERY);
        }
        let assume_wrote =
            unseen_autocommit_write || (unseen_write && lone_end != Some(false) && !ask_first);
        want_lsn |= assume_wrote;
        self.to_server.extend_from_slice(&unit.bytes);
        // DDL that may change functions: the catalog is read again once
        // its transaction is over (a rolled-back DROP must not drop a
        // function from the catalog).
        let copy_in = unit.facts.copy_in;
        self.functions_changed |= unit.facts.changes_functions;
        let ends_work = if at_rest {
            unit.facts.begin.is_none() || unit.facts.ends_tx
        } else {
            unit.facts.ends_tx
        };
        // Also when the catalog is due to be read again: the first unit
        // that can carry it takes the mark.
        let can_carry =
            server == Server::Primary && unit.synced && !unit.facts.copy_in && ends_work;
        let reload_catalog = can_carry && (self.functions_changed || self.catalog.take_due());
        let mut inflight = InFlight::new(&unit, server, at_rest);
        // The end of a transaction that wrote: its answer must know it
        // even if a later transaction's units were sent before it came.
        inflight.tx_wrote |= (unit.facts.ends_tx && self.tx_wrote) || assume_wrote;
        inflight.writes |= assume_wrote && at_rest;
        // The rest of a batch the client cut at a Flush: only this rest
        // would run again elsewhere, so it may only while the client
        // waits for nothing of the part before the Flush.
        let head_awaited = self
            .open_batch
            .as_ref()
            .is_some_and(|b| !b.flushed_answered());
        if let Some(open) = self.open_batch.take() {
            inflight.absorb(open);
        }
        // An optimistic block's answers are digested, to compare with the
        // primary's if the block has to move there.
        let optimistic = matches!(server, Server::Replica(_))
            && self
                .optimistic
                .as_ref()
                .is_some_and(|b| b.phase == super::optimistic::Phase::OnReplica);
        if optimistic {
            inflight.digest = Some(super::optimistic::Digest::default());
        }
        if unit.synced {
            // A read outside any transaction may run again elsewhere if the
            // replica refuses it or dies; inside one, its snapshot is gone
            // with the replica, unless the block is optimistic: then the
            // whole block moves to the primary. So may a read sent to the
            // primary only because the session's last commit LSN was lost
            // with it: that primary is likely going away too (a shutdown, a
            // crash), and the read runs again on whichever answers next; and
            // so may a read pipelined behind one, which would have gone
            // there for that reason had it come alone. So may a read that
            // came to the primary only because no replica was fresh or
            // healthy: a replica behind is what a failing primary looks
            // like (it was a replica's read; with no replica configured,
            // the primary's reads stream as they come).
            // And so may such a read run again (`retry`): the primary it
            // lands on may be going away too.
            let lost_lsn_read = (reason == Reason::Retry || self.replica_read_on_primary(reason))
                && server == Server::Primary
                && at_rest
                && unit.facts.is_read();
            // Not a COPY FROM STDIN: the data the client sends after it
            // goes to the server as it comes, and would not run again.
            let retryable =
                (matches!(server, Server::Replica(_)) && (at_rest || optimistic)) || lost_lsn_read;
            if retryable && !copy_in && !head_awaited {
                inflight.retry = Some(unit);
            }
            self.pending.push_back(Expect::Client(Box::new(inflight)));
            if want_lsn {
                self.pending.push_back(Expect::Internal(Internal::Lsn));
                messages::query(&mut self.to_server, LSN_QUERY);
            } else if self.causal_unknown && server == Server::Primary && at_rest && !copy_in {
                // Learn how far the primary's WAL goes: the lost commit is
                // before it.
                self.commit_awaiting_lsn = true;
                self.pending.push_back(Expect::Internal(Internal::Lsn));
                messages::query(&mut self.to_server, LSN_QUERY);
            }
            if reload_catalog {
                self.functions_changed = false;
                // Read the catalog again on the same connection, right
                // behind the DDL: the session's next read already knows
                // whether a function it just made may write.
                self.catalog_rows = Some(Vec::new());
                self.pending.push_back(Expect::Internal(Internal::Catalog));
                messages::query(
                    &mut self.to_server,
                    crate::catalog::VOLATILE_FUNCTIONS_QUERY,
                );
            }
        } else {
            self.open_batch = Some(inflight);
        }
        Ok(())
    }
}
