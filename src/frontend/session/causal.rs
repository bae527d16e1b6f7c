//! The session's causal LSN: where it is shared (a client id, a role, the
//! whole proxy, and the causal store other instances share), what a read
//! must wait for, and recording a commit in the shared store.

use super::Session;
use crate::lsn::Lsn;
use crate::replicas::Mark;

impl Session {
    /// Where connections of the same client share their causal LSN.
    pub(super) fn causal_key(&self) -> Option<String> {
        match self.proxy.config.routing.causal_scope {
            crate::config::CausalScope::Session => None,
            crate::config::CausalScope::ClientId => {
                self.client_id.as_ref().map(|id| format!("id:{id}"))
            }
            crate::config::CausalScope::User => Some(format!("user:{}", self.user)),
            crate::config::CausalScope::Global => None,
        }
    }

    /// Where this session's causal LSN lives in the shared causal store.
    pub(super) fn store_key(&self) -> Option<String> {
        self.proxy.causal_store.as_ref()?;
        match self.proxy.config.routing.causal_scope {
            crate::config::CausalScope::Global => Some("global".to_string()),
            _ => self.causal_key(),
        }
    }

    /// Reads the session's causal LSN from the shared causal store into
    /// the in-process map (it only ever raises it). If the store does not
    /// answer, the session's reads go to the primary until it does.
    pub(super) async fn refresh_causal(&self) {
        let (Some(store), Some(key)) = (&self.proxy.causal_store, self.store_key()) else {
            return;
        };
        match store.get(&key).await {
            Ok(found) => {
                self.store_down
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                if let Some((timeline, lsn)) = found {
                    let epoch = self
                        .proxy
                        .monitor
                        .with_positions(|p| p.history.epoch_of(timeline));
                    let mark = Mark { lsn, epoch };
                    match self.proxy.config.routing.causal_scope {
                        crate::config::CausalScope::Global => {
                            self.proxy.causal.advance_newest(mark)
                        }
                        _ => self.proxy.causal.advance(&key, mark),
                    }
                }
            }
            Err(e) => {
                if e == crate::causal_store::StoreError::Reset {
                    self.proxy.republish_causal();
                }
                if e != crate::causal_store::StoreError::Recovering {
                    store.note_failure("get", &e);
                }
                self.store_down
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Records a commit in the shared causal store, then lets its
    /// ReadyForQuery go: a client told its write is done may read it
    /// through any instance. A value Redis does not take is written again
    /// until it does; meanwhile instances that cannot reach Redis, or saw
    /// it fail less than a grace period ago, read from the primary.
    pub(super) async fn store_commit(&mut self, key: String, timeline: u32, lsn: Lsn) {
        if let Some(store) = &self.proxy.causal_store {
            // A failure keeps the value for the store's republisher.
            if let Err(e) = store.advance(&key, timeline, lsn).await {
                store.note_failure("advance", &e);
            }
        }
        if let Some(ready) = self.ready_after_store.take() {
            self.to_client.extend_from_slice(&ready);
        }
    }

    /// The LSN a replica must have replayed before it may serve this
    /// session's reads: its own writes, and those of its client.
    pub(super) fn effective_causal(&self) -> Option<Lsn> {
        if self.causal_unknown || self.store_down.load(std::sync::atomic::Ordering::Relaxed) {
            // No replica can be shown to have the last write.
            return Some(Lsn(u64::MAX));
        }
        let shared = match self.proxy.config.routing.causal_scope {
            crate::config::CausalScope::Global => self.proxy.causal.newest(),
            _ => self
                .causal_key()
                .and_then(|key| self.proxy.causal.get(&key)),
        };
        let mark = match (self.causal, shared) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        // Written before a promotion: what of it survived is on the new
        // timeline by its fork.
        Some(self.proxy.monitor.with_positions(|p| p.carry(mark)))
    }
}
