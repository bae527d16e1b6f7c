//! `demo-app enqueuer`: moves transactionally-staged jobs out of Postgres.
//!
//! The API stages a job in the same transaction as the work it belongs to,
//! so a job exists if and only if that work committed. The enqueuer takes up
//! to a batch of them in one transaction (`DELETE ... RETURNING`, skipping
//! rows another enqueuer holds), pushes them to the queue, and commits only
//! after the push worked: a failed push leaves them staged for the next pass.
//! (A crash between push and commit pushes a batch twice: at least once.)

use deadpool_postgres::Pool;

use super::queue::{Job, JobQueue};
use crate::error::Result;

pub const DEFAULT_BATCH: i64 = 1000;

/// One pass; returns how many jobs it moved.
pub async fn run_once(pool: &Pool, queue: &JobQueue, batch: i64) -> Result<usize> {
    let mut conn = pool.get().await?;
    let tx = crate::db::read_committed(&mut conn).await?;
    let rows = tx
        .query(
            "DELETE FROM staged_jobs
              WHERE id IN (SELECT id FROM staged_jobs ORDER BY id
                            LIMIT $1 FOR UPDATE SKIP LOCKED)
              RETURNING id, job_name, job_args",
            &[&batch],
        )
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        jobs.push(Job {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            args: row.try_get(2)?,
        });
    }
    jobs.sort_by_key(|j| j.id);
    queue.push_all(&jobs).await?;
    tx.commit().await?;
    for job in &jobs {
        tracing::debug!("Enqueued job {} {}: {}", job.id, job.name, job.args);
    }
    Ok(jobs.len())
}
