//! Getting a server connection for a unit: the one in use if it is on the
//! right server (and still open), one kept for the session, or one from the
//! pool, preferring the last one this session had there; and bringing it up
//! to date with the session's settings and prepared statements before the
//! unit runs on it.

use super::inflight::{Expect, InFlight, Internal};
use super::units::Unit;
use super::{Attached, End, Session};
use crate::protocol::messages;
use crate::router::Server;

impl Session {
    /// Brings the current connection up to date with the session for
    /// `unit`: settings, and the prepared statements it uses or makes.
    /// `again`: the proxy sends the unit a second time (a retry, a replay),
    /// so the statements it makes are the session's already.
    pub(super) fn catch_up_for(&mut self, unit: &Unit, again: bool) -> Result<(), End> {
        let Some(attached) = self.current.as_mut() else {
            return Err(End::ServerLost("no server attached".into()));
        };
        // Statements this session's units in flight are making: a unit
        // pipelined behind them may use them before their answers come.
        let (pending, open_batch) = (&self.pending, &self.open_batch);
        let creating = |name: &str| {
            let makes = |f: &InFlight| {
                f.parses.named().any(|(n, _)| n == name)
                    || f.sql_prepares.iter().any(|(n, _)| n == name)
            };
            open_batch.as_ref().is_some_and(makes)
                || pending
                    .iter()
                    .any(|e| matches!(e, Expect::Client(f) if makes(f)))
        };
        let catchup = self.state.catch_up(
            &mut attached.lease.conn,
            &unit.needs(),
            &unit.creates(),
            &creating,
            again,
            self.proxy.config.pool.max_prepared_statements,
        );
        if let Some(sql) = catchup.settings {
            self.pending.push_back(Expect::Internal(Internal::Setup));
            messages::query(&mut self.to_server, &sql);
        }
        if let Some(batch) = catchup.statements {
            self.pending.push_back(Expect::Internal(Internal::Setup));
            self.to_server.extend_from_slice(&batch);
        }
        if let Some(sql) = catchup.sql_prepares {
            self.pending.push_back(Expect::Internal(Internal::Setup));
            messages::query(&mut self.to_server, &sql);
        }
        // Sequence state (`currval`, `lastval`) is the connection's, and the
        // session cannot have it replayed: on a connection another client
        // last wrote on, it is that client's. A unit asking for it there
        // has it forgotten first, and gets Postgres's answer for a session
        // that called no nextval ("not yet defined"), not another's value.
        let me = self.entry.info.pid;
        let conn = &mut attached.lease.conn;
        let calls = |names: [&str; 2]| unit.facts.calls.iter().any(|c| names.contains(&c.as_str()));
        let asks = calls(["currval", "lastval"]);
        if asks && conn.sequences_of.is_some_and(|owner| owner != me) && self.tx_status != b'E' {
            self.pending.push_back(Expect::Internal(Internal::Setup));
            messages::query(&mut self.to_server, "DISCARD SEQUENCES");
            conn.sequences_of = None;
        }
        // What may call nextval (a write: a column default may), not what
        // only asks for currval or lastval, makes the state the session's.
        if unit.facts.writes() && (!asks || calls(["nextval", "setval"])) {
            conn.sequences_of = Some(me);
        }
        Ok(())
    }

    /// The pool and counters of `target`, from the session's own list when
    /// it has used that server before.
    fn known_server(
        &mut self,
        target: &crate::backend::ServerTarget,
    ) -> (
        std::sync::Arc<crate::backend::pool::Pool>,
        std::sync::Arc<crate::stats::ServerCounters>,
    ) {
        if let Some(known) = self
            .known
            .iter()
            .find(|k| k.pool.server_name() == target.name)
        {
            return (known.pool.clone(), known.counters.clone());
        }
        let pool = self.proxy.pools.get(target, &self.login);
        let counters = self.proxy.stats.server(&target.name);
        self.known.push(super::Known {
            pool: pool.clone(),
            counters: counters.clone(),
        });
        (pool, counters)
    }

    /// The primary's target when `server` is the primary (its epoch
    /// noted), after letting go of connections to a primary that has been
    /// demoted since. The same before every attach, waiting or not.
    fn forget_moved<'p>(
        &mut self,
        proxy: &'p crate::server::Proxy,
        server: Server,
    ) -> Result<Option<&'p crate::backend::ServerTarget>, End> {
        // The primary is whichever server says it is one now. The targets
        // are read in place, from the session's own handle on the proxy.
        let primary = match server {
            Server::Primary => {
                let (target, epoch) = Self::primary_target(proxy)?;
                self.primary_epoch = epoch;
                Some(target)
            }
            Server::Replica(_) => None,
        };
        let moved =
            |a: &super::Attached| primary.is_some_and(|t| a.lease.conn.server_name != t.name);
        if self
            .current
            .as_ref()
            .is_some_and(|a| a.server == server && moved(a))
        {
            // A promotion happened since: the old primary's connection
            // goes (its pool keeps it for nobody; it is of the old server).
            self.current = None;
        }
        self.stash.retain(|a| !(a.server == server && moved(a)));
        Ok(primary)
    }

    /// The target of `server`; `None` for a replica no longer configured.
    fn target_of<'p>(
        proxy: &'p crate::server::Proxy,
        server: Server,
        primary: Option<&'p crate::backend::ServerTarget>,
    ) -> Option<&'p crate::backend::ServerTarget> {
        match (server, primary) {
            (_, Some(primary)) => Some(primary),
            (Server::Primary, None) => Some(&proxy.primary),
            (Server::Replica(i), None) => proxy.replicas.get(i),
        }
    }

    /// The connection this session last had on `server`, to ask its pool
    /// for first.
    fn preferred(&self, server: Server) -> Option<u64> {
        self.last_conn
            .iter()
            .find(|(s, _)| *s == server)
            .map(|(_, id)| *id)
    }

    /// Makes a connection just lent on `server` the current one.
    fn adopt(
        &mut self,
        server: Server,
        lease: crate::backend::pool::Lease,
        counters: std::sync::Arc<crate::stats::ServerCounters>,
    ) {
        match self.last_conn.iter_mut().find(|(s, _)| *s == server) {
            Some(slot) => slot.1 = lease.conn.id,
            None => self.last_conn.push((server, lease.conn.id)),
        }
        self.current = Some(Attached {
            server,
            lease,
            counters,
        });
        self.set_cancel_target();
    }

    /// [`Session::attach`] when it can finish without waiting: the current
    /// connection is on `server` and in use (a transaction), or none is
    /// current and the pool has a place and an idle connection at once
    /// (transaction pooling, between transactions). `None` otherwise,
    /// having changed nothing that `attach` would not change first. Every
    /// unit passes here: no future to build, move and poll.
    pub(super) fn attach_now(&mut self, server: Server) -> Option<Result<Server, End>> {
        let proxy = self.proxy.clone();
        let primary = match self.forget_moved(&proxy, server) {
            Ok(primary) => primary,
            Err(end) => return Some(Err(end)),
        };
        if let Some(current) = self.current.as_ref() {
            let same = current.server == server && !self.idle_between_units();
            return same.then_some(Ok(server));
        }
        if !self.stash.is_empty() {
            return None;
        }
        let target = Self::target_of(&proxy, server, primary)?;
        let (pool, counters) = self.known_server(target);
        let lease = pool.checkout_now(self.preferred(server))?;
        counters.pool_wait(std::time::Duration::ZERO);
        self.adopt(server, lease, counters);
        Some(Ok(server))
    }

    /// Makes `server` the current connection, keeping the one in use if it
    /// is the same. A replica that cannot be reached is reported and the
    /// primary used instead. Returns the server attached.
    pub(super) async fn attach(&mut self, server: Server) -> Result<Server, End> {
        let proxy = self.proxy.clone();
        let primary = self.forget_moved(&proxy, server)?;
        if self.current.as_ref().map(|a| a.server) == Some(server) {
            // A connection kept between units (session pooling) may have
            // been closed by the server meanwhile: replace it unseen.
            let idle = self.idle_between_units();
            let closed = match self.current.as_mut() {
                Some(attached) if idle => attached.lease.conn.is_closed().await,
                _ => false,
            };
            if !closed {
                return Ok(server);
            }
            tracing::info!(
                ?server,
                "server connection closed while idle; using a new one"
            );
            self.current = None;
        }
        if let Some(old) = self.current.take() {
            match self.proxy.config.pool.mode {
                crate::config::PoolMode::Transaction => old.lease.give_back(),
                crate::config::PoolMode::Session => self.stash.push(old),
            }
        }
        if let Some(i) = self.stash.iter().position(|a| a.server == server) {
            let mut kept = self.stash.swap_remove(i);
            if !kept.lease.conn.is_closed().await {
                self.current = Some(kept);
                self.set_cancel_target();
                return Ok(server);
            }
            tracing::info!(
                ?server,
                "kept server connection was closed; using a new one"
            );
        }
        let Some(target) = Self::target_of(&proxy, server, primary) else {
            return Box::pin(self.attach(Server::Primary)).await;
        };
        let (pool, counters) = self.known_server(target);
        let (checked_out, waited) = pool.checkout_preferring(self.preferred(server)).await;
        counters.pool_wait(waited);
        match checked_out {
            Ok(lease) => {
                self.adopt(server, lease, counters);
                Ok(server)
            }
            Err(e) if server != Server::Primary => {
                tracing::warn!(replica = %target.name, error = %e, "replica unreachable; using the primary");
                self.proxy
                    .monitor
                    .report_failure(&target.name, &e.to_string());
                Box::pin(self.attach(Server::Primary)).await
            }
            Err(e) => {
                let code = match e {
                    crate::backend::BackendError::PoolTimeout { .. } => "53300",
                    _ => "08006",
                };
                Err(End::NoServer {
                    code,
                    message: e.to_string(),
                })
            }
        }
    }
}
