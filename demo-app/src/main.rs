//! `demo-app`: one binary, one subcommand per process of the demo.
//! See `lib.rs` for the modules and `--help` for the flags.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use demo_app::api::{self, ApiContext};
use demo_app::atomic::{Services, DEFAULT_LOCK_TIMEOUT};
use demo_app::db::{Causality, Db, DEFAULT_DATABASE_URL};
use demo_app::jobs::{self, completer, enqueuer, queue::JobQueue, reaper};
use demo_app::payments::client::DEFAULT_PAYMENTS_URL;
use demo_app::payments::{self, Ledger, PaymentsClient};
use demo_app::servers::{ServerNames, DEFAULT_SERVERS};
use demo_app::simulate::{self, SimulatorConfig, DEFAULT_API_URL};
use demo_app::{migrate, shutdown};

#[derive(Parser)]
#[command(name = "demo-app", version, about = "Rocket Rides through causeway")]
struct Cli {
    /// Where to connect: causeway, never a server directly.
    #[arg(long, global = true, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Names of the servers behind causeway, by port, for log lines.
    #[arg(long, global = true, env = "DEMO_SERVERS", default_value = DEFAULT_SERVERS)]
    servers: ServerNames,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the schema and the seed users (idempotent).
    Migrate,
    /// The rides API.
    Api(ApiArgs),
    /// The fake payment service.
    Payments(PaymentsArgs),
    /// Move staged jobs to the job queue.
    Enqueuer(EnqueuerArgs),
    /// Finish requests their clients abandoned.
    Completer(CompleterArgs),
    /// Delete old idempotency keys.
    Reaper(ReaperArgs),
    /// Create rides and read them back; count stale reads.
    #[command(alias = "simulator")]
    Simulate(SimulateArgs),
}

#[derive(Args)]
struct ApiArgs {
    #[arg(long, env = "PORT", default_value_t = 5000)]
    port: u16,
    #[arg(long, env = "PAYMENTS_URL", default_value = DEFAULT_PAYMENTS_URL)]
    payments_url: String,
    /// How long a running request keeps its idempotency key locked.
    #[arg(long, env = "LOCK_TIMEOUT_SECS", default_value_t = DEFAULT_LOCK_TIMEOUT.as_secs())]
    lock_timeout_secs: u64,
    /// session-per-user, or client-id once causeway supports causeway.client_id.
    #[arg(long, env = "DEMO_CAUSALITY", default_value = "session-per-user")]
    causality: Causality,
    /// Ignore the X-Inject-Failure header.
    #[arg(long)]
    no_failure_injection: bool,
}

#[derive(Args)]
struct PaymentsArgs {
    #[arg(long, env = "PAYMENTS_PORT", default_value_t = 5001)]
    port: u16,
    /// Share of requests that fail (half before recording the charge, half after).
    #[arg(long, env = "PAYMENTS_FAILURE_RATE", default_value_t = 0.1)]
    failure_rate: f64,
}

#[derive(Args)]
struct Interval {
    /// Pause between passes that found nothing to do.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// One pass, then exit.
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
struct EnqueuerArgs {
    #[command(flatten)]
    interval: Interval,
    #[arg(long, default_value_t = enqueuer::DEFAULT_BATCH)]
    batch: i64,
    /// Push jobs onto a Redis list; without it jobs are only logged.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
}

#[derive(Args)]
struct CompleterArgs {
    #[command(flatten)]
    interval: Interval,
    #[arg(long, env = "PAYMENTS_URL", default_value = DEFAULT_PAYMENTS_URL)]
    payments_url: String,
    /// Leave keys younger than this to their clients.
    #[arg(long, env = "COMPLETER_GRACE_SECS", default_value_t = 300)]
    grace_secs: u64,
    /// Skip keys that ran more recently than this.
    #[arg(long, default_value_t = 60)]
    rerun_after_secs: u64,
    #[arg(long, env = "LOCK_TIMEOUT_SECS", default_value_t = DEFAULT_LOCK_TIMEOUT.as_secs())]
    lock_timeout_secs: u64,
}

#[derive(Args)]
struct ReaperArgs {
    #[command(flatten)]
    interval: Interval,
    /// Delete keys older than this.
    #[arg(long, env = "REAPER_MAX_AGE_SECS", default_value_t = reaper::DEFAULT_MAX_AGE.as_secs())]
    max_age_secs: u64,
    #[arg(long, default_value_t = reaper::DEFAULT_BATCH)]
    batch: i64,
}

#[derive(Args)]
struct SimulateArgs {
    #[arg(long, env = "API_URL", default_value = DEFAULT_API_URL)]
    api_url: String,
    /// Rides to simulate; forever without it.
    #[arg(long, alias = "iterations")]
    count: Option<u64>,
    /// Share of rides whose first attempt asks the API to fail.
    #[arg(long, default_value_t = 0.5)]
    failure_share: f64,
    /// Share of failed rides left for the completer instead of retried.
    #[arg(long, default_value_t = 0.0)]
    abandon_rate: f64,
    /// Print the summary every N rides.
    #[arg(long, default_value_t = 100)]
    report_every: u64,
    /// Comma-separated emails; the seed users by default.
    #[arg(long, value_delimiter = ',')]
    users: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let stop = shutdown::on_signal();
    let db = || Db::new(&cli.database_url, Causality::default());
    match cli.command {
        Command::Migrate => {
            let applied = migrate::migrate(db()?.shared()).await?;
            println!("migrate: {applied} migration(s) applied");
        }
        Command::Api(args) => {
            let context = Arc::new(ApiContext {
                db: Db::new(&cli.database_url, args.causality)?,
                payments: PaymentsClient::new(&args.payments_url),
                servers: cli.servers,
                lock_timeout: Duration::from_secs(args.lock_timeout_secs),
                allow_failure_injection: !args.no_failure_injection,
            });
            let listener = bind(args.port).await?;
            tracing::info!("api listening on {}", listener.local_addr()?);
            api::serve(listener, context, shutdown::requested(stop)).await?;
        }
        Command::Payments(args) => {
            let ledger = Arc::new(Ledger::new(args.failure_rate));
            let listener = bind(args.port).await?;
            tracing::info!(
                "payments listening on {} (failure rate {})",
                listener.local_addr()?,
                args.failure_rate
            );
            axum::serve(listener, payments::server::router(ledger))
                .with_graceful_shutdown(shutdown::requested(stop))
                .await?;
        }
        Command::Enqueuer(args) => {
            let db = db()?;
            let queue = JobQueue::new(args.redis_url.as_deref());
            let pass = || enqueuer::run_once(db.shared(), &queue, args.batch);
            repeat("enqueuer", &args.interval, stop, pass).await?;
        }
        Command::Completer(args) => {
            let db = db()?;
            let services = Services {
                pool: db.shared().clone(),
                payments: PaymentsClient::new(&args.payments_url),
                lock_timeout: Duration::from_secs(args.lock_timeout_secs),
            };
            let config = completer::CompleterConfig {
                grace: Duration::from_secs(args.grace_secs),
                rerun_after: Duration::from_secs(args.rerun_after_secs),
                ..Default::default()
            };
            let pass = || completer::run_once(&services, &config);
            repeat("completer", &args.interval, stop, pass).await?;
        }
        Command::Reaper(args) => {
            let db = db()?;
            let max_age = Duration::from_secs(args.max_age_secs);
            let pass = || reaper::run_once(db.shared(), max_age, args.batch);
            repeat("reaper", &args.interval, stop, pass).await?;
        }
        Command::Simulate(args) => {
            let mut config = SimulatorConfig {
                api_url: args.api_url.trim_end_matches('/').to_string(),
                iterations: args.count,
                failure_share: args.failure_share,
                abandon_rate: args.abandon_rate,
                report_every: args.report_every,
                ..Default::default()
            };
            if !args.users.is_empty() {
                config.users = args.users;
            }
            let summary = simulate::run(&config, stop).await;
            if summary.stale_reads > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// `--once`: one pass; else [`jobs::every`] until shutdown.
async fn repeat<F, Fut>(
    name: &str,
    interval: &Interval,
    stop: tokio::sync::watch::Receiver<bool>,
    mut pass: F,
) -> Result<(), demo_app::error::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = demo_app::error::Result<usize>>,
{
    if interval.once {
        let n = pass().await?;
        println!("{name}: {n}");
        return Ok(());
    }
    jobs::every(
        name,
        Duration::from_millis(interval.interval_ms),
        stop,
        pass,
    )
    .await;
    Ok(())
}
