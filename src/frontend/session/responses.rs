//! The server's answers: passed to the client, held back (a replica's
//! answer, until it is whole, in case it must be re-run on the primary), or
//! swallowed (the proxy's own statements), and read for what they change:
//! transaction status, prepared statements, settings, the commit LSN.

use bytes::{Buf, BytesMut};

use super::inflight::{Expect, InFlight, Internal};
use super::refusals::STATEMENT_NEEDS_PRIMARY;
use super::units::Unit;
use super::Session;
use crate::lsn::Lsn;
use crate::protocol::messages;
use crate::protocol::{self, FrameError};
use crate::replicas::Mark;
use crate::router::{Effect, Server};

/// A replica's held-back answer is passed on once it grows past this; from
/// then on the read cannot be re-run invisibly.
const MAX_HELD: usize = 256 * 1024;

/// RowDescription, DataRow, ParseComplete, BindComplete, NoData,
/// ParameterDescription: answers that change nothing the session follows.
fn is_plain_answer(tag: u8) -> bool {
    matches!(tag, b'T' | b'D' | b'1' | b'2' | b'n' | b't')
}

/// The length of the whole plain answers at the start of `buf`, and how
/// many of them are ParseComplete.
fn plain_answers(buf: &[u8]) -> Result<(usize, usize), FrameError> {
    let (mut run, mut parses) = (0, 0);
    while let Some(header) = protocol::backend_header(&buf[run..])? {
        let len = header.wire_len();
        if !is_plain_answer(header.tag) || buf.len() - run < len {
            break;
        }
        parses += usize::from(header.tag == b'1');
        run += len;
    }
    Ok((run, parses))
}

impl Session {
    /// Handles every whole message in the current server's read buffer.
    pub(super) fn handle_server_bytes(&mut self) -> Result<(), FrameError> {
        let Some(attached) = self.current.as_mut() else {
            return Ok(());
        };
        let mut rbuf = std::mem::take(&mut attached.lease.conn.rbuf);
        let result = self.handle_messages(&mut rbuf);
        if let Some(attached) = self.current.as_mut() {
            attached.lease.conn.rbuf = rbuf;
        }
        result
    }

    fn handle_messages(&mut self, rbuf: &mut BytesMut) -> Result<(), FrameError> {
        loop {
            if self.server_streaming > 0 {
                let n = self.server_streaming.min(rbuf.len());
                self.server_streaming -= n;
                self.pass_on(&rbuf[..n]);
                rbuf.advance(n);
                if rbuf.is_empty() {
                    return Ok(());
                }
            }
            let Some(header) = protocol::backend_header(rbuf)? else {
                return Ok(());
            };
            let len = header.wire_len();
            let internal = matches!(self.pending.front(), Some(Expect::Internal(_)));
            if rbuf.len() < len {
                // Big rows and COPY data stream through; everything else is
                // small and read whole.
                if matches!(header.tag, b'D' | b'd') && !internal {
                    self.server_streaming = len;
                    continue;
                }
                return Ok(());
            }
            if is_plain_answer(header.tag) {
                if let Some(Expect::Client(inflight)) = self.pending.front_mut() {
                    // A client unit's rows, their description, and the
                    // extended protocol's acknowledgements: nothing in them
                    // is read but ParseComplete's count, so a run of them
                    // passes on at once.
                    let (run, parses) = plain_answers(rbuf)?;
                    inflight.parse_completes += parses;
                    self.pass_on(&rbuf[..run]);
                    rbuf.advance(run);
                    continue;
                }
            }
            // Read in place: splitting it off would make the buffer shared.
            self.handle_message(header.tag, &rbuf[..len]);
            rbuf.advance(len);
        }
    }

    /// Sends answer bytes where the current request's answers go (whole
    /// messages, or a run of them: what it does to bytes does not depend on
    /// where messages begin).
    fn pass_on(&mut self, bytes: &[u8]) {
        if let Some(Expect::Client(inflight)) = self.pending.front_mut() {
            if let Some(digest) = inflight.digest.as_mut() {
                digest.update(bytes);
            }
        }
        match self.pending.front_mut() {
            Some(Expect::Internal(_)) => {}
            Some(Expect::Client(inflight)) if inflight.refused || inflight.replay => {}
            Some(Expect::Client(inflight)) if inflight.retry.is_some() => {
                self.held.extend_from_slice(bytes);
                if self.held.len() > MAX_HELD {
                    inflight.retry = None;
                    for code in inflight.held_errors.drain(..) {
                        crate::metrics::error_sent(code.as_bytes());
                    }
                    self.to_client.extend_from_slice(&self.held);
                    self.held.clear();
                }
            }
            _ => self.to_client.extend_from_slice(bytes),
        }
    }

    fn handle_message(&mut self, tag: u8, message: &[u8]) {
        // (Every server message passes here: one compare for the rest.)
        let own;
        let message = match (tag == b'A').then(|| self.own_notification(message)) {
            Some(Some(rewritten)) => {
                own = rewritten;
                &own[..]
            }
            _ => message,
        };
        if tag == b'S' {
            if let (Some(attached), Some((name, value))) = (
                self.current.as_mut(),
                messages::parse_parameter_status(&message[5..]),
            ) {
                if name == "default_transaction_read_only" {
                    // However it was set (SET, set_config, SESSION
                    // CHARACTERISTICS, startup option, role default), the
                    // server says so.
                    self.declared_read_only = value == "on";
                }
                // A client unit that changed a reported setting without
                // any statement the proxy follows (a SET inside a function
                // or DO block, SET LOCAL): the connection may hold state its
                // mirror lacks, so it is not lent to another client.
                let unfollowed = matches!(
                    self.pending.front(),
                    Some(Expect::Client(inflight)) if inflight.effects.is_empty()
                );
                self.builder.texts.note_parameter(&name, &value);
                let conn = &mut attached.lease.conn;
                if unfollowed && conn.params.get(&name) != Some(&value) {
                    if !conn.unclean {
                        tracing::debug!(parameter = %name, %value, "setting changed out of sight; the connection will be closed after use");
                    }
                    conn.unclean = true;
                }
                conn.params.insert(name, value);
            }
        }
        if tag == b'E' {
            let fields = messages::parse_error_fields(&message[5..]);
            if fields.severity == "FATAL" || fields.severity == "PANIC" {
                self.server_fatal = true;
            }
        }
        // A FATAL under autocommit units: the session survives it (see
        // `Session::answer_lost_units`). So does an optimistic or READ ONLY
        // block on a replica, which moves to the primary, unless the unit
        // in flight has answered the client already.
        let swallow_fatal = tag == b'E'
            && self.server_fatal
            && self.current.is_some()
            && (self.units_survive_loss()
                || self.block_survives_loss()
                || (self.block_moves_on_loss()
                    && matches!(self.pending.front(), Some(Expect::Client(f)) if f.retry.is_some())));
        match self.pending.front_mut() {
            Some(Expect::Internal(kind)) => {
                let kind = *kind;
                match tag {
                    b'A' => self.to_client.extend_from_slice(message),
                    b'D' if kind == Internal::WroteCheck
                        && messages::first_column_text(&message[5..]) == Some("t") =>
                    {
                        self.tx_wrote = true;
                    }
                    b'D' if kind == Internal::Lsn => {
                        self.lsn_answer = messages::first_column_text(&message[5..])
                            .and_then(|t| t.parse::<Lsn>().ok());
                    }
                    b'D' if kind == Internal::Catalog => {
                        if let (Some(rows), Some(name)) = (
                            self.catalog_rows.as_mut(),
                            messages::first_column_text(&message[5..]),
                        ) {
                            rows.push(name.to_string());
                        }
                    }
                    b'E' => {
                        let fields = messages::parse_error_fields(&message[5..]);
                        if kind == Internal::WroteCheck && fields.code == "25P02" {
                            // A unit sent ahead of it failed the block,
                            // whose COMMIT will roll it back: nothing to know.
                            tracing::debug!(
                                "block failed before its commit; no write to ask about"
                            );
                        } else {
                            tracing::warn!(?kind, code = %fields.code, message = %fields.message, "proxy statement failed on server");
                        }
                        match kind {
                            // What the connection holds is no longer what
                            // its mirror says: never lend it again.
                            Internal::Setup => {
                                if let Some(attached) = self.current.as_mut() {
                                    attached.lease.conn.unclean = true;
                                }
                            }
                            Internal::Catalog => self.catalog_rows = None,
                            _ => {}
                        }
                    }
                    b'Z' => {
                        self.pending.pop_front();
                        self.tx_status = message[5];
                        match kind {
                            Internal::Lsn => self.lsn_arrived(),
                            Internal::WroteCheck => self.wrote_check_answered(),
                            Internal::Catalog => {
                                if let Some(rows) = self.catalog_rows.take() {
                                    self.catalog.load(rows);
                                }
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            Some(Expect::Client(inflight)) => {
                inflight.note(tag, message);
                if swallow_fatal {
                    // The primary is going away under an autocommit unit
                    // (shut down, crashed, terminated): the session need not
                    // go with it. The client gets an ERROR instead, once the
                    // connection is gone (see `Session::server_failed`).
                    let fields = messages::parse_error_fields(&message[5..]);
                    inflight.lost = Some((fields.code, fields.message));
                    self.fatal_swallowed = true;
                } else if tag != b'Z' {
                    self.pass_on(message);
                } else if let Some(Expect::Client(inflight)) = self.pending.pop_front() {
                    self.finish_unit(inflight, message);
                }
            }
            None => {
                // Answers to a batch cut at Flush, or news the server sends
                // on its own (notifications, notices, parameter changes).
                if tag == b'E' && self.server_fatal && self.idle_between_units() {
                    // The server is closing a connection the client is not
                    // using (terminated, restarting): the session moves to
                    // another, and the client need not hear of it.
                    return;
                }
                if tag == b'E' && self.server_fatal && (swallow_fatal || self.block_moves_on_loss())
                {
                    // Closing under a block the client is idle in, or under
                    // a batch it cut at a Flush: the client hears of it at
                    // its next statement, or at once (see
                    // `Session::answer_lost_block`, `answer_lost_units`).
                    if let Some(open) = self.open_batch.as_mut() {
                        let fields = messages::parse_error_fields(&message[5..]);
                        open.lost = Some((fields.code, fields.message));
                    }
                    self.fatal_swallowed = true;
                    return;
                }
                if let Some(open) = self.open_batch.as_mut() {
                    open.note(tag, message);
                    open.note_flushed(tag);
                }
                self.to_client.extend_from_slice(message);
            }
        }
    }

    /// A notification the session's own server connection sent (its own
    /// NOTIFY: LISTEN keeps the session on that connection), with the
    /// client's process ID in place of the server's, as Postgres gives a
    /// client its own: drivers and applications tell their own
    /// notifications so (`be_pid == backend_pid`).
    fn own_notification(&self, message: &[u8]) -> Option<Vec<u8>> {
        if message.len() < 9 {
            return None;
        }
        let server_pid = self.current.as_ref()?.lease.conn.backend_pid;
        let pid = i32::from_be_bytes([message[5], message[6], message[7], message[8]]);
        if pid != server_pid || pid == self.cancel.pid {
            return None;
        }
        let mut rewritten = message.to_vec();
        rewritten[5..9].copy_from_slice(&self.cancel.pid.to_be_bytes());
        Some(rewritten)
    }

    /// A client unit is answered: re-run it if a replica refused it, else
    /// pass its answers on and apply what it changed.
    fn finish_unit(&mut self, mut inflight: Box<InFlight>, ready: &[u8]) {
        let status = ready[5];
        if self.builder.texts.is_changing()
            && self.pending.is_empty()
            && self.queued.is_empty()
            && !self.builder.is_building()
        {
            // Every setting the units so far changed has been reported.
            self.builder.texts.settle();
        }
        if inflight.replay {
            // Part of moving an optimistic block: the client saw this
            // answer already, from the replica.
            self.tx_status = status;
            self.apply_effects(&inflight, status);
            if let Some(block) = self.optimistic.as_mut() {
                block.replayed(inflight.digest.unwrap_or_default().finish());
            }
            return;
        }
        if inflight.synced_by_proxy {
            self.tx_status = status;
            self.apply_effects(&inflight, status);
            return;
        }
        if inflight.refused {
            self.held.clear();
            let remade = inflight
                .retry
                .as_ref()
                .map(Unit::creates)
                .unwrap_or_default();
            self.apply_statements(&inflight, &remade);
            if let Some(mut unit) = inflight.retry.take() {
                let name = self
                    .current
                    .as_ref()
                    .map(|a| a.lease.conn.server_name.clone())
                    .unwrap_or_default();
                let (code, message) = inflight.refusal.take().unwrap_or_default();
                tracing::debug!(replica = %name, %code, %message, "replica refused a read; re-running it on the primary");
                crate::metrics::retried(&name, "refused", &code);
                self.learn_from_refusal(&mut unit, &code, &message);
                if let Some(block) = self.optimistic.as_mut() {
                    block.forget_last();
                }
                self.proxy
                    .stats
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                unit.retried = true;
                self.queued.push_front(unit);
            }
            return;
        }
        if !self.held.is_empty() {
            self.to_client.extend_from_slice(&self.held);
            self.held.clear();
        }
        for code in inflight.held_errors.drain(..) {
            crate::metrics::error_sent(code.as_bytes());
        }
        self.proxy.stats.answered(
            inflight.server == Server::Primary,
            inflight.sent_at.elapsed(),
        );
        self.tx_status = status;
        self.apply_effects(&inflight, status);
        if status == b'I' {
            if let Some((id, causal)) = self.client_id_before_block.take() {
                if inflight.rolled_back() {
                    self.client_id = id;
                    self.causal = causal;
                    self.shown = None;
                }
            }
        }
        if let (Some(digest), Some(block)) = (inflight.digest, self.optimistic.as_mut()) {
            block.answered(digest.finish());
            if status == b'I' {
                // The block ended on its replica: it only read.
                if let Some(shape) = &block.shape {
                    self.proxy.shapes.record(shape, false);
                }
                if !block.read_only {
                    crate::metrics::optimistic("read_only", "");
                }
                self.optimistic = None;
            }
        }
        let wrote = inflight.tx_wrote || self.tx_wrote;
        let committed_write = status == b'I'
            && inflight.server == Server::Primary
            && !inflight.saw_rollback
            && ((inflight.saw_commit && wrote)
                || (!inflight.saw_error && inflight.writes && inflight.started_at_rest));
        if status == b'I' {
            self.tx_wrote = false;
        }
        if !committed_write {
            self.to_client.extend_from_slice(ready);
            return;
        }
        self.commit_awaiting_lsn = true;
        if matches!(self.pending.front(), Some(Expect::Internal(Internal::Lsn))) {
            // The client hears "ready" only once its commit LSN is known, so
            // a read it then sends on any connection of the same client is
            // routed knowing the write. The LSN query was pipelined right
            // behind the write: this waits microseconds, not a round trip.
            self.ready_after_lsn = Some(BytesMut::from(ready));
        } else {
            // It committed where we did not expect it to (a procedure that
            // commits, say): ask now, one round trip late.
            self.to_client.extend_from_slice(ready);
            self.pending.push_back(Expect::Internal(Internal::Lsn));
            messages::query(&mut self.to_server, super::dispatch::LSN_QUERY);
        }
    }

    /// Remembers what a replica's refusal showed, so it is not paid twice:
    /// a session whose transactions are SERIALIZABLE reads from the primary
    /// from now on; a statement that writes (or calls what does) is a write
    /// for every session, and this run of it asks for the commit LSN.
    fn learn_from_refusal(&mut self, unit: &mut Unit, code: &str, message: &str) {
        if code == "0A000" && message.contains("serializable") {
            self.serializable_refused = true;
        }
        if !STATEMENT_NEEDS_PRIMARY.contains(&code) {
            return;
        }
        const REASON: &str = "refused by a replica";
        std::sync::Arc::make_mut(&mut unit.facts)
            .write_reason
            .get_or_insert(REASON);
        let mut texts: Vec<String> = super::units::sql_texts(&unit.bytes)
            .into_iter()
            .map(|sql| sql.into_owned())
            .collect();
        // Statements prepared earlier: their text is in how they were
        // prepared, and their facts in the session.
        for name in unit.needs().iter() {
            let Some(prepared) = self.state.prepared.get_mut(name) else {
                continue;
            };
            texts.extend(prepared.replay.sql().map(|sql| sql.into_owned()));
            let mut facts = (*prepared.facts).clone();
            facts.write_reason.get_or_insert(REASON);
            prepared.facts = std::sync::Arc::new(facts);
        }
        for sql in texts {
            self.proxy.facts_cache.learn_write(&sql, REASON);
        }
    }

    /// The server said whether the block about to commit wrote. If it did,
    /// and its COMMIT is the last thing sent, the commit LSN is asked right
    /// behind it, so the client hears "ready" only once it is known (see
    /// [`Session::finish_unit`]); with more units behind the COMMIT, it is
    /// asked when the COMMIT is answered.
    fn wrote_check_answered(&mut self) {
        if self.tx_wrote && self.pending.len() == 1 && self.open_batch.is_none() {
            self.pending.push_back(Expect::Internal(Internal::Lsn));
            messages::query(&mut self.to_server, super::dispatch::LSN_QUERY);
        }
    }

    fn lsn_arrived(&mut self) {
        let ready = self.ready_after_lsn.take();
        match (self.record_lsn(), ready) {
            (Some(write), ready) => {
                // The shared store first (see `Session::store_commit`).
                self.store_write = Some(write);
                self.ready_after_store = ready;
            }
            (None, Some(ready)) => self.to_client.extend_from_slice(&ready),
            (None, None) => {}
        }
    }

    /// Takes in a commit's LSN; returns what to record in the shared
    /// causal store, if there is one.
    fn record_lsn(&mut self) -> Option<(String, u32, Lsn)> {
        let lsn = self.lsn_answer.take();
        if !std::mem::take(&mut self.commit_awaiting_lsn) {
            return None;
        }
        let lsn = lsn?;
        self.causal_unknown = false;
        let mark = Mark {
            lsn,
            epoch: self.primary_epoch,
        };
        self.causal = Some(self.causal.map_or(mark, |c| c.max(mark)));
        self.proxy.causal.advance_newest(mark);
        if let Some(key) = self.causal_key() {
            self.proxy.causal.advance(&key, mark);
        }
        // The causal token, for the client to carry to other connections
        // or proxies (`SET causeway.min_lsn`).
        messages::parameter_status(&mut self.to_client, "causeway.lsn", lsn.text().as_str());
        let key = self.store_key()?;
        let timeline = self
            .proxy
            .monitor
            .with_positions(|p| p.history.timeline_of(mark.epoch))
            .unwrap_or(0);
        Some((key, timeline, lsn))
    }

    /// Files the statements the server confirmed it made (ParseComplete)
    /// or closed (CloseComplete), with the session and in the mirror of
    /// the server it ran on. Also for a unit a replica refused: what it
    /// made before the refusal exists there, and the client, which saw
    /// those answers when the batch was cut at a Flush, may use it in the
    /// run on the primary.
    ///
    /// Names in `remade` are left out of the session's: the unit that runs
    /// again makes them anew.
    fn apply_statements(&mut self, inflight: &InFlight, remade: &[String]) {
        let Some(attached) = self.current.as_mut() else {
            return;
        };
        let conn = &mut attached.lease.conn;
        for (name, prepared) in inflight.parses.confirmed(inflight.parse_completes) {
            conn.note_statement(name, prepared.hash);
            if !remade.contains(name) {
                self.state.prepared.insert(name.clone(), prepared.clone());
            }
        }
        for name in inflight.closes.iter().take(inflight.close_completes) {
            conn.prepared.remove(name);
            self.state.prepared.remove(name);
        }
    }

    /// Applies a finished unit's changes to the session and to the mirror
    /// of the server it ran on.
    fn apply_effects(&mut self, inflight: &InFlight, status: u8) {
        self.apply_statements(inflight, &[]);
        let Some(attached) = self.current.as_mut() else {
            return;
        };
        let conn = &mut attached.lease.conn;
        if !inflight.saw_error {
            for (name, prepared) in &inflight.sql_prepares {
                conn.note_statement(name, prepared.hash);
                self.state.prepared.insert(name.clone(), prepared.clone());
            }
            for effect in &inflight.effects {
                match effect {
                    Effect::Set { .. }
                    | Effect::Reset { .. }
                    | Effect::ResetAll
                    | Effect::Savepoint(_)
                    | Effect::RollbackTo(_)
                    | Effect::Release(_) => {
                        self.tx_effects.push(effect.clone());
                    }
                    Effect::Prepare { .. } | Effect::SetFromParameter { .. } => {}
                    Effect::Deallocate { name } => {
                        conn.prepared.remove(name);
                        self.state.prepared.remove(name);
                    }
                    Effect::DeallocateAll => {
                        conn.prepared.clear();
                        self.state.prepared.clear();
                        self.state.local_prepared.clear();
                    }
                    Effect::DiscardAll => {
                        conn.prepared.clear();
                        self.state.prepared.clear();
                        self.state.local_prepared.clear();
                        conn.settings.clear();
                        self.state.settings.clear();
                        self.serializable_default = self.state.serializable(&self.role_isolation);
                        self.tx_effects.clear();
                        self.pinned.clear();
                    }
                    Effect::Unpin(reason) => self.pinned.retain(|p| p != reason),
                }
            }
        }
        if status != b'I' {
            return;
        }
        // Settings are transactional: kept on commit, dropped on rollback.
        let effects = std::mem::take(&mut self.tx_effects);
        if effects.is_empty() || inflight.rolled_back() {
            return;
        }
        for effect in crate::router::facts::settle_savepoints(effects) {
            match effect {
                Effect::Set { name, sql } => {
                    conn.settings.insert(name.clone(), sql.clone());
                    self.state.settings.insert(name, sql);
                }
                Effect::Reset { name } => {
                    conn.settings.remove(&name);
                    self.state.settings.remove(&name);
                }
                // RESET ALL leaves the role and session authorization as
                // they are, as the server does.
                Effect::ResetAll => {
                    conn.settings
                        .retain(|name, _| super::state::is_privilege(name));
                    self.state
                        .settings
                        .retain(|name, _| super::state::is_privilege(name));
                }
                _ => {}
            }
        }
        self.serializable_default = self.state.serializable(&self.role_isolation);
    }
}
