//! `demo-app reaper`: deletes idempotency keys older than 72 hours, in
//! batches, long after any client or the completer would still retry them.
//! Their rides stay (`idempotency_key_id` is set to NULL).

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::error::Result;

pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(72 * 3600);
pub const DEFAULT_BATCH: i64 = 1000;

/// Deletes every key older than `max_age`, `batch` at a time; returns how many.
pub async fn run_once(pool: &Pool, max_age: Duration, batch: i64) -> Result<usize> {
    let conn = pool.get().await?;
    let mut deleted = 0;
    loop {
        let n = conn
            .execute(
                "DELETE FROM idempotency_keys
                  WHERE id IN (SELECT id FROM idempotency_keys
                                WHERE created_at < now() - make_interval(secs => $1)
                                ORDER BY id LIMIT $2)",
                &[&max_age.as_secs_f64(), &batch],
            )
            .await?;
        deleted += n as usize;
        if n > 0 {
            tracing::info!("Reaped {n} idempotency keys older than {max_age:?}");
        }
        if n < batch.max(1) as u64 {
            return Ok(deleted);
        }
    }
}
