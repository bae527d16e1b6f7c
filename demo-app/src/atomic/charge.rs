//! Phase 3: charge the user through the payment service, then record the
//! charge id on the ride and move the key to `charge_created`.
//!
//! The HTTP call happens *before* the transaction opens, so no transaction
//! stays open across a foreign call; it is safe to repeat because its
//! idempotency key ([`payment_key`]) is derived from the key's id: however
//! often this phase runs for a key, the service makes at most one charge.
//!
//! A declined card or a refused request is final: the key is finished with a
//! stored 402 or 503. An unreachable or failing service is not: the phase
//! fails with [`Error::Payment`], the key stays at `ride_created`, and the
//! client retries with the same key.

use super::{key, tx, Key, RecoveryPoint, RideRequest, Services, Step};
use crate::error::{Error, Result};
use crate::payments::{ChargeOutcome, ChargeRequest, RIDE_PRICE_CENTS};
use crate::response::ApiResponse;

/// The payment service's idempotency key for the ride of idempotency key `id`.
pub fn payment_key(key_id: i64) -> String {
    format!("rocket-rides-ride-charge-{key_id}")
}

pub async fn create(services: &Services, request: &RideRequest, key: &Key) -> Result<Step> {
    let charge = ChargeRequest {
        amount: RIDE_PRICE_CENTS,
        currency: "usd".into(),
        customer: request.user.customer_id.clone(),
        description: format!("ride of idempotency key {}", key.id),
    };
    let outcome = services
        .payments
        .charge(&payment_key(key.id), &charge)
        .await;
    let final_response = match outcome {
        ChargeOutcome::Charged { id } => return record(services, key, &id).await,
        ChargeOutcome::Unavailable { reason } => return Err(Error::Payment(reason)),
        ChargeOutcome::Declined { message } => {
            tracing::debug!("key {}: card declined: {message}", key.id);
            ApiResponse::error(402, "Your card was declined.")
        }
        ChargeOutcome::Refused { status, message } => {
            tracing::warn!("key {}: payment refused ({status}): {message}", key.id);
            ApiResponse::error(503, format!("The payment could not be made: {message}"))
        }
    };
    let mut conn = services.db.get().await?;
    let tx = tx::serializable(&mut conn).await?;
    key::finish(&tx, key, &final_response).await?;
    tx.commit().await?;
    Ok(Step::Respond(final_response))
}

async fn record(services: &Services, key: &Key, charge_id: &str) -> Result<Step> {
    let mut conn = services.db.get().await?;
    let tx = tx::serializable(&mut conn).await?;
    let updated = tx
        .execute(
            "UPDATE rides SET charge_id = $2 WHERE idempotency_key_id = $1",
            &[&key.id, &charge_id],
        )
        .await?;
    if updated != 1 {
        return Err(Error::Other(format!(
            "key {} has no ride to charge",
            key.id
        )));
    }
    key::advance(&tx, key, RecoveryPoint::ChargeCreated).await?;
    tx.commit().await?;
    tracing::debug!("key {}: charged {charge_id}", key.id);
    Ok(Step::Next(RecoveryPoint::ChargeCreated))
}
