//! `POST /rides` as Stripe-style atomic phases over an idempotency key.
//!
//! A request moves its key through the recovery points
//! `started` -> `ride_created` -> `charge_created` -> `finished`. Each step
//! is one SERIALIZABLE transaction (through causeway, so on the primary) that
//! does its work *and* advances the key, so after a crash at any point a
//! retry with the same key resumes at the last recovery point and never
//! repeats a finished step. The one step that cannot be rolled back, the
//! charge, is made idempotent by the payment service's own key, derived from
//! the idempotency key's id.
//!
//! | phase | file | does |
//! |---|---|---|
//! | 1 | [`key`] | insert or lock the key; replay a finished one |
//! | 2 | [`ride`] | insert the ride and its audit record |
//! | 3 | [`charge`] | charge through the payment service, record the charge |
//! | 4 | [`receipt`] | stage the receipt job, store the 201 |
//!
//! When a phase fails the key is unlocked and the client is told to retry
//! with the same key: 409 for a serialization failure, 503 when the payment
//! service could not be reached, 500 otherwise.

pub mod charge;
pub mod key;
pub mod receipt;
pub mod ride;
pub mod tx;

use std::net::IpAddr;
use std::time::Duration;

use crate::db::UserDb;
use crate::error::Error;
use crate::params::RideParams;
use crate::payments::PaymentsClient;
use crate::response::{ApiResponse, RETRY};
use crate::users::User;
pub use key::{Key, RecoveryPoint};

/// How long a key stays locked by a request that is (or was) running it.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(90);

/// What the phases run against.
#[derive(Clone)]
pub struct Services {
    /// Connections on behalf of the request's user (see `Db::for_user`).
    pub db: UserDb,
    pub payments: PaymentsClient,
    pub lock_timeout: Duration,
}

/// One `POST /rides`, from the API or replayed by the completer.
#[derive(Clone, Debug)]
pub struct RideRequest {
    pub user: User,
    pub key: String,
    pub params: RideParams,
    pub origin_ip: IpAddr,
    /// Fail on purpose right after reaching this recovery point (demo and tests).
    pub fail_after: Option<RecoveryPoint>,
}

/// What a phase decided.
pub enum Step {
    /// Committed; the key is now at this recovery point.
    Next(RecoveryPoint),
    /// Committed, and the key is finished with this response.
    Respond(ApiResponse),
}

/// Runs (or resumes, or replays) the request; always answers.
pub async fn create_ride(services: &Services, request: &RideRequest) -> ApiResponse {
    let mut key = match key::lock_or_insert(services, request).await {
        Ok(key::Outcome::Locked(key)) => key,
        Ok(key::Outcome::Respond(response)) => return response,
        Err(e) => return failure(&e, request, None),
    };
    loop {
        if request.fail_after == Some(key.recovery_point) {
            key::unlock(&services.db, key.id).await;
            tracing::debug!("key {}: injected failure at {}", key.id, key.recovery_point);
            return ApiResponse::error(
                500,
                format!("Injected failure at {}; {RETRY}.", key.recovery_point),
            );
        }
        let step = match key.recovery_point {
            RecoveryPoint::Started => ride::create(services, request, &key).await,
            RecoveryPoint::RideCreated => charge::create(services, request, &key).await,
            RecoveryPoint::ChargeCreated => receipt::finish(services, request, &key).await,
            RecoveryPoint::Finished => Err(Error::Other(format!(
                "key {} is finished but was locked",
                key.id
            ))),
        };
        match step {
            Ok(Step::Next(point)) => key.recovery_point = point,
            Ok(Step::Respond(response)) => return response,
            Err(e) => {
                key::unlock(&services.db, key.id).await;
                return failure(&e, request, Some(&key));
            }
        }
    }
}

/// The answer to a failed phase (module docs), logged with its cause: at
/// debug level what the client is told to retry and the demo causes on
/// purpose or by racing retries (the payment service's injected failures,
/// conflicts), at warn anything else.
fn failure(error: &Error, request: &RideRequest, key: Option<&Key>) -> ApiResponse {
    let at = key.map_or("started".to_string(), |k| {
        format!("key {} at {}", k.id, k.recovery_point)
    });
    if error.is_conflict() || matches!(error, Error::Payment(_)) {
        tracing::debug!("ride for {} ({at}) failed: {error}", request.user.email);
    } else {
        tracing::warn!("ride for {} ({at}) failed: {error}", request.user.email);
    }
    match error {
        e if e.is_conflict() => ApiResponse::error(
            409,
            format!("A conflicting request was running at the same time; {RETRY}."),
        ),
        Error::Payment(_) => {
            ApiResponse::error(503, format!("The payment service is unavailable; {RETRY}."))
        }
        _ => ApiResponse::error(500, format!("Internal server error; {RETRY}.")),
    }
}
