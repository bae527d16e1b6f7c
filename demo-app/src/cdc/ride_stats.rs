//! The one real handler: `ride_stats`, each user's ride count and total
//! distance, kept up to date from ride inserts as CDC sees them (rides the
//! slot saw, so those committed after it was created).
//!
//! Delivery is at least once: after a crash between handling a batch and
//! consuming it, the same inserts come again. The upsert therefore applies
//! a change only if it is later in the stream than the last one applied to
//! that user's row, by `(commit_lsn, lsn)`, which increases strictly
//! through the stream: a change seen twice counts once.
//!
//! Its writes go through causeway like any other (to the primary), and show
//! up in the stream themselves as `ride_stats` changes, which this handler
//! does not listen to: no loop.

use deadpool_postgres::Pool;

use super::change::Change;
use super::datum::Datum;
use super::decode::Kind;
use super::handler::{Handler, HandlerFuture};
use crate::error::{Error, Result};

pub struct RideStats {
    pool: Pool,
}

impl RideStats {
    pub fn new(pool: Pool) -> RideStats {
        RideStats { pool }
    }

    async fn apply(&self, change: &Change) -> Result<()> {
        if change.kind != Kind::Insert {
            return Ok(());
        }
        let user_id = change
            .get("user_id")
            .and_then(Datum::as_i64)
            .ok_or_else(|| Error::Other("ride insert without user_id".into()))?;
        let distance = match change.get("distance") {
            Some(Datum::Numeric(d)) => d.clone(),
            other => return Err(Error::Other(format!("ride insert with distance {other:?}"))),
        };
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO ride_stats AS s
                     (user_id, rides, total_distance, last_commit_lsn, last_change_lsn)
                 VALUES ($1, 1, $2::text::numeric, $3::text::pg_lsn, $4::text::pg_lsn)
                 ON CONFLICT (user_id) DO UPDATE
                    SET rides = s.rides + 1,
                        total_distance = s.total_distance + EXCLUDED.total_distance,
                        last_commit_lsn = EXCLUDED.last_commit_lsn,
                        last_change_lsn = EXCLUDED.last_change_lsn,
                        updated_at = now()
                  WHERE (s.last_commit_lsn, s.last_change_lsn)
                      < (EXCLUDED.last_commit_lsn, EXCLUDED.last_change_lsn)",
                &[
                    &user_id,
                    &distance,
                    &change.commit_lsn.to_string(),
                    &change.lsn.to_string(),
                ],
            )
            .await?;
        Ok(())
    }
}

impl Handler for RideStats {
    fn name(&self) -> &str {
        "ride_stats"
    }

    fn handle<'a>(&'a self, change: &'a Change) -> HandlerFuture<'a> {
        Box::pin(self.apply(change))
    }
}
