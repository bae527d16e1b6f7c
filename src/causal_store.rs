//! A causal store shared by several causeway instances (`[routing]
//! causal_store = "redis://..."`): each commit's causal LSN, under the
//! same key the in-process map uses (a client id, a role, or the one
//! global maximum), so that a client whose write went through one
//! instance reads it through another.
//!
//! A value is the timeline and the LSN, as 24 hex digits
//! (`{timeline:08x}{lsn:016x}`), so that comparing two values as strings
//! compares them as numbers: a Lua script sets a key only to a greater
//! value and refreshes its TTL either way, so a value never moves
//! backwards, whatever order instances write in. Timelines (not a proxy's
//! own epochs) make values comparable across instances; each instance
//! maps them back to its epochs (see [`crate::replicas::History`]).
//!
//! Redis trouble must never be a stale read:
//! - a read that cannot get its value is routed to the primary;
//! - a commit whose value could not be written is kept and written again
//!   every [`REPUBLISH_EVERY`] until Redis takes it;
//! - after a failure, reads keep going to the primary for [`GRACE`], time
//!   enough for every instance's kept values to reach Redis again;
//! - a Redis that lost its data (restarted without persistence, flushed)
//!   is noticed by its generation key changing: the instance then writes
//!   everything it knows again, and reads go to the primary for [`GRACE`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::lsn::Lsn;

/// Sets `KEYS[1]` to `ARGV[1]` unless it holds a value at least as great,
/// and (re)sets its TTL to `ARGV[2]` ms either way. Returns 1 if it set it.
const ADVANCE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and current >= ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Keys are prefixed, so the store can share a Redis database.
const PREFIX: &str = "causeway:lsn:";

/// Set once by the first instance to reach a fresh Redis: if it changes or
/// disappears, Redis lost what it held.
const GENERATION: &str = "causeway:generation";

/// How often values Redis did not take are written again.
pub const REPUBLISH_EVERY: Duration = Duration::from_millis(200);

/// How long reads keep going to the primary after Redis failed or lost its
/// data: several republish rounds, so other instances' kept values are in.
pub const GRACE: Duration = Duration::from_millis(1000);

pub struct CausalStore {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    advance: redis::Script,
    ttl: Duration,
    timeout: Duration,
    /// When a failure was last logged, so an outage logs every few
    /// seconds, not once per read.
    last_warned: std::sync::Mutex<Option<Instant>>,
    /// Values Redis has not taken yet: key -> encoded value (the greatest).
    pending: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The generation this instance last saw.
    generation: std::sync::Mutex<Option<String>>,
    /// Reads do not trust the store before this.
    distrust_until: std::sync::Mutex<Option<Instant>>,
    republisher: std::sync::Once,
}

impl std::fmt::Debug for CausalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalStore")
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CausalStore {
    /// A store at `url` (`redis://host:port/db`, `rediss://` for TLS,
    /// `redis+unix:///path`); nothing is connected until first used.
    pub fn new(url: &str, ttl: Duration, timeout: Duration) -> Result<CausalStore, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(CausalStore {
            client,
            connection: OnceCell::new(),
            advance: redis::Script::new(ADVANCE),
            ttl,
            timeout,
            last_warned: std::sync::Mutex::new(None),
            pending: Default::default(),
            generation: std::sync::Mutex::new(None),
            distrust_until: std::sync::Mutex::new(None),
            republisher: std::sync::Once::new(),
        })
    }

    fn distrust(&self) {
        *lock(&self.distrust_until) = Some(Instant::now() + GRACE);
    }

    fn trusted(&self) -> bool {
        lock(&self.distrust_until).is_none_or(|until| Instant::now() >= until)
    }

    /// How long a value lives without writes.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Logs a failed call, at most every five seconds.
    pub fn note_failure(&self, op: &str, error: &dyn std::fmt::Display) {
        let mut last = lock(&self.last_warned);
        if last.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
            *last = Some(Instant::now());
            tracing::warn!(op, %error, "causal store (Redis) failed: reads of the clients it serves go to the primary until it answers again");
        }
    }

    /// One multiplexed connection for the whole proxy; it reconnects by
    /// itself after Redis comes back.
    async fn connection(&self) -> Result<ConnectionManager, String> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        Ok(connection.clone())
    }

    /// The value stored for `key`: (timeline, LSN). `Err` when Redis does
    /// not answer, lost its data, or failed less than [`GRACE`] ago: the
    /// read must not trust a value it may be missing.
    pub async fn get(&self, key: &str) -> Result<Option<(u32, Lsn)>, StoreError> {
        if !self.trusted() {
            return Err(StoreError::Recovering);
        }
        let started = Instant::now();
        let result = self.fetch(key).await;
        crate::metrics::causal_store("get", started.elapsed(), result.is_ok());
        if result.is_err() {
            self.distrust();
        }
        result
    }

    async fn fetch(&self, key: &str) -> Result<Option<(u32, Lsn)>, StoreError> {
        let mut connection = self.connection().await.map_err(StoreError::Redis)?;
        let (value, generation): (Option<String>, Option<String>) = tokio::time::timeout(
            self.timeout,
            redis::cmd("MGET")
                .arg(format!("{PREFIX}{key}"))
                .arg(GENERATION)
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| StoreError::Redis("timed out".into()))?
        .map_err(|e| StoreError::Redis(e.to_string()))?;
        let seen = lock(&self.generation).clone();
        match (generation, seen) {
            (Some(now), Some(before)) if now == before => {}
            (Some(now), None) => *lock(&self.generation) = Some(now),
            (now, before) => {
                // Redis lost what it held (or this is its first use): a new
                // generation, and whatever instances know is written again.
                let fresh = format!("{:016x}", rand::random::<u64>());
                let _: Option<String> = redis::cmd("SET")
                    .arg(GENERATION)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| StoreError::Redis(e.to_string()))?;
                let current: Option<String> = redis::cmd("GET")
                    .arg(GENERATION)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| StoreError::Redis(e.to_string()))?;
                *lock(&self.generation) = current;
                if before.is_some() || now.is_none() {
                    return Err(StoreError::Reset);
                }
            }
        }
        Ok(value.as_deref().and_then(decode))
    }

    /// Raises the value for `key` to at least (timeline, LSN). On failure
    /// the value is kept and written again until Redis takes it.
    pub async fn advance(
        self: &Arc<Self>,
        key: &str,
        timeline: u32,
        lsn: Lsn,
    ) -> Result<(), String> {
        let value = encode(timeline, lsn);
        let started = Instant::now();
        let result = self.write(key, &value).await;
        crate::metrics::causal_store("advance", started.elapsed(), result.is_ok());
        if result.is_err() {
            self.distrust();
            self.keep(key, value);
        }
        result
    }

    /// Queues a value to be written again (the greatest per key).
    pub fn keep(self: &Arc<Self>, key: &str, value: String) {
        {
            let mut pending = lock(&self.pending);
            let slot = pending.entry(key.to_string()).or_default();
            if value > *slot {
                *slot = value;
            }
        }
        self.republisher.call_once(|| {
            let store = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REPUBLISH_EVERY).await;
                    let Some(store) = store.upgrade() else {
                        return;
                    };
                    store.republish().await;
                }
            });
        });
    }

    /// Writes what Redis has not taken yet; keeps what it still refuses.
    async fn republish(&self) {
        let batch: Vec<(String, String)> = lock(&self.pending).drain().collect();
        for (key, value) in batch {
            if self.write(&key, &value).await.is_err() {
                let mut pending = lock(&self.pending);
                let slot = pending.entry(key).or_default();
                if value > *slot {
                    *slot = value;
                }
            }
        }
    }

    async fn write(&self, key: &str, value: &str) -> Result<(), String> {
        let mut connection = self.connection().await?;
        let _: i64 = tokio::time::timeout(
            self.timeout,
            self.advance
                .key(format!("{PREFIX}{key}"))
                .arg(value)
                .arg(self.ttl.as_millis() as u64)
                .invoke_async(&mut connection),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Why the store's value cannot be used for a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Redis did not answer, or answered with an error.
    Redis(String),
    /// Redis lost what it held; the instance is writing what it knows again.
    Reset,
    /// Redis failed or was reset less than [`GRACE`] ago.
    Recovering,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Redis(e) => write!(f, "{e}"),
            StoreError::Reset => {
                f.write_str("Redis lost the values it held (restarted or flushed)")
            }
            StoreError::Recovering => f.write_str("recovering from a recent failure"),
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value to store for a commit of (timeline, LSN).
pub fn encode_value(timeline: u32, lsn: Lsn) -> String {
    encode(timeline, lsn)
}

fn encode(timeline: u32, lsn: Lsn) -> String {
    format!("{timeline:08x}{:016x}", lsn.0)
}

fn decode(value: &str) -> Option<(u32, Lsn)> {
    if value.len() != 24 {
        return None;
    }
    let timeline = u32::from_str_radix(value.get(..8)?, 16).ok()?;
    let lsn = u64::from_str_radix(value.get(8..)?, 16).ok()?;
    Some((timeline, Lsn(lsn)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_as_strings_as_they_do_as_numbers() {
        let pairs = [
            (1, 0x16B_3749_0000),
            (1, 0x16B_3749_0001),
            (1, u64::MAX),
            (2, 0),
            (2, 0x1_0000_0000),
            (0x10, 5),
        ];
        for window in pairs.windows(2) {
            let (a, b) = (window[0], window[1]);
            assert!(
                encode(a.0, Lsn(a.1)) < encode(b.0, Lsn(b.1)),
                "{a:?} < {b:?}"
            );
        }
        for (timeline, lsn) in pairs {
            assert_eq!(
                decode(&encode(timeline, Lsn(lsn))),
                Some((timeline, Lsn(lsn)))
            );
        }
        assert_eq!(decode("garbage"), None);
        assert_eq!(decode("zzzzzzzz0000000000000000"), None);
    }
}
