//! `demo-app`: one binary, one subcommand per process of the demo.
//! See `lib.rs` for the modules and `--help` for the flags.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use demo_app::all::{self, AllConfig};
use demo_app::api::{self, ApiContext};
use demo_app::atomic::DEFAULT_LOCK_TIMEOUT;
use demo_app::cdc::handler::Tally;
use demo_app::cdc::ride_stats::RideStats;
use demo_app::cdc::{slot, Cdc, CdcConfig, Dispatcher};
use demo_app::db::{Causality, Db, DEFAULT_DATABASE_URL};
use demo_app::diagnose::{self, DiagnoseConfig};
use demo_app::jobs::{self, completer, enqueuer, queue::JobQueue, reaper};
use demo_app::log::consumer::{self, Consumer};
use demo_app::log::stream::{LogStream, DEFAULT_MAXLEN, DEFAULT_STREAM};
use demo_app::log::streamer::{self, StreamerConfig};
use demo_app::payments::client::DEFAULT_PAYMENTS_URL;
use demo_app::payments::{self, Ledger, PaymentsClient};
use demo_app::servers::{ServerNames, DEFAULT_SERVERS};
use demo_app::simulate::{self, SimulatorConfig, Summary, DEFAULT_API_URL};
use demo_app::status::{self, Reporter, StatusConfig, DEFAULT_METRICS_URL};
use demo_app::{migrate, shutdown};
use tokio::sync::watch;

/// Where Redis is unless `REDIS_URL` says: `cluster/cluster.sh`'s default.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

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
    /// Move staged log records to the Redis stream.
    Streamer(StreamerArgs),
    /// Keep a running total of ride distance from the stream.
    Consumer(ConsumerArgs),
    /// Change-data capture from a logical replication slot.
    Cdc(CdcArgs),
    /// Check what the demo needs, and say what to fix.
    Diagnose(DiagnoseArgs),
    /// Every process of the demo in one terminal (Ctrl-C stops them all).
    All(AllArgs),
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
    /// How a user's connections share read-your-writes: client-id (one
    /// shared pool, SET causeway.client_id per checkout), session-per-user,
    /// or none (to see stale reads).
    #[arg(long, env = "DEMO_CAUSALITY", default_value = "client-id")]
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
    /// Pause between rides.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Print a status line every this many seconds (0: never): rides,
    /// reads by route, stale reads, read-wait p99, consumer and CDC lag.
    #[arg(long, default_value_t = 0)]
    status_every: u64,
    /// causeway's Prometheus endpoint, for the status line.
    #[arg(long, env = "CAUSEWAY_METRICS_URL", default_value = DEFAULT_METRICS_URL)]
    metrics_url: String,
    /// The log consumers whose lag the status line shows.
    #[arg(long, value_delimiter = ',', default_value = "a,b")]
    consumers: Vec<String>,
    /// The CDC slot whose lag the status line shows.
    #[arg(long, env = "CDC_SLOT", default_value = slot::DEFAULT_SLOT)]
    slot: String,
    #[command(flatten)]
    stream: StreamArgs,
    /// Write the final summary to this file instead of printing it
    /// (cluster/demo.sh prints it last, once everything has stopped).
    #[arg(long, env = "SIMULATOR_SUMMARY_FILE")]
    summary_file: Option<PathBuf>,
}

#[derive(Args)]
struct StreamArgs {
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis_url: String,
    /// The Redis stream of the log.
    #[arg(long, env = "LOG_STREAM", default_value = DEFAULT_STREAM)]
    stream: String,
    /// About how many entries the stream keeps (XADD MAXLEN ~).
    #[arg(long, env = "LOG_STREAM_MAXLEN", default_value_t = DEFAULT_MAXLEN)]
    maxlen: usize,
}

impl StreamArgs {
    fn open(&self) -> LogStream {
        LogStream::new(&self.redis_url, &self.stream, self.maxlen)
    }
}

#[derive(Args)]
struct StreamerArgs {
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    interval: Interval,
    #[arg(long, default_value_t = streamer::DEFAULT_BATCH)]
    batch: i64,
    /// Share of passes that fail after sending (their batch is sent twice).
    #[arg(long, env = "STREAMER_FAILURE_RATE", default_value_t = streamer::DEFAULT_FAILURE_RATE)]
    failure_rate: f64,
}

#[derive(Args)]
struct ConsumerArgs {
    /// The consumer's name: its checkpoint's key.
    name: String,
    #[command(flatten)]
    stream: StreamArgs,
    #[arg(long, default_value_t = consumer::DEFAULT_BATCH)]
    batch: usize,
    /// Share of passes that crash after computing, before committing.
    #[arg(long, env = "CONSUMER_CRASH_RATE", default_value_t = consumer::DEFAULT_CRASH_RATE)]
    crash_rate: f64,
}

#[derive(Args)]
struct CdcArgs {
    /// The logical replication slot (created if missing).
    #[arg(long, env = "CDC_SLOT", default_value = slot::DEFAULT_SLOT)]
    slot: String,
    /// About how many rows to read at a time.
    #[arg(long, default_value_t = 1000)]
    batch: i32,
    /// Pause when the slot is empty.
    #[arg(long, default_value_t = 500)]
    idle_ms: u64,
    /// One pass (creating the slot if missing), then exit.
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
struct DiagnoseArgs {
    /// Straight to the primary, bypassing causeway (optional).
    #[arg(long, env = "PRIMARY_URL")]
    primary_url: Option<String>,
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis_url: String,
    #[arg(long, env = "CDC_SLOT", default_value = slot::DEFAULT_SLOT)]
    slot: String,
}

#[derive(Args)]
struct AllArgs {
    /// The API's port.
    #[arg(long, env = "PORT", default_value_t = 5000)]
    port: u16,
    #[arg(long, env = "PAYMENTS_PORT", default_value_t = 5001)]
    payments_port: u16,
    /// The simulator's pause between rides.
    #[arg(long, default_value_t = 200)]
    pause_ms: u64,
    /// Seconds between the simulator's status lines (0: none; then its
    /// summary every 100 rides).
    #[arg(long, default_value_t = 5)]
    status_every: u64,
    /// Run everything but the simulator.
    #[arg(long)]
    no_simulator: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
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
            let completer = completer::Completer {
                db: db()?,
                payments: PaymentsClient::new(&args.payments_url),
                lock_timeout: Duration::from_secs(args.lock_timeout_secs),
                config: completer::CompleterConfig {
                    grace: Duration::from_secs(args.grace_secs),
                    rerun_after: Duration::from_secs(args.rerun_after_secs),
                    ..Default::default()
                },
            };
            let pass = || completer::run_once(&completer);
            repeat("completer", &args.interval, stop, pass).await?;
        }
        Command::Reaper(args) => {
            let db = db()?;
            let max_age = Duration::from_secs(args.max_age_secs);
            let pass = || reaper::run_once(db.shared(), max_age, args.batch);
            repeat("reaper", &args.interval, stop, pass).await?;
        }
        Command::Simulate(args) => return simulate(db()?, args, stop).await,
        Command::Streamer(args) => {
            let db = db()?;
            let stream = args.stream.open();
            let config = StreamerConfig {
                batch: args.batch,
                failure_rate: args.failure_rate,
            };
            tracing::info!(
                "streamer: staged records to Redis stream {} (failure rate {})",
                stream.name,
                config.failure_rate
            );
            let pass = || streamer::run_once(db.shared(), &stream, &config);
            repeat("streamer", &args.interval, stop, pass).await?;
        }
        Command::Consumer(args) => {
            let consumer = Consumer {
                name: args.name,
                pool: db()?.shared().clone(),
                stream: args.stream.open(),
                batch: args.batch,
                crash_rate: args.crash_rate,
            };
            tracing::info!(
                "consumer {}: reading stream {} (crash rate {})",
                consumer.name,
                consumer.stream.name,
                consumer.crash_rate
            );
            consumer.run(stop).await;
        }
        Command::Cdc(args) => {
            let db = db()?;
            let tally = Arc::new(Tally::default());
            let dispatcher = Dispatcher::new()
                .on_table(
                    "public",
                    "rides",
                    Arc::new(RideStats::new(db.shared().clone())),
                )
                .on_every(tally.clone());
            let config = CdcConfig {
                slot: args.slot,
                batch: args.batch,
                idle: Duration::from_millis(args.idle_ms),
            };
            let cdc = Cdc::new(db.shared().clone(), config, dispatcher);
            let summary = |pass: &demo_app::cdc::Pass| {
                let counts: Vec<String> = tally
                    .counts()
                    .iter()
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                format!(
                    "cdc: {} changes handled ({} handler failures), slot consumed to {}; \
                     so far: {}",
                    pass.changes,
                    pass.handler_failures,
                    pass.consumed_to.map_or("-".into(), |l| l.to_string()),
                    counts.join(" ")
                )
            };
            if args.once {
                let pass = cdc.run_once().await?;
                println!("{}", summary(&pass));
            } else {
                // One line per batch: at debug level, like the changes.
                cdc.run(stop, |pass| tracing::debug!("{}", summary(pass)))
                    .await;
            }
        }
        Command::Diagnose(args) => {
            let config = DiagnoseConfig {
                database_url: cli.database_url.clone(),
                primary_url: args.primary_url,
                redis_url: args.redis_url,
                slot: args.slot,
            };
            let checks = diagnose::diagnose(&config).await;
            print!("{}", diagnose::report(&checks));
            if checks.iter().any(|c| c.failed()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::All(args) => {
            let config = AllConfig {
                api_port: args.port,
                payments_port: args.payments_port,
                pause_ms: args.pause_ms,
                status_every: args.status_every,
                no_simulator: args.no_simulator,
            };
            let exe = std::env::current_exe()?;
            let procs = all::procs(&config);
            if let Err(why) = all::run(&exe, &procs, Some(args.port), stop).await {
                eprintln!("demo-app all: {why}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `demo-app simulate`: traffic, the status line if asked, the summary.
async fn simulate(
    db: Db,
    args: SimulateArgs,
    stop: watch::Receiver<bool>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut config = SimulatorConfig {
        api_url: args.api_url.trim_end_matches('/').to_string(),
        iterations: args.count,
        failure_share: args.failure_share,
        abandon_rate: args.abandon_rate,
        report_every: args.report_every,
        pause: Duration::from_millis(args.pause_ms),
        ..Default::default()
    };
    if !args.users.is_empty() {
        config.users = args.users;
    }
    let (progress, rides) = watch::channel(Summary::default());
    let status = (args.status_every > 0).then(|| {
        let config = StatusConfig {
            every: Duration::from_secs(args.status_every),
            metrics_url: args.metrics_url,
            consumers: args.consumers,
            slot: args.slot,
        };
        let reporter = Reporter::new(config, db.shared().clone(), args.stream.open());
        tokio::spawn(status::run(reporter, rides, stop.clone()))
    });
    let summary = simulate::run_watched(&config, stop, &progress).await;
    if let Some(status) = status {
        status.abort();
    }
    let written = args
        .summary_file
        .as_ref()
        .map(|path| (path, std::fs::write(path, format!("{summary}\n"))));
    match written {
        Some((_, Ok(()))) => {}
        Some((path, Err(e))) => {
            tracing::warn!("cannot write the summary to {}: {e}", path.display());
            println!("{summary}");
        }
        None => println!("{summary}"),
    }
    Ok(if summary.stale_reads > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// `--once`: one pass; else [`jobs::every`] until shutdown.
async fn repeat<F, Fut>(
    name: &str,
    interval: &Interval,
    stop: watch::Receiver<bool>,
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
