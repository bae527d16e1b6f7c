//! `PAUSE` and `RESUME` (console), in PgBouncer's sense: let running
//! transactions finish, hold every new unit of work, and say when no session
//! has anything on a server, so the servers can be restarted or switched
//! under idle sessions; `RESUME` lets the held units go, on new connections
//! where the old ones died. Clients wait; none of them gets an error.
//!
//! One gate for the process, kept across `RELOAD`: a watch channel sessions
//! wait on, and a count of sessions with work on a server (a unit in flight
//! or a transaction open), which `PAUSE` waits to see reach zero.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug)]
pub struct PauseGate {
    paused: watch::Sender<bool>,
    busy_sessions: AtomicUsize,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            paused: watch::Sender::new(false),
            busy_sessions: AtomicUsize::new(0),
        }
    }
}

impl PauseGate {
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// Holds new units; returns once no session has work on a server, or
    /// `Err` with how many still do after `timeout` (the pause stays on).
    pub async fn pause(&self, timeout: Duration) -> Result<(), usize> {
        self.paused.send_replace(true);
        tracing::info!("paused: new units wait; waiting for running transactions to finish");
        let started = std::time::Instant::now();
        loop {
            let busy = self.busy_sessions.load(Ordering::Acquire);
            if busy == 0 {
                tracing::info!("paused: every session is idle");
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(busy);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn resume(&self) {
        if self.paused.send_replace(false) {
            tracing::info!("resumed");
        }
    }

    /// A session started or ended having work on a server.
    pub fn set_busy(&self, was: bool, now: bool) {
        match (was, now) {
            (false, true) => {
                self.busy_sessions.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.busy_sessions.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    pub fn busy_sessions(&self) -> usize {
        self.busy_sessions.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_waits_for_busy_sessions() {
        let gate = std::sync::Arc::new(PauseGate::default());
        gate.set_busy(false, true);
        assert_eq!(gate.pause(Duration::from_millis(20)).await, Err(1));
        assert!(gate.is_paused());
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.pause(Duration::from_secs(5)).await })
        };
        gate.set_busy(true, false);
        assert_eq!(waiter.await.ok(), Some(Ok(())));
        let seen = gate.subscribe();
        gate.resume();
        assert!(seen.has_changed().unwrap_or(false));
        assert!(!gate.is_paused());
    }
}
