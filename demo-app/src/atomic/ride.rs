//! Phase 2: insert the ride, its audit record and its staged log record, and
//! move the key to `ride_created`, in one SERIALIZABLE transaction.
//!
//! `rides.idempotency_key_id` is unique, so even two workers that both think
//! they hold the key cannot make two rides for it. The log record is staged
//! in the same transaction, so a ride that rolls back leaves nothing in the
//! log, and rides enter the log in id order ([`crate::log::staged`]).

use serde_json::json;

use super::{key, tx, Key, RecoveryPoint, RideRequest, Services, Step};
use crate::error::Result;
use crate::log::staged;

pub async fn create(services: &Services, request: &RideRequest, key: &Key) -> Result<Step> {
    let params = &request.params;
    let mut conn = services.db.get().await?;
    let tx = tx::serializable(&mut conn).await?;
    staged::take_ride_order_lock(&tx).await?;
    let ride_id: i64 = tx
        .query_one(
            "INSERT INTO rides (idempotency_key_id, distance, origin_lat, origin_lon,
                                target_lat, target_lon, user_id)
             VALUES ($1, $2::float8, $3::float8, $4::float8, $5::float8, $6::float8, $7)
             RETURNING id",
            &[
                &key.id,
                &params.distance_km(),
                &params.origin_lat,
                &params.origin_lon,
                &params.target_lat,
                &params.target_lon,
                &request.user.id,
            ],
        )
        .await?
        .try_get(0)?;
    tx.execute(
        "INSERT INTO audit_records (action, data, origin_ip, resource_id, resource_type, user_id)
         VALUES ('create_ride', $1, $2, $3, 'ride', $4)",
        &[
            &json!({ "idempotency_key_id": key.id, "params": params.to_json() }),
            &request.origin_ip,
            &ride_id,
            &request.user.id,
        ],
    )
    .await?;
    staged::stage_ride(&tx, ride_id).await?;
    key::advance(&tx, key, RecoveryPoint::RideCreated).await?;
    tx.commit().await?;
    tracing::debug!("key {}: created ride {ride_id}", key.id);
    Ok(Step::Next(RecoveryPoint::RideCreated))
}
