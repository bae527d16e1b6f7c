//! Phase 1: find, check and lock the idempotency key, or insert it; plus the
//! two ways a key stops being locked: finished with a stored response, or
//! unlocked after a failure so a retry can resume it.

use std::fmt;

use deadpool_postgres::Transaction;
use serde_json::Value;

use super::{tx, RideRequest, Services};
use crate::db::UserDb;
use crate::error::{Error, Result};
use crate::params::RideParams;
use crate::response::ApiResponse;

pub const REQUEST_METHOD: &str = "POST";
pub const REQUEST_PATH: &str = "/rides";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryPoint {
    Started,
    RideCreated,
    ChargeCreated,
    Finished,
}

impl RecoveryPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryPoint::Started => "started",
            RecoveryPoint::RideCreated => "ride_created",
            RecoveryPoint::ChargeCreated => "charge_created",
            RecoveryPoint::Finished => "finished",
        }
    }

    pub fn parse(text: &str) -> Option<RecoveryPoint> {
        [
            RecoveryPoint::Started,
            RecoveryPoint::RideCreated,
            RecoveryPoint::ChargeCreated,
            RecoveryPoint::Finished,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

impl fmt::Display for RecoveryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key this request holds the lock of.
#[derive(Clone, Debug)]
pub struct Key {
    pub id: i64,
    pub recovery_point: RecoveryPoint,
}

pub enum Outcome {
    Locked(Key),
    /// Answer without running anything: a replay, or a 409.
    Respond(ApiResponse),
}

/// Phase 1, one SERIALIZABLE transaction.
pub async fn lock_or_insert(services: &Services, request: &RideRequest) -> Result<Outcome> {
    let mut conn = services.db.get().await?;
    let tx = tx::serializable(&mut conn).await?;
    let found = tx
        .query_opt(
            "SELECT id, recovery_point, request_method, request_path, request_params,
                    locked_at IS NOT NULL AND locked_at > now() - make_interval(secs => $3)
                        AS locked,
                    response_code, response_body
               FROM idempotency_keys
              WHERE user_id = $1 AND idempotency_key = $2
                FOR UPDATE",
            &[
                &request.user.id,
                &request.key,
                &services.lock_timeout.as_secs_f64(),
            ],
        )
        .await?;
    let Some(row) = found else {
        let id: i64 = tx
            .query_one(
                "INSERT INTO idempotency_keys
                     (idempotency_key, locked_at, recovery_point, request_method,
                      request_params, request_path, user_id)
                 VALUES ($1, now(), 'started', $2, $3, $4, $5)
                 RETURNING id",
                &[
                    &request.key,
                    &REQUEST_METHOD,
                    &request.params.to_json(),
                    &REQUEST_PATH,
                    &request.user.id,
                ],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
        let recovery_point = RecoveryPoint::Started;
        return Ok(Outcome::Locked(Key { id, recovery_point }));
    };

    let id: i64 = row.try_get(0)?;
    let point: String = row.try_get(1)?;
    let recovery_point = RecoveryPoint::parse(&point)
        .ok_or_else(|| Error::Other(format!("key {id} has unknown recovery point {point:?}")))?;
    let same_request = row.try_get::<_, String>(2)? == REQUEST_METHOD
        && row.try_get::<_, String>(3)? == REQUEST_PATH
        && RideParams::from_json(&row.try_get::<_, Value>(4)?).ok() == Some(request.params);
    if !same_request {
        return Ok(Outcome::Respond(ApiResponse::error(
            409,
            "There was a mismatch between this request's parameters and the parameters \
             of a previously stored request with the same Idempotency-Key.",
        )));
    }
    if row.try_get::<_, bool>(5)? {
        return Ok(Outcome::Respond(ApiResponse::error(
            409,
            "An API request with the same Idempotency-Key is already in progress.",
        )));
    }
    if recovery_point == RecoveryPoint::Finished {
        let status: Option<i32> = row.try_get(6)?;
        let body: Option<Value> = row.try_get(7)?;
        let status = status.and_then(|s| u16::try_from(s).ok());
        return match (status, body) {
            (Some(status), Some(body)) => Ok(Outcome::Respond(ApiResponse::new(status, body))),
            _ => Err(Error::Other(format!(
                "key {id} is finished without a response"
            ))),
        };
    }
    tx.execute(
        "UPDATE idempotency_keys SET last_run_at = now(), locked_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Locked(Key { id, recovery_point }))
}

/// Marks the key finished with `response` and unlocks it, inside the
/// caller's transaction (the last step of a phase).
pub async fn finish(tx: &Transaction<'_>, key: &Key, response: &ApiResponse) -> Result<()> {
    tx.execute(
        "UPDATE idempotency_keys
            SET locked_at = NULL, recovery_point = 'finished',
                response_code = $2, response_body = $3
          WHERE id = $1",
        &[&key.id, &i32::from(response.status), &response.body],
    )
    .await?;
    Ok(())
}

/// Moves the key to `point`, inside the caller's transaction.
pub async fn advance(tx: &Transaction<'_>, key: &Key, point: RecoveryPoint) -> Result<()> {
    tx.execute(
        "UPDATE idempotency_keys SET recovery_point = $2 WHERE id = $1",
        &[&key.id, &point.as_str()],
    )
    .await?;
    Ok(())
}

/// Unlocks the key after a failed phase so the client (or the completer)
/// can retry at once. Best effort: if this fails too, the lock expires.
pub async fn unlock(db: &UserDb, key_id: i64) {
    let result = match db.get().await {
        Ok(conn) => conn
            .execute(
                "UPDATE idempotency_keys SET locked_at = NULL WHERE id = $1",
                &[&key_id],
            )
            .await
            .map_err(Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!("cannot unlock key {key_id} (its lock will expire): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_points_round_trip() {
        for point in ["started", "ride_created", "charge_created", "finished"] {
            assert_eq!(
                RecoveryPoint::parse(point).map(RecoveryPoint::as_str),
                Some(point)
            );
        }
        assert_eq!(RecoveryPoint::parse("nope"), None);
    }
}
