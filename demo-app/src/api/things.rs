//! `GET /things/{id}` and `POST /things/{id}`: the scaling-postgres seed's
//! "sticky reads within one request", which causeway gives for free.
//!
//! `POST` runs on one connection, named for the user: it reads the thing
//! three times, changes its colour, and reads it once more, logging which
//! server answered each. The reads before the write may go to a replica; the
//! read after it is on a session causeway knows has written, so it sees the
//! new colour (from the primary, or a replica that has replayed it). The
//! response lists every read, so a client can see the same.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use deadpool_postgres::Object;
use serde_json::{json, Value};

use super::auth::authenticate;
use super::ApiContext;
use crate::error::Error;
use crate::response::ApiResponse;

/// Reads before the write in `POST`.
const READS_BEFORE_WRITE: usize = 3;

pub async fn show(
    State(context): State<Arc<ApiContext>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResponse {
    let user = match authenticate(&context, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<i64>() else {
        return ApiResponse::error(404, "Thing not found.");
    };
    let result = async {
        let conn = context.db.for_user(&user.email)?.get().await?;
        read(&context, &conn, id, "read").await
    }
    .await;
    match result {
        Ok(read) if read["color"].is_null() => ApiResponse::error(404, "Thing not found."),
        Ok(read) => ApiResponse::new(
            200,
            json!({ "id": id, "color": read["color"], "reads": [read] }),
        ),
        Err(e) => internal(e),
    }
}

pub async fn update(
    State(context): State<Arc<ApiContext>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResponse {
    let user = match authenticate(&context, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<i64>() else {
        return ApiResponse::error(404, "Thing not found.");
    };
    let color = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["color"].as_str().map(str::to_string))
        .filter(|c| !c.is_empty() && c.len() <= 50);
    let Some(color) = color else {
        return ApiResponse::error(422, "Please specify a \"color\" of 1 to 50 characters.");
    };
    let result = async {
        let conn = context.db.for_user(&user.email)?.get().await?;
        let mut reads = Vec::new();
        for i in 1..=READS_BEFORE_WRITE {
            reads.push(read(&context, &conn, id, &format!("read {i} before the write")).await?);
        }
        let updated = conn
            .execute(
                "UPDATE things SET color = $2, updated_at = now() WHERE id = $1",
                &[&id, &color],
            )
            .await?;
        tracing::debug!("Thing {id}: wrote color {color:?}");
        reads.push(read(&context, &conn, id, "read after the write").await?);
        Ok::<_, Error>((updated, reads))
    }
    .await;
    match result {
        Ok((0, _)) => ApiResponse::error(404, "Thing not found."),
        Ok((_, reads)) => {
            let color = reads.last().map_or(Value::Null, |r| r["color"].clone());
            ApiResponse::new(200, json!({ "id": id, "color": color, "reads": reads }))
        }
        Err(e) => internal(e),
    }
}

/// One read of the thing's colour and of the server that answered, logged.
async fn read(context: &ApiContext, conn: &Object, id: i64, step: &str) -> Result<Value, Error> {
    let row = conn
        .query_one(
            "SELECT t.color, inet_server_port(), pg_is_in_recovery()
               FROM (SELECT 1) AS one LEFT JOIN things t ON t.id = $1",
            &[&id],
        )
        .await?;
    let color: Option<String> = row.try_get(0)?;
    let server = context.servers.name_of(row.try_get(1)?, row.try_get(2)?);
    tracing::debug!("Thing {id}: {step} from server '{server}'");
    Ok(json!({ "step": step, "server": server, "color": color }))
}

fn internal(error: Error) -> ApiResponse {
    tracing::warn!("things: {error}");
    ApiResponse::error(500, "Internal server error.")
}
