//! Staging log records: the transaction that creates a ride also inserts a
//! `staged_log_records` row describing it, so the log can never hold a ride
//! that rolled back, nor miss one that committed. The streamer moves staged
//! rows to Redis later.
//!
//! # Why rides enter the log in id order
//! Consumers skip duplicates by ride id (a record whose ride id is not above
//! the last one counted was counted already), which is only right if ride
//! ids reach the log in increasing order. Ids come from a sequence when the
//! row is inserted, but transactions commit in any order: ride 11 could
//! commit, and be streamed, before ride 10. So the ride's transaction takes
//! a transaction-scoped advisory lock ([`take_ride_order_lock`]) before it
//! takes an id: ride transactions then commit one after the other, in id
//! order, and the streamer, which reads staged rows in id order, sees them
//! in that order too. The lock is held only for the short ride phase.

use deadpool_postgres::Transaction;

use crate::error::Result;

/// Arbitrary, fixed: the advisory lock that orders ride commits.
pub const RIDE_ORDER_LOCK: i64 = 0x7269_6465_6c6f_6721; // "ridelog!"

/// Waits for the ride-order lock; it is released when `tx` ends.
pub async fn take_ride_order_lock(tx: &Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RIDE_ORDER_LOCK])
        .await?;
    Ok(())
}

/// Stages the `create ride` record for `ride_id`, inserted earlier in `tx`.
/// The distance is text: numeric in JSON would come back as a float.
pub async fn stage_ride(tx: &Transaction<'_>, ride_id: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO staged_log_records (action, object, data)
         SELECT 'create', 'ride',
                jsonb_build_object('id', id, 'user_id', user_id,
                                   'distance', distance::text, 'created_at', created_at)
           FROM rides WHERE id = $1",
        &[&ride_id],
    )
    .await?;
    Ok(())
}
