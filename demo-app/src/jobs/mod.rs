//! The background processes: each does one pass in `run_once` (what tests
//! call) and [`every`] repeats it until shutdown (what the subcommand runs).
//!
//! - [`enqueuer`]: staged jobs out of Postgres into the job queue.
//! - [`completer`]: pushes abandoned idempotency keys to completion.
//! - [`reaper`]: deletes idempotency keys past their useful life.

pub mod completer;
pub mod enqueuer;
pub mod queue;
pub mod reaper;

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};

/// Runs `pass` every `interval` until `shutdown`; a pass that did something
/// runs the next at once (there may be more), an error is logged and waited
/// out (a failure the demo injected on purpose at debug level: it is
/// expected, and frequent).
pub async fn every<F, Fut>(
    name: &str,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize>>,
{
    tracing::info!("{name}: running every {interval:?}");
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wait = match pass().await {
            Ok(0) => interval,
            Ok(_) => Duration::ZERO,
            Err(e @ Error::Injected(_)) => {
                tracing::debug!("{name}: {e}");
                interval
            }
            Err(e) => {
                tracing::warn!("{name}: {e}");
                interval
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}
