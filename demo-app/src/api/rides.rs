//! `POST /rides` and `GET /rides/{id}`.
//!
//! Both run on connections named for the user ([`crate::db::Db::for_user`]),
//! so the read after a create, on whichever connection, is one causeway
//! knows must see the write: it answers from a replica only once that
//! replica has replayed the ride, else from the primary. The app itself
//! keeps no LSN.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::authenticate;
use super::ApiContext;
use crate::atomic::{self, RecoveryPoint, RideRequest, Services};
use crate::error::Error;
use crate::params::{parse_body, RideParams};
use crate::response::ApiResponse;
use crate::rides::{ride_json, RIDE_COLUMNS, RIDE_COLUMN_COUNT};

/// Idempotency keys shorter than this are refused.
pub const MIN_KEY_LENGTH: usize = 20;
/// ... and longer than this (the column's limit).
pub const MAX_KEY_LENGTH: usize = 100;
/// The response header naming the server that answered a read.
pub const SERVED_BY: &str = "served-by";
/// The request header that makes a request fail after a recovery point.
pub const INJECT_FAILURE: &str = "x-inject-failure";

pub async fn create(
    State(context): State<Arc<ApiContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResponse {
    match prepare(&context, &headers, &body, peer).await {
        Ok((request, services)) => atomic::create_ride(&services, &request).await,
        Err(response) => response,
    }
}

/// Checks the request in the order a client fixes it: credentials (401),
/// key (400), body (400), parameters (422).
async fn prepare(
    context: &ApiContext,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
) -> Result<(RideRequest, Services), ApiResponse> {
    let user = authenticate(context, headers).await?;
    let key = idempotency_key(headers)?;
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    let fields =
        parse_body(content_type, body).map_err(|e| ApiResponse::error(400, e.to_string()))?;
    let params =
        RideParams::from_map(&fields).map_err(|e| ApiResponse::error(422, e.to_string()))?;
    let fail_after = match headers.get(INJECT_FAILURE) {
        Some(value) if context.allow_failure_injection => Some(
            value
                .to_str()
                .ok()
                .and_then(RecoveryPoint::parse)
                .filter(|p| *p != RecoveryPoint::Finished)
                .ok_or_else(|| {
                    ApiResponse::error(
                        400,
                        "X-Inject-Failure must be started, ride_created or charge_created.",
                    )
                })?,
        ),
        _ => None,
    };
    let db = context.db.for_user(&user.email).map_err(internal)?;
    let services = Services {
        db,
        payments: context.payments.clone(),
        lock_timeout: context.lock_timeout,
    };
    let request = RideRequest {
        user,
        key,
        params,
        origin_ip: peer.ip(),
        fail_after,
    };
    Ok((request, services))
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiResponse> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::trim))
        .ok_or_else(|| ApiResponse::error(400, "Please specify an Idempotency-Key header."))?
        .map_err(|_| ApiResponse::error(400, "The Idempotency-Key header must be text."))?;
    let length = key.chars().count();
    if length < MIN_KEY_LENGTH {
        return Err(ApiResponse::error(
            400,
            format!("The Idempotency-Key must be at least {MIN_KEY_LENGTH} characters long."),
        ));
    }
    if length > MAX_KEY_LENGTH {
        return Err(ApiResponse::error(
            400,
            format!("The Idempotency-Key must be at most {MAX_KEY_LENGTH} characters long."),
        ));
    }
    Ok(key.to_string())
}

pub async fn show(
    State(context): State<Arc<ApiContext>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let user = match authenticate(&context, &headers).await {
        Ok(user) => user,
        Err(response) => return response.into_response(),
    };
    let Ok(id) = id.parse::<i64>() else {
        return ApiResponse::error(404, "Ride not found.").into_response();
    };
    match read_ride(&context, &user.email, user.id, id).await {
        Ok((ride, server)) => {
            tracing::debug!("Reading ride {id} from server '{server}'");
            let response = match ride {
                Some(ride) => ApiResponse::new(200, json!({ "ride": ride })),
                None => ApiResponse::error(404, "Ride not found."),
            };
            let mut response = response.into_response();
            if let Ok(value) = HeaderValue::from_str(&server) {
                response.headers_mut().insert(SERVED_BY, value);
            }
            response
        }
        Err(e) => internal(e).into_response(),
    }
}

/// The ride (if the user has one with this id) and the server that answered,
/// from one statement, so the name is certainly the server that read it.
async fn read_ride(
    context: &ApiContext,
    email: &str,
    user_id: i64,
    id: i64,
) -> Result<(Option<serde_json::Value>, String), Error> {
    let conn = context.db.for_user(email)?.get().await?;
    let row = conn
        .query_one(
            &format!(
                "SELECT {RIDE_COLUMNS}, inet_server_port(), pg_is_in_recovery()
                   FROM (SELECT 1) AS one
                   LEFT JOIN rides r ON r.id = $1 AND r.user_id = $2"
            ),
            &[&id, &user_id],
        )
        .await?;
    let port: i32 = row.try_get(RIDE_COLUMN_COUNT)?;
    let in_recovery: bool = row.try_get(RIDE_COLUMN_COUNT + 1)?;
    Ok((ride_json(&row)?, context.servers.name_of(port, in_recovery)))
}

fn internal(error: Error) -> ApiResponse {
    tracing::warn!("{error}");
    ApiResponse::error(500, "Internal server error.")
}
