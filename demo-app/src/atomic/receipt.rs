//! Phase 4: stage the `send_ride_receipt` job and finish the key with the
//! 201 and the ride, in one SERIALIZABLE transaction.
//!
//! The job is staged in the database, not pushed to a queue: it becomes
//! visible only if this transaction commits, and the `enqueuer` moves it out.

use serde_json::json;

use super::{key, tx, Key, RideRequest, Services, Step};
use crate::error::{Error, Result};
use crate::payments::RIDE_PRICE_CENTS;
use crate::response::ApiResponse;
use crate::rides::{ride_json, RIDE_COLUMNS};

pub async fn finish(services: &Services, request: &RideRequest, key: &Key) -> Result<Step> {
    let mut conn = services.db.get().await?;
    let tx = tx::serializable(&mut conn).await?;
    let row = tx
        .query_opt(
            &format!("SELECT {RIDE_COLUMNS} FROM rides r WHERE r.idempotency_key_id = $1"),
            &[&key.id],
        )
        .await?;
    let ride = match row.as_ref().map(ride_json).transpose()?.flatten() {
        Some(ride) => ride,
        None => return Err(Error::Other(format!("key {} has no ride", key.id))),
    };
    tx.execute(
        "INSERT INTO staged_jobs (job_name, job_args) VALUES ('send_ride_receipt', $1)",
        &[&json!({
            "amount": RIDE_PRICE_CENTS,
            "currency": "usd",
            "customer_id": request.user.customer_id,
            "ride_id": ride["id"],
            "user_id": request.user.id,
        })],
    )
    .await?;
    let response = ApiResponse::new(201, json!({ "ride": ride }));
    key::finish(&tx, key, &response).await?;
    tx.commit().await?;
    Ok(Step::Respond(response))
}
