//! `ApiResponse`: a status code and a JSON body, the shape in which the API
//! answers and in which a finished idempotency key stores its answer, so a
//! replay returns exactly what the first request returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The tail of every message about a failure the client should retry.
pub const RETRY: &str = "retry with the same key";

#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}

impl ApiResponse {
    pub fn new(status: u16, body: Value) -> ApiResponse {
        ApiResponse { status, body }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> ApiResponse {
        ApiResponse::new(status, json!({ "error": message.into() }))
    }
}

impl IntoResponse for ApiResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body)).into_response()
    }
}
