//! The logical replication slot, through causeway's SQL interface.
//!
//! `pg_create_logical_replication_slot`, `pg_logical_slot_peek_changes` and
//! `pg_replication_slot_advance` write (they move or create a slot), so
//! causeway sends them to the primary, where the slot lives. A replica has
//! slots of its own: causeway sends reads of `pg_replication_slots` to the
//! primary too (the primary's live state), and the query says so with the
//! hint `/* causeway: primary */` as well.
//!
//! The slot uses `test_decoding`, the output plugin built into Postgres
//! (`decode.rs` parses its text). Changes are *peeked* (left in the slot),
//! handled, and only then consumed with `pg_replication_slot_advance`, so a
//! crash in between delivers them again: at least once.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::change::{Lsn, SlotRow};
use crate::error::{Error, Result};

pub const DEFAULT_SLOT: &str = "demo_app_cdc";
pub const PLUGIN: &str = "test_decoding";

/// What `pg_replication_slots` says about a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_type: String,
    pub plugin: Option<String>,
    /// Whether it decodes the database this connection is in.
    pub this_database: bool,
    pub active: bool,
}

pub async fn find(conn: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = conn
        .query_opt(
            "/* causeway: primary */
             SELECT slot_type::text, plugin::text, database = current_database(), active
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    row.map(|row| {
        Ok(SlotInfo {
            slot_type: row.try_get(0)?,
            plugin: row.try_get(1)?,
            this_database: row.try_get::<_, Option<bool>>(2)?.unwrap_or(false),
            active: row.try_get(3)?,
        })
    })
    .transpose()
}

/// Creates the slot if it is missing; `true` if this call created it. A
/// slot of that name that is not a `test_decoding` slot of this database is
/// an error that says so.
pub async fn ensure(conn: &Client, slot: &str) -> Result<bool> {
    if let Some(info) = find(conn, slot).await? {
        return usable(slot, &info).map(|()| false);
    }
    let created = conn
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)",
            &[&slot, &PLUGIN],
        )
        .await;
    match created {
        Ok(row) => {
            let lsn: String = row.try_get(0)?;
            tracing::info!("cdc: created logical replication slot {slot} ({PLUGIN}) at {lsn}");
            Ok(true)
        }
        // Another process created it in the meantime.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether a found slot is one this app can read.
pub fn usable(slot: &str, info: &SlotInfo) -> Result<()> {
    if info.slot_type != "logical" {
        return Err(Error::Other(format!(
            "slot {slot} is a {} slot, not logical: pick another name (--slot)",
            info.slot_type
        )));
    }
    if info.plugin.as_deref() != Some(PLUGIN) {
        return Err(Error::Other(format!(
            "slot {slot} uses plugin {:?}, not {PLUGIN}: drop it \
             (SELECT pg_drop_replication_slot('{slot}')) or pick another name (--slot)",
            info.plugin.as_deref().unwrap_or("none")
        )));
    }
    if !info.this_database {
        return Err(Error::Other(format!(
            "slot {slot} decodes another database: pick another name (--slot)"
        )));
    }
    Ok(())
}

/// Up to about `max_changes` rows (whole transactions), left in the slot.
pub async fn peek(conn: &Client, slot: &str, max_changes: i32) -> Result<Vec<SlotRow>> {
    let rows = conn
        .query(
            "SELECT lsn::text, xid::text, data
               FROM pg_logical_slot_peek_changes($1, NULL, $2,
                    'skip-empty-xacts', '1', 'include-xids', '1')",
            &[&slot, &max_changes],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let lsn: String = row.try_get(0)?;
            let xid: String = row.try_get(1)?;
            Ok(SlotRow {
                lsn: lsn.parse().map_err(Error::Other)?,
                xid: xid
                    .parse()
                    .map_err(|_| Error::Other(format!("bad xid {xid:?}")))?,
                data: row.try_get(2)?,
            })
        })
        .collect()
}

/// Consumes everything up to and including the transaction that committed at `upto`.
pub async fn consume(conn: &Client, slot: &str, upto: Lsn) -> Result<()> {
    conn.query_one(
        "SELECT end_lsn FROM pg_replication_slot_advance($1, $2::text::pg_lsn)",
        &[&slot, &upto.to_string()],
    )
    .await?;
    Ok(())
}

/// How many rows wait in the slot (BEGIN and COMMIT rows included), up to `limit`.
pub async fn pending(conn: &Client, slot: &str, limit: i32) -> Result<i64> {
    Ok(conn
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_changes($1, NULL, $2,
                    'skip-empty-xacts', '1')",
            &[&slot, &limit],
        )
        .await?
        .try_get(0)?)
}
