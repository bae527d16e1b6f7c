//! How far the log's consumers and CDC are behind, for the status line.
//!
//! - A consumer's lag is the stream entries after its committed position.
//!   The consumers keep no Redis consumer group (their position lives in
//!   Postgres, committed with their total: see `log::consumer`), so there is
//!   no `XINFO GROUPS` lag to ask for: the position is read from
//!   `consumer_checkpoints` (a plain read through causeway) and the entries
//!   after it are counted in Redis (`XRANGE`, up to a cap).
//! - CDC's lag is the WAL the slot has not consumed yet:
//!   `pg_current_wal_lsn() - confirmed_flush_lsn` from
//!   `pg_replication_slots`. Other writes keep adding WAL, so under load it
//!   is a few kB rather than 0; it grows when CDC falls behind. The query
//!   carries `/* causeway: primary */`: the slot and the WAL position are the
//!   primary's (a replica cannot answer `pg_current_wal_lsn()`).

use deadpool_postgres::Pool;

use super::line::Lag;
use crate::error::Result;
use crate::log::stream::{LogStream, START};

/// Entries counted at most per consumer; more shows as `1000+`.
pub const LAG_CAP: usize = 1000;

/// Each of `names`' lag behind `stream`, in the order given. A consumer that
/// never committed is behind by everything in the stream.
pub async fn consumers(
    pool: &Pool,
    stream: &LogStream,
    names: &[String],
) -> Result<Vec<(String, Lag)>> {
    let rows = pool
        .get()
        .await?
        .query(
            "SELECT name, stream_id FROM consumer_checkpoints
              WHERE stream = $1 AND name = ANY($2)",
            &[&stream.name, &names],
        )
        .await?;
    let mut lags = Vec::with_capacity(names.len());
    for name in names {
        let mut position = START.to_string();
        for row in &rows {
            if row.try_get::<_, &str>(0)? == name {
                position = row.try_get(1)?;
            }
        }
        let behind = stream.count_after(&position, LAG_CAP).await?;
        let lag = Lag {
            entries: behind as u64,
            at_least: behind >= LAG_CAP,
        };
        lags.push((name.clone(), lag));
    }
    Ok(lags)
}

/// WAL bytes between the primary's position and what `slot` has consumed;
/// `None` if there is no such slot (yet).
pub async fn cdc(pool: &Pool, slot: &str) -> Result<Option<u64>> {
    let row = pool
        .get()
        .await?
        .query_opt(
            "/* causeway: primary */
             SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(match row {
        Some(row) => row
            .try_get::<_, Option<i64>>(0)?
            .map(|bytes| bytes.max(0) as u64),
        None => None,
    })
}
