//! Handlers: what CDC does with each change. A handler registers for one
//! table, or for every change (a catch-all, like koyo's
//! `koyo_handle_all_replication`); the [`Dispatcher`] calls, for each
//! change, that table's handlers and then the catch-alls.
//!
//! A handler that fails is logged with the change it failed on, and the
//! rest go on: one bad row does not stop the stream. A failed change is not
//! retried; a handler that must not miss one retries inside itself.
//! Handlers may see a change again after a crash (delivery is at least
//! once), so their effects should be idempotent (see `ride_stats`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use super::change::Change;
use crate::error::Result;

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

pub trait Handler: Send + Sync {
    /// For log lines.
    fn name(&self) -> &str;
    fn handle<'a>(&'a self, change: &'a Change) -> HandlerFuture<'a>;
}

#[derive(Default)]
pub struct Dispatcher {
    by_table: HashMap<(String, String), Vec<Arc<dyn Handler>>>,
    catch_all: Vec<Arc<dyn Handler>>,
}

impl Dispatcher {
    pub fn new() -> Dispatcher {
        Dispatcher::default()
    }

    /// Calls `handler` for changes of `schema.table`.
    pub fn on_table(mut self, schema: &str, table: &str, handler: Arc<dyn Handler>) -> Self {
        self.by_table
            .entry((schema.to_string(), table.to_string()))
            .or_default()
            .push(handler);
        self
    }

    /// Calls `handler` for every change.
    pub fn on_every(mut self, handler: Arc<dyn Handler>) -> Self {
        self.catch_all.push(handler);
        self
    }

    /// Runs the change's handlers; returns how many failed (each is logged).
    pub async fn dispatch(&self, change: &Change) -> usize {
        let table = (change.schema.clone(), change.table.clone());
        let handlers = self.by_table.get(&table).into_iter().flatten();
        let mut failures = 0;
        for handler in handlers.chain(&self.catch_all) {
            if let Err(e) = handler.handle(change).await {
                failures += 1;
                tracing::error!(
                    "cdc: handler {} failed on {} of {}.{} at {} (continuing): {e}",
                    handler.name(),
                    change.kind.as_str(),
                    change.schema,
                    change.table,
                    change.lsn
                );
            }
        }
        failures
    }
}

/// The demo's catch-all: counts changes by table and kind, for the summary
/// line CDC prints after each batch.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// `table kind` -> changes seen so far.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Handler for Tally {
    fn name(&self) -> &str {
        "tally"
    }

    fn handle<'a>(&'a self, change: &'a Change) -> HandlerFuture<'a> {
        let key = format!("{} {}", change.table, change.kind.as_str());
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
        Box::pin(async { Ok(()) })
    }
}
