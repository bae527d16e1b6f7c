//! How a ride row becomes the JSON the API returns, shared by the `201` of
//! `POST /rides` (stored with the idempotency key) and by `GET /rides/:id`.

use serde_json::{json, Value};
use tokio_postgres::Row;

use crate::error::Result;

/// The columns [`ride_json`] reads, from a table aliased `r`, starting at
/// column 0. NUMERIC columns are cast to float8 in SQL.
pub const RIDE_COLUMNS: &str = "r.id, r.user_id, r.distance::float8, \
     r.origin_lat::float8, r.origin_lon::float8, r.target_lat::float8, r.target_lon::float8, \
     r.charge_id, to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// How many columns [`RIDE_COLUMNS`] is; the caller's own columns follow.
pub const RIDE_COLUMN_COUNT: usize = 9;

/// The ride in `row`, or `None` when its id is NULL (an outer join found none).
pub fn ride_json(row: &Row) -> Result<Option<Value>> {
    let Some(id) = row.try_get::<_, Option<i64>>(0)? else {
        return Ok(None);
    };
    Ok(Some(json!({
        "id": id,
        "user_id": row.try_get::<_, i64>(1)?,
        "distance_km": row.try_get::<_, f64>(2)?,
        "origin_lat": row.try_get::<_, f64>(3)?,
        "origin_lon": row.try_get::<_, f64>(4)?,
        "target_lat": row.try_get::<_, f64>(5)?,
        "target_lon": row.try_get::<_, f64>(6)?,
        "charge_id": row.try_get::<_, Option<String>>(7)?,
        "created_at": row.try_get::<_, String>(8)?,
    })))
}
