//! Where a unit goes: the session as routing sees it, the replica fresh
//! enough for it (waiting as the policy says), the BEGIN the proxy holds
//! back until the block's first statement, and the batch a client cut at a
//! Flush that a Query must leave.

use std::sync::atomic::Ordering;

use super::inflight::Expect;
use super::units::Unit;
use super::{End, Session};
use crate::protocol::messages::{self, Severity};
use crate::router::{self, Decision, OnStale, Reason, Server};

impl Session {
    /// Whether `unit`, sent to `server` for `reason`, opens a `READ ONLY`
    /// block on a replica (its held-back BEGIN, or a BEGIN of its own,
    /// that it does not also end).
    pub(super) fn opens_read_only_block(
        &self,
        unit: &Unit,
        server: Server,
        reason: Reason,
    ) -> bool {
        reason == Reason::ReadOnlyTransaction
            && matches!(server, Server::Replica(_))
            && unit.synced
            && (self.deferred_begin.is_some() || unit.facts.begin.is_some())
            && !unit.facts.ends_tx
    }

    /// The session as routing sees it.
    pub(super) fn view(&self) -> router::SessionView {
        router::SessionView {
            pinned: !self.pinned.is_empty(),
            serializable: self.serializable_refused || self.serializable_default,
            read_only_blocks: self.declared_read_only,
        }
    }

    /// Answers a lone BEGIN itself and keeps it for the next unit.
    pub(super) fn hold_begin(&mut self, unit: Unit) {
        self.deferred_begin_read_write = unit.facts.read_write;
        self.deferred_begin = Some(unit.bytes);
        messages::command_complete(&mut self.to_client, "BEGIN");
        messages::ready_for_query(&mut self.to_client, b'T');
        self.tx_status = b'T';
    }

    /// Fails a read for which no replica is fresh under `on_stale = "error"`.
    pub(super) fn refuse_stale(&mut self, unit: &Unit) {
        let causal = self
            .effective_causal()
            .map(|l| l.to_string())
            .unwrap_or_default();
        let text = format!(
            "causeway: no replica has replayed this session's writes (causal LSN {causal}) within {} ms",
            self.proxy.policy.max_wait.as_millis()
        );
        messages::error_response(
            &mut self.to_client,
            Severity::Error,
            "57P03",
            &text,
            Some("on_stale = \"error\" in the [routing] config; retry, or read from the primary with /* causeway: primary */"),
        );
        crate::metrics::stale_refused();
        if unit.synced {
            messages::ready_for_query(&mut self.to_client, self.tx_status);
        }
    }

    /// Routes a unit at rest. `None`: refuse it (stale, `on_stale = "error"`).
    pub(super) async fn route(&self, unit: &Unit) -> Result<Option<(Server, Reason)>, End> {
        let decision = router::decide(&unit.facts, &self.view());
        let (any_replica, read_only_block) = match decision {
            Decision::Primary(reason) => return Ok(Some((Server::Primary, reason))),
            Decision::Replica {
                any_replica,
                read_only_block,
                ..
            } => (any_replica, read_only_block),
        };
        if any_replica {
            return Ok(Some(match self.any_replica() {
                Some((i, reason)) => (Server::Replica(i), reason),
                None => (Server::Primary, Reason::NoReplica),
            }));
        }
        match self.choose_replica(read_only_block).await? {
            Some(choice) => Ok(Some(choice)),
            None => Ok(None),
        }
    }

    /// A simple Query that needs the primary, behind a batch the client
    /// cut at a Flush on a replica outside any transaction: asyncpg
    /// prepares a statement so (Parse, Describe, Flush) before its
    /// `COPY ... FROM STDIN`. The Query cannot use that batch's unnamed
    /// statement or portal (Postgres drops them when it runs one), so it
    /// need not run where the batch did, and the replica would refuse it.
    pub(super) fn must_leave_open_batch(&self, unit: &Unit) -> bool {
        let Some(open) = self.open_batch.as_ref() else {
            return false;
        };
        unit.bytes.first() == Some(&b'Q')
            && !unit.facts.is_read()
            && matches!(
                self.current.as_ref().map(|a| a.server),
                Some(Server::Replica(_))
            )
            && self.tx_status == b'I'
            && self.deferred_begin.is_none()
            && self.optimistic.is_none()
            && self.pinned.is_empty()
            && !self.lost_block
            && !open.writes
            && !open.opens_tx
    }

    /// Ends the open batch with a Sync of the proxy's own. Its answers
    /// still reach the client; the ReadyForQuery that ends them does not.
    /// The units behind it wait for that answer, and are then routed
    /// afresh.
    pub(super) fn sync_open_batch(&mut self) {
        if let Some(mut open) = self.open_batch.take() {
            open.synced_by_proxy = true;
            self.pending.push_back(Expect::Client(Box::new(open)));
            self.to_server.extend_from_slice(b"S\0\0\0\x04");
        }
    }

    /// A healthy replica, however far behind (the session's own while it
    /// serves): for what any server answers alike.
    pub(super) fn any_replica(&self) -> Option<(usize, Reason)> {
        let (policy, home) = (self.proxy.policy, self.replica_home);
        self.proxy
            .monitor
            .with_positions(|p| router::pick_replica(p, None, true, &policy, home))
    }

    /// A replica fresh enough for this session, waiting as the policy says.
    /// Falls back to the primary; `None` only under `on_stale = "error"`.
    pub(super) async fn choose_replica(
        &self,
        read_only_block: bool,
    ) -> Result<Option<(Server, Reason)>, End> {
        let proxy = &self.proxy;
        let policy = proxy.policy;
        proxy.monitor.note_read();
        self.refresh_causal().await;
        let causal = self.effective_causal();
        if causal == Some(crate::lsn::Lsn(u64::MAX)) {
            // No replica can be shown to have the session's writes.
            return Ok(Some((Server::Primary, Reason::CausalUnknown)));
        }
        let home = self.replica_home;
        let label = |reason| {
            if read_only_block {
                Reason::ReadOnlyTransaction
            } else {
                reason
            }
        };
        let picked = proxy
            .monitor
            .with_positions(|p| router::pick_replica(p, causal, false, &policy, home));
        if let Some((i, reason)) = picked {
            return Ok(Some((Server::Replica(i), label(reason))));
        }
        // The clock is read only if some replica could serve it later.
        let worth_waiting = proxy.monitor.with_positions(|p| {
            router::any_healthy(p).then(|| router::worth_waiting(p, std::time::Instant::now()))
        });
        let Some(worth_waiting) = worth_waiting else {
            return Ok(Some((Server::Primary, Reason::NoReplica)));
        };
        match policy.on_stale {
            OnStale::Primary => Ok(Some((Server::Primary, Reason::Stale))),
            // Every replica is paused or stuck: waiting cannot help.
            OnStale::Wait if !worth_waiting => Ok(Some((Server::Primary, Reason::Stale))),
            OnStale::Wait | OnStale::Error => {
                let started = std::time::Instant::now();
                self.entry
                    .info
                    .set_state(crate::stats::ClientState::Waiting);
                let found = proxy
                    .monitor
                    .wait_for(policy.max_wait, |p| {
                        router::pick_replica(p, causal, false, &policy, home)
                    })
                    .await;
                self.entry.info.set_state(self.shown_state);
                crate::metrics::waited(started.elapsed(), found.is_some());
                proxy.stats.waits.fetch_add(1, Ordering::Relaxed);
                if found.is_none() {
                    proxy.stats.waits_gave_up.fetch_add(1, Ordering::Relaxed);
                }
                match (found, policy.on_stale) {
                    (Some((i, reason)), _) => Ok(Some((Server::Replica(i), label(reason)))),
                    (None, OnStale::Error) => Ok(None),
                    (None, _) => Ok(Some((Server::Primary, Reason::Stale))),
                }
            }
        }
    }
}
