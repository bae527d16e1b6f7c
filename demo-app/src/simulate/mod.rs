//! `demo-app simulate`: traffic against the API, and the proof that reads
//! are never stale.
//!
//! Each iteration, as a random user: create a ride with a fresh random
//! idempotency key (a share of first attempts ask the API to fail after a
//! recovery point), retry failures with the same key, and at once read the
//! ride back with `GET /rides/{id}`. A 404 there is a stale read: the API
//! would have missed a write the same user just made. The API names the
//! server that answered (`Served-By`), so reads are counted per server.

pub mod summary;

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::rides::{INJECT_FAILURE, SERVED_BY};
use crate::migrate::SEED_USERS;
pub use summary::Summary;

/// Where `demo-app api` listens by default.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:5000";

#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    pub api_url: String,
    /// Stop after this many rides; `None`: until shutdown.
    pub iterations: Option<u64>,
    /// Share of rides whose first attempt asks for an injected failure.
    pub failure_share: f64,
    /// Share of failed rides left unretried, for the completer to finish.
    pub abandon_rate: f64,
    pub users: Vec<String>,
    /// Print the summary every this many rides (0: only at the end).
    pub report_every: u64,
    pub max_attempts: u32,
    pub retry_delay: Duration,
    /// Pause between rides.
    pub pause: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            api_url: DEFAULT_API_URL.into(),
            iterations: None,
            failure_share: 0.5,
            abandon_rate: 0.0,
            users: SEED_USERS
                .iter()
                .map(|(email, _)| email.to_string())
                .collect(),
            report_every: 100,
            max_attempts: 20,
            retry_delay: Duration::from_millis(20),
            pause: Duration::ZERO,
        }
    }
}

/// Runs until `iterations` or shutdown; returns the summary (for the
/// caller to print), having printed it every `report_every` rides.
pub async fn run(config: &SimulatorConfig, shutdown: watch::Receiver<bool>) -> Summary {
    run_watched(config, shutdown, &watch::Sender::new(Summary::default())).await
}

/// [`run`], publishing the summary to `progress` after every ride (for the
/// status line).
pub async fn run_watched(
    config: &SimulatorConfig,
    mut shutdown: watch::Receiver<bool>,
    progress: &watch::Sender<Summary>,
) -> Summary {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let mut summary = Summary::default();
    while config.iterations.is_none_or(|n| summary.rides < n) && !*shutdown.borrow() {
        ride(&http, config, &mut summary).await;
        progress.send_replace(summary.clone());
        if config.report_every > 0 && summary.rides % config.report_every == 0 {
            println!("{summary}");
        }
        if !config.pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(config.pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
    summary
}

/// The random choices of one iteration, made before any `.await`.
struct Plan {
    user: String,
    key: String,
    params: Value,
    inject: Option<&'static str>,
    abandon: bool,
}

fn plan(config: &SimulatorConfig) -> Option<Plan> {
    let mut rng = rand::thread_rng();
    let user = config.users.choose(&mut rng)?.clone();
    let key: String = (0..32)
        .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
        .collect();
    let (lat, lon): (f64, f64) = (rng.gen_range(-60.0..60.0), rng.gen_range(-170.0..170.0));
    let params = json!({
        "origin_lat": lat,
        "origin_lon": lon,
        "target_lat": lat + rng.gen_range(-0.5..0.5),
        "target_lon": lon + rng.gen_range(-0.5..0.5),
    });
    let points = ["started", "ride_created", "charge_created"];
    let inject = rng
        .gen_bool(config.failure_share.clamp(0.0, 1.0))
        .then(|| points.choose(&mut rng).copied())
        .flatten();
    let abandon = rng.gen_bool(config.abandon_rate.clamp(0.0, 1.0));
    Some(Plan {
        user,
        key,
        params,
        inject,
        abandon,
    })
}

/// One iteration: create (with retries), then read back.
async fn ride(http: &reqwest::Client, config: &SimulatorConfig, summary: &mut Summary) {
    summary.rides += 1;
    let Some(Plan {
        user,
        key,
        params,
        mut inject,
        abandon,
    }) = plan(config)
    else {
        summary.gave_up += 1;
        return;
    };
    for attempt in 1..=config.max_attempts.max(1) {
        let mut request = http
            .post(format!("{}/rides", config.api_url))
            .header("Authorization", &user)
            .header("Idempotency-Key", &key)
            .json(&params);
        if let Some(point) = inject.take() {
            request = request.header(INJECT_FAILURE, point);
        }
        let (status, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
            Err(e) => {
                tracing::warn!("simulator: POST /rides: {e}");
                (0, Value::Null)
            }
        };
        *summary.requests_by_status.entry(status).or_default() += 1;
        match status {
            201 => {
                summary.created += 1;
                return read_back(http, config, &user, &body, summary).await;
            }
            402 => {
                summary.declined += 1;
                return;
            }
            0 | 409 | 500..=599 if abandon => {
                summary.abandoned += 1;
                return;
            }
            0 | 409 | 500..=599 => {
                tokio::time::sleep(config.retry_delay * attempt.min(10)).await;
            }
            _ => {
                tracing::warn!("simulator: POST /rides as {user}: {status} {body}");
                summary.gave_up += 1;
                return;
            }
        }
    }
    summary.gave_up += 1;
}

/// `GET /rides/{id}` right after the 201; a 404 is a stale read.
async fn read_back(
    http: &reqwest::Client,
    config: &SimulatorConfig,
    user: &str,
    created: &Value,
    summary: &mut Summary,
) {
    let Some(id) = created["ride"]["id"].as_i64() else {
        summary.read_errors += 1;
        return;
    };
    let response = http
        .get(format!("{}/rides/{id}", config.api_url))
        .header("Authorization", user)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!("simulator: GET /rides/{id}: {e}");
            summary.read_errors += 1;
            return;
        }
    };
    let status = response.status().as_u16();
    let server = response
        .headers()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    match status {
        200 if body["ride"]["id"].as_i64() == Some(id) => {
            *summary.reads_by_server.entry(server).or_default() += 1;
        }
        200 | 404 => {
            tracing::error!(
                "simulator: STALE READ of ride {id} from server '{server}': {status} {body}"
            );
            summary.stale_reads += 1;
        }
        _ => {
            tracing::warn!("simulator: GET /rides/{id}: {status} {body}");
            summary.read_errors += 1;
        }
    }
}
