//! `Authorization: <email>`: the demo's stand-in for real authentication.

use axum::http::HeaderMap;

use super::ApiContext;
use crate::response::ApiResponse;
use crate::users::{self, User};

/// The user named by the `Authorization` header, or the 401 (or 500) to send.
pub async fn authenticate(context: &ApiContext, headers: &HeaderMap) -> Result<User, ApiResponse> {
    let email = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| {
            ApiResponse::error(
                401,
                "Please specify credentials in the Authorization header.",
            )
        })?;
    let found = match context.db.for_user(email) {
        Ok(db) => users::find_by_email(&db, email).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(ApiResponse::error(
            401,
            "Could not authenticate. Please check your credentials.",
        )),
        Err(e) => {
            tracing::warn!("looking up user {email:?}: {e}");
            Err(ApiResponse::error(500, "Internal server error."))
        }
    }
}
