//! The simulator's status line (`simulate --status-every N`): every N
//! seconds, one line that says how the demo is doing, so the terminal can be
//! watched while the per-event logs stay at debug level.
//!
//! Where each number comes from:
//! - rides created, declined, given up, and failed attempts retried: the
//!   simulator's own counters ([`Summary`]), from the API's answers;
//! - stale reads: the simulator's own check, reading each ride back at once
//!   (a 404 or a wrong ride is stale);
//! - reads on replicas and on the primary, and how many of the primary's
//!   fell back to it (no replica caught up in time, or none healthy):
//!   causeway's `causeway_statements_total` at its metrics URL, since the
//!   simulator started, counted as the dashboard does ([`prometheus`]);
//! - read-wait p99: causeway's `causeway_read_wait_seconds` histogram, over
//!   the reads that waited since the previous line, estimated as
//!   Prometheus' `histogram_quantile` does;
//! - consumer lag and CDC lag: [`lag`] (Redis and Postgres).
//!
//! A source that does not answer within [`SOURCE_TIMEOUT`] shows as `?` on
//! that line (the first failure of each is logged at warn, later ones at
//! debug): the line never waits on a stuck source, and never guesses.

pub mod lag;
pub mod line;
pub mod prometheus;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::log::stream::LogStream;
use crate::simulate::Summary;
pub use line::{Lag, Reads, Status};
use prometheus::ProxyCounts;

/// Where causeway serves metrics unless configured (`proxy.toml`'s).
pub const DEFAULT_METRICS_URL: &str = "http://127.0.0.1:9187/metrics";
/// How long one source may take before its number is `?`.
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct StatusConfig {
    /// Between lines.
    pub every: Duration,
    /// causeway's Prometheus endpoint.
    pub metrics_url: String,
    /// The log consumers whose lag to show, by name.
    pub consumers: Vec<String>,
    /// The CDC slot.
    pub slot: String,
}

/// Gathers the numbers of one line at a time.
pub struct Reporter {
    config: StatusConfig,
    pool: Pool,
    stream: LogStream,
    http: reqwest::Client,
    started: Instant,
    /// causeway's counts when the simulator started (reads count from here).
    baseline: Option<ProxyCounts>,
    /// causeway's counts at the previous line (the p99 window starts here).
    previous: Option<ProxyCounts>,
    /// Sources whose failure was logged at warn already.
    warned: BTreeSet<&'static str>,
}

impl Reporter {
    /// `pool` goes through causeway; `stream` is the log the consumers read.
    pub fn new(config: StatusConfig, pool: Pool, stream: LogStream) -> Reporter {
        let http = reqwest::Client::builder()
            .timeout(SOURCE_TIMEOUT)
            .build()
            .unwrap_or_default();
        Reporter {
            config,
            pool,
            stream,
            http,
            started: Instant::now(),
            baseline: None,
            previous: None,
            warned: BTreeSet::new(),
        }
    }

    /// Notes causeway's counts now, so the first line counts from here.
    pub async fn start(&mut self) {
        self.started = Instant::now();
        let counts = self.scrape().await;
        self.previous = counts.clone();
        self.baseline = counts;
    }

    /// The line for `rides`, the simulator's counters now.
    pub async fn sample(&mut self, rides: &Summary) -> Status {
        let counts = self.scrape().await;
        let (reads, read_wait_p99) = match &counts {
            Some(now) => {
                let since_start = self.baseline.as_ref().map_or(now.clone(), |b| now.since(b));
                let window = self.previous.as_ref().map_or(now.clone(), |p| now.since(p));
                let reads = Reads {
                    replica: since_start.replica_reads as u64,
                    primary: since_start.primary_reads as u64,
                    fell_back: since_start.fell_back as u64,
                };
                let p99 = window.read_wait.quantile(0.99).map(Duration::from_secs_f64);
                (Some(reads), Some(p99))
            }
            None => (None, None),
        };
        if let Some(now) = counts {
            self.baseline.get_or_insert_with(|| now.clone());
            self.previous = Some(now);
        }
        let consumers = lag::consumers(&self.pool, &self.stream, &self.config.consumers);
        let consumer_lag = within(&mut self.warned, "consumer lag", consumers).await;
        let cdc = lag::cdc(&self.pool, &self.config.slot);
        let cdc_lag_bytes = within(&mut self.warned, "cdc lag", cdc).await.flatten();
        Status {
            elapsed: self.started.elapsed(),
            rides: rides.clone(),
            reads,
            read_wait_p99,
            consumer_lag,
            cdc_lag_bytes,
        }
    }

    /// causeway's counts now, if its metrics answer.
    async fn scrape(&mut self) -> Option<ProxyCounts> {
        let url = &self.config.metrics_url;
        let fetch = async {
            let response = self.http.get(url).send().await?.error_for_status()?;
            response.text().await
        };
        let fetch = async { fetch.await.map_err(|e| Error::Other(format!("{url}: {e}"))) };
        let text = within(&mut self.warned, "causeway metrics", fetch).await?;
        Some(ProxyCounts::parse(&text))
    }
}

/// `source`'s answer, or `None` if it fails or takes too long; the first
/// failure of each source is a warning (`warned` remembers which).
async fn within<T>(
    warned: &mut BTreeSet<&'static str>,
    source: &'static str,
    answer: impl Future<Output = Result<T>>,
) -> Option<T> {
    let why = match tokio::time::timeout(SOURCE_TIMEOUT, answer).await {
        Ok(Ok(value)) => return Some(value),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {SOURCE_TIMEOUT:?}"),
    };
    if warned.insert(source) {
        tracing::warn!("status: {source}: {why} (shown as ?)");
    } else {
        tracing::debug!("status: {source}: {why}");
    }
    None
}

/// Prints a line every `config.every` until `shutdown`, with the simulator's
/// counters from `rides`.
pub async fn run(
    mut reporter: Reporter,
    rides: watch::Receiver<Summary>,
    mut shutdown: watch::Receiver<bool>,
) {
    reporter.start().await;
    let every = reporter.config.every.max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let summary = rides.borrow().clone();
        println!("{}", reporter.sample(&summary).await);
    }
}
