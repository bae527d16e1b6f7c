//! Replication control for tests: LSNs, catching up, pausing replay.
//!
//! Stale-read tests must be certain a replica is behind, not hope it is, so
//! [`TestCluster::pause_replay`] returns only once the replica reports replay
//! `paused`: from then on nothing the primary writes becomes visible there
//! until [`TestCluster::resume_replay`].

use std::time::Duration;

use super::cluster::{TestCluster, WAIT_TIMEOUT};
use super::lsn::{parse_lsn, Lsn};
use super::wait::wait_for;

impl TestCluster {
    /// The primary's current WAL write position (`pg_current_wal_lsn()`).
    pub fn primary_lsn(&self) -> Lsn {
        let out = self.psql(self.primary_port(), "SELECT pg_current_wal_lsn()");
        parse_lsn(&out, "pg_current_wal_lsn() on the primary")
    }

    /// What replica `i` has replayed (`pg_last_wal_replay_lsn()`).
    pub fn replayed_lsn(&self, i: usize) -> Lsn {
        let out = self.psql(self.replica_port(i), "SELECT pg_last_wal_replay_lsn()");
        parse_lsn(&out, &format!("pg_last_wal_replay_lsn() on replica{i}"))
    }

    /// Waits until replica `i` has replayed everything the primary had
    /// written when this was called. A replica whose replay is paused is
    /// waited for too (another test sharing the cluster may resume it soon);
    /// the panic after 30 s says so when that was the reason.
    pub fn wait_replica_caught_up(&self, i: usize) {
        let target = self.primary_lsn();
        let port = self.replica_port(i);
        let sql = format!(
            "SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, \
                    pg_last_wal_replay_lsn(), pg_get_wal_replay_pause_state()"
        );
        wait_for(
            &format!("replica{i} to replay up to {target}"),
            WAIT_TIMEOUT,
            || {
                let row = self.try_psql(port, "postgres", &sql)?;
                match row.split('|').collect::<Vec<_>>()[..] {
                    ["t", _, _] => Ok(()),
                    [_, replayed, pause] => Err(format!("replayed {replayed}, replay {pause}")),
                    _ => Err(format!("unexpected answer {row:?}")),
                }
            },
        );
    }

    /// [`TestCluster::wait_replica_caught_up`] for every replica.
    pub fn wait_replicas_caught_up(&self) {
        for i in 0..self.replica_count() {
            self.wait_replica_caught_up(i);
        }
    }

    /// Pauses WAL replay on replica `i` and waits until it is really paused.
    pub fn pause_replay(&self, i: usize) {
        self.psql(self.replica_port(i), "SELECT pg_wal_replay_pause()");
        wait_for(
            &format!("replay paused on replica{i}"),
            WAIT_TIMEOUT,
            || match self.replay_pause_state(i).as_str() {
                "paused" => Ok(()),
                other => Err(other.to_string()),
            },
        );
    }

    /// Resumes WAL replay on replica `i`.
    pub fn resume_replay(&self, i: usize) {
        self.psql(self.replica_port(i), "SELECT pg_wal_replay_resume()");
    }

    /// `not paused`, `pause requested` or `paused`.
    pub fn replay_pause_state(&self, i: usize) -> String {
        self.psql(
            self.replica_port(i),
            "SELECT pg_get_wal_replay_pause_state()",
        )
    }

    /// Makes replica `i` apply each commit only `delay` after it happened on
    /// the primary (`recovery_min_apply_delay`); `Duration::ZERO` removes it.
    /// Takes effect on reload, within milliseconds.
    pub fn set_apply_delay(&self, i: usize, delay: Duration) {
        let ms = delay.as_millis();
        self.psql_statements(
            self.replica_port(i),
            "postgres",
            &[
                &format!("ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'"),
                "SELECT pg_reload_conf()",
            ],
        );
    }
}

/// Replay paused on every replica until dropped; see
/// [`TestCluster::pause_all_replay`].
pub struct PausedReplay<'a> {
    cluster: &'a TestCluster,
}

impl Drop for PausedReplay<'_> {
    fn drop(&mut self) {
        for i in 0..self.cluster.replica_count() {
            self.cluster.resume_replay(i);
        }
    }
}

impl TestCluster {
    /// Pauses replay on every replica (each really paused on return) and
    /// resumes it when the guard is dropped, even if the test panics.
    pub fn pause_all_replay(&self) -> PausedReplay<'_> {
        for i in 0..self.replica_count() {
            self.pause_replay(i);
        }
        PausedReplay { cluster: self }
    }
}
