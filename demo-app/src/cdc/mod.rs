//! `demo-app cdc`: change-data capture from a logical replication slot
//! (seed koyo-postgres-replication), every call through causeway.
//!
//! A pass: make sure the slot exists ([`slot::ensure`]), peek a batch of
//! whole transactions, turn them into typed [`Change`]s ([`change`],
//! [`decode`], [`datum`]), log each as one JSON line (at debug level),
//! dispatch each to its table's handlers and the catch-alls ([`handler`]),
//! and only then consume the batch from the slot.
//!
//! # Guarantee: at least once
//! Nothing is consumed before its handlers ran, so a crash, a lost
//! connection or a failed consume delivers the batch again on the next
//! pass: no change is lost, and some may be handled twice. Handlers make
//! their effects idempotent ([`ride_stats`] by LSN). A handler that fails
//! on a change is logged and skipped for that change; later ones go on.
//!
//! A lost connection (causeway or the primary restarting) fails the pass;
//! [`Cdc::run`] waits with backoff and the next pass gets a new connection
//! from the pool.

pub mod change;
pub mod datum;
pub mod decode;
pub mod handler;
pub mod ride_stats;
pub mod slot;

use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::error::Result;
pub use change::{Change, Lsn};
pub use decode::Kind;
pub use handler::{Dispatcher, Handler};

#[derive(Clone, Debug)]
pub struct CdcConfig {
    pub slot: String,
    /// About how many rows a batch holds (whole transactions, so it may be more).
    pub batch: i32,
    /// Wait between passes that found nothing.
    pub idle: Duration,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            slot: slot::DEFAULT_SLOT.to_string(),
            batch: 1000,
            idle: Duration::from_millis(500),
        }
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub changes: usize,
    pub handler_failures: usize,
    pub undecoded: usize,
    /// Where the slot was consumed up to, if anywhere.
    pub consumed_to: Option<Lsn>,
}

pub struct Cdc {
    pool: Pool,
    config: CdcConfig,
    dispatcher: Dispatcher,
    /// Identity columns of the tables seen so far.
    key_columns: Mutex<change::KeyColumns>,
}

impl Cdc {
    pub fn new(pool: Pool, config: CdcConfig, dispatcher: Dispatcher) -> Cdc {
        Cdc {
            pool,
            config,
            dispatcher,
            key_columns: Mutex::new(change::KeyColumns::new()),
        }
    }

    pub fn config(&self) -> &CdcConfig {
        &self.config
    }

    /// One pass (module docs).
    pub async fn run_once(&self) -> Result<Pass> {
        let conn = self.pool.get().await?;
        slot::ensure(&conn, &self.config.slot).await?;
        let rows = slot::peek(&conn, &self.config.slot, self.config.batch).await?;
        if rows.is_empty() {
            return Ok(Pass::default());
        }
        self.learn_keys(&conn, change::tables_in(&rows)).await?;
        let batch = {
            let keys = self.key_columns.lock().unwrap_or_else(|p| p.into_inner());
            change::assemble(rows, &keys)
        };
        let mut pass = Pass {
            changes: batch.changes.len(),
            undecoded: batch.undecoded.len(),
            ..Pass::default()
        };
        for (row, why) in &batch.undecoded {
            tracing::error!(
                "cdc: skipping a row at {} (xid {}): {why}",
                row.lsn,
                row.xid
            );
        }
        for change in &batch.changes {
            tracing::debug!("cdc event {}", change.to_json());
            pass.handler_failures += self.dispatcher.dispatch(change).await;
        }
        if let Some(upto) = batch.last_commit {
            slot::consume(&conn, &self.config.slot, upto).await?;
            pass.consumed_to = Some(upto);
        }
        Ok(pass)
    }

    /// Passes until `shutdown`; failures wait with backoff, idle passes `idle`.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>, on_pass: impl Fn(&Pass)) {
        tracing::info!("cdc: reading slot {} through causeway", self.config.slot);
        let mut backoff = Backoff::default();
        while !*shutdown.borrow() {
            let wait = match self.run_once().await {
                Ok(pass) => {
                    backoff.reset();
                    if pass.changes > 0 || pass.undecoded > 0 {
                        on_pass(&pass);
                        continue;
                    }
                    self.config.idle
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!("cdc: {e}; retrying in {delay:?}");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Looks up the identity columns of tables not seen before.
    async fn learn_keys(&self, conn: &Object, tables: Vec<(String, String)>) -> Result<()> {
        for table in tables {
            let known = self
                .key_columns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&table);
            if known {
                continue;
            }
            let columns = key_columns(conn, &table.0, &table.1).await?;
            self.key_columns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(table, columns);
        }
        Ok(())
    }
}

/// The replica identity (else primary key) columns of `schema.table`, in
/// index order; none if it has neither or no longer exists. Asked of the
/// primary: a table just created may not have reached a replica yet.
async fn key_columns(conn: &Object, schema: &str, table: &str) -> Result<Vec<String>> {
    let rows = conn
        .query(
            "/* causeway: primary */
             WITH idx AS (
                 SELECT i.indrelid, i.indkey FROM pg_index i
                  WHERE i.indrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2))
                    AND (i.indisreplident OR i.indisprimary)
                  ORDER BY i.indisreplident DESC LIMIT 1)
             SELECT a.attname::text
               FROM idx
              CROSS JOIN LATERAL unnest(idx.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_attribute a ON a.attrelid = idx.indrelid AND a.attnum = k.attnum
              ORDER BY k.n",
            &[&schema, &table],
        )
        .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<_, String>(0)?))
        .collect()
}
