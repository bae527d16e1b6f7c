//! `demo-app streamer`: moves staged log records to the Redis stream.
//!
//! One pass is one Postgres transaction: lock up to a batch of staged
//! records in id order (`SELECT ... FOR UPDATE`), `XADD` each to the stream,
//! delete them, commit. If anything fails before the commit, the records
//! stay staged and the next pass sends them again: the log is at least
//! once, and consumers skip what they already counted. To show that this is
//! safe, a share of passes (`failure_rate`, 10% by default) fail on purpose
//! after the `XADD`s and before the delete, so their batch is sent twice.
//!
//! Through causeway, both the locking read and the delete go to the primary
//! (a transaction that is not READ ONLY runs there wholly).

use deadpool_postgres::Pool;
use rand::Rng;

use super::stream::{LogRecord, LogStream};
use crate::error::{Error, Result};

pub const DEFAULT_BATCH: i64 = 1000;
pub const DEFAULT_FAILURE_RATE: f64 = 0.1;

#[derive(Clone, Debug)]
pub struct StreamerConfig {
    /// Records per pass.
    pub batch: i64,
    /// Share of passes that fail after sending and before deleting.
    pub failure_rate: f64,
}

impl Default for StreamerConfig {
    fn default() -> Self {
        StreamerConfig {
            batch: DEFAULT_BATCH,
            failure_rate: DEFAULT_FAILURE_RATE,
        }
    }
}

/// One pass; returns how many records it moved. An injected failure is
/// [`Error::Injected`], with the batch sent and still staged.
pub async fn run_once(pool: &Pool, stream: &LogStream, config: &StreamerConfig) -> Result<usize> {
    let mut conn = pool.get().await?;
    let tx = crate::db::read_committed(&mut conn).await?;
    let rows = tx
        .query(
            "SELECT id, action, object, data FROM staged_log_records
              ORDER BY id LIMIT $1 FOR UPDATE",
            &[&config.batch],
        )
        .await?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(0);
    };
    let (first_id, last_id): (i64, i64) = (first.try_get(0)?, last.try_get(0)?);
    let mut ids = Vec::with_capacity(rows.len());
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.try_get::<_, i64>(0)?);
        records.push(LogRecord {
            action: row.try_get(1)?,
            object: row.try_get(2)?,
            data: row.try_get(3)?,
        });
    }
    stream.append(&records).await?;
    if rand::thread_rng().gen_bool(config.failure_rate.clamp(0.0, 1.0)) {
        // Dropping `tx` rolls back: the records stay staged, already sent.
        return Err(Error::Injected(format!(
            "streamer sent records {first_id}..={last_id} to {} and failed before \
             deleting them: the next pass sends them again",
            stream.name
        )));
    }
    tx.execute("DELETE FROM staged_log_records WHERE id = ANY($1)", &[&ids])
        .await?;
    tx.commit().await?;
    tracing::debug!(
        "Streamed {} records ({first_id}..={last_id}) to {}",
        ids.len(),
        stream.name
    );
    Ok(ids.len())
}
