//! The relay loop: client bytes grouped into units and dispatched, server
//! answers handled and passed on, both sockets written as soon as they take
//! bytes, and the session's signals (KILL, shutdown, PAUSE, the
//! idle-in-transaction timer) polled in the same wait.

use std::io;

use bytes::{Buf, BytesMut};

use super::{units, End, Session, HIGH_WATER, MAX_QUEUED_UNITS, READ_CHUNK};
use crate::protocol::FrameError;
use crate::stats::{ClientState, SessionSignal};

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
    pub(super) async fn relay(&mut self) -> End {
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
            // (Not entered when nothing is queued: an async call has a cost
            // even when it returns at once.)
            if !self.queued.is_empty() {
                if let Err(end) = self.dispatch_queued().await {
                    return end;
                }
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
            self.show_state(if self.held_by_pause {
                ClientState::Paused
            } else if !self.pending.is_empty() || self.open_batch.is_some() {
                ClientState::Active
            } else if self.tx_status != b'I' && !self.lost_block {
                ClientState::IdleInTransaction
            } else {
                ClientState::Idle
            });
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
                (&mut conn.stream, &mut conn.rbuf, &mut conn.read_arm)
            });
            let client = &mut self.client;
            let cbuf = &mut self.cbuf;
            let client_arm = &mut self.client_arm;
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
                // Reads leave a waker with a socket once per wait, not once
                // per turn (see `crate::stream::ReadArm`).
                if read_server {
                    if let Some((stream, rbuf, arm)) = server.as_mut() {
                        reserve_for_read(rbuf);
                        if let Poll::Ready(r) = stream.poll_read_armed(cx, rbuf, arm) {
                            return Poll::Ready(Event::ServerRead(r));
                        }
                    }
                }
                if client_room {
                    reserve_for_read(cbuf);
                    if let Poll::Ready(r) = client.poll_read_armed(cx, cbuf, client_arm) {
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

    /// Shows `state` in `SHOW CLIENTS`, if it changed.
    pub(super) fn show_state(&mut self, state: ClientState) {
        if state != self.shown_state {
            self.shown_state = state;
            self.entry.info.set_state(state);
        }
    }

    /// Writes what is waiting for the server and the client at once, where
    /// the socket takes it without waiting: a turn of the loop saved for
    /// each. Whatever is left (TLS, a full socket) goes through the loop.
    pub(super) fn write_eagerly(&mut self) {
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
    pub(super) fn handle_client_bytes(&mut self) -> Result<bool, FrameError> {
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
    pub(super) fn release_if_at_rest(&mut self) {
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
}
