//! `demo-app completer`: finishes requests their clients abandoned.
//!
//! A key that is not finished, older than a grace period (5 min: the client
//! had its chance to retry), not run in the last minute, and unlocked or
//! locked longer than the lock timeout (its request died) is pushed to
//! completion by replaying the stored request through the same atomic phases
//! the API runs ([`crate::atomic::create_ride`]), as its user: on connections
//! named for that user, so the user's next read through the API (another
//! process, other connections) sees what the completer wrote.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;

use crate::atomic::{self, RideRequest, Services};
use crate::db::Db;
use crate::error::Result;
use crate::params::RideParams;
use crate::payments::PaymentsClient;
use crate::users::User;

#[derive(Clone, Debug)]
pub struct CompleterConfig {
    /// Leave keys younger than this to their clients.
    pub grace: Duration,
    /// Skip keys run (by anyone) more recently than this.
    pub rerun_after: Duration,
    /// Keys per pass.
    pub batch: i64,
}

impl Default for CompleterConfig {
    fn default() -> Self {
        CompleterConfig {
            grace: Duration::from_secs(300),
            rerun_after: Duration::from_secs(60),
            batch: 100,
        }
    }
}

/// What the completer runs requests with.
pub struct Completer {
    pub db: Db,
    pub payments: PaymentsClient,
    pub lock_timeout: Duration,
    pub config: CompleterConfig,
}

/// One pass; returns how many keys it finished.
pub async fn run_once(completer: &Completer) -> Result<usize> {
    let Completer {
        db,
        payments,
        lock_timeout,
        config,
    } = completer;
    let rows = db
        .shared()
        .get()
        .await?
        .query(
            "SELECT k.idempotency_key, k.request_params, u.id, u.email, u.stripe_customer_id
               FROM idempotency_keys k JOIN users u ON u.id = k.user_id
              WHERE k.recovery_point <> 'finished'
                AND k.created_at < now() - make_interval(secs => $1)
                AND k.last_run_at < now() - make_interval(secs => $2)
                AND (k.locked_at IS NULL OR k.locked_at < now() - make_interval(secs => $3))
              ORDER BY k.id
              LIMIT $4",
            &[
                &config.grace.as_secs_f64(),
                &config.rerun_after.as_secs_f64(),
                &lock_timeout.as_secs_f64(),
                &config.batch,
            ],
        )
        .await?;
    let mut finished = 0;
    for row in rows {
        let key: String = row.try_get(0)?;
        let params: Value = row.try_get(1)?;
        let user = User {
            id: row.try_get(2)?,
            email: row.try_get(3)?,
            customer_id: row.try_get(4)?,
        };
        let params = match RideParams::from_json(&params) {
            Ok(params) => params,
            Err(e) => {
                tracing::warn!("completer: key {key:?} has unusable params: {e}");
                continue;
            }
        };
        let request = RideRequest {
            user,
            key,
            params,
            origin_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            fail_after: None,
        };
        let services = Services {
            db: db.for_user(&request.user.email)?,
            payments: payments.clone(),
            lock_timeout: *lock_timeout,
        };
        let response = atomic::create_ride(&services, &request).await;
        tracing::debug!(
            "Completer: key {:?} of {} -> {}",
            request.key,
            request.user.email,
            response.status
        );
        if response.status < 500 && response.status != 409 {
            finished += 1;
        }
    }
    Ok(finished)
}
