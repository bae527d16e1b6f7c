//! `demo-app payments`: the ledger over HTTP.
//!
//! - `POST /charges` with an `Idempotency-Key` header and a JSON body
//!   `{amount, currency, customer, description}`: 201 with the charge, 402
//!   for the declining customer, 400 for a bad request or a key reused with
//!   other parameters, 500 for an injected failure.
//! - `GET /charges`: `{count, charges}`, for tests and the curious.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::ledger::{ChargeRequest, Ledger};

pub fn router(ledger: Arc<Ledger>) -> Router {
    Router::new()
        .route("/charges", post(create_charge).get(list_charges))
        .with_state(ledger)
}

async fn create_charge(
    State(ledger): State<Arc<Ledger>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    let (status, body) = match serde_json::from_slice::<ChargeRequest>(&body) {
        Ok(request) => {
            let answer = ledger.charge(key, request.clone());
            tracing::debug!(
                "charge {} for {} (key {}): {}",
                request.amount,
                request.customer,
                key.unwrap_or("none"),
                answer.0
            );
            answer
        }
        Err(e) => (
            400,
            json!({ "error": { "type": "invalid_request_error", "message": e.to_string() } }),
        ),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body))
}

async fn list_charges(State(ledger): State<Arc<Ledger>>) -> Json<Value> {
    let charges = ledger.charges();
    Json(json!({ "count": charges.len(), "charges": charges }))
}
