//! The load checker of `cluster/cluster.sh chaos`: N sessions write and
//! read back their own counters through causeway while servers are killed,
//! restarted and promoted under them, and every outcome is classified.
//!
//! ```sh
//! cargo run --release --example chaos -- --sessions 8 --duration 60
//! ```
//!
//! It runs for `--duration` seconds, or until SIGINT or SIGTERM (how the
//! chaos command stops it), then prints a summary: cycles, writes and reads
//! that worked, errors by severity and SQLSTATE, stale reads (causeway's
//! fault), lost writes (the cluster's: an asynchronous promotion lost them),
//! closed sessions, and how many reads ran on replicas. It exits 1 when a
//! read was stale (or, with `--strict`, when a read failed or a session was
//! closed), 2 when it could not set up or checked nothing.
//!
//! The checking is in `session.rs`, the counting and the report in
//! `tally.rs`; this file parses arguments, creates the table, and starts
//! and stops the sessions.

mod session;
mod tally;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

use session::{Session, Settings};
use tally::{clock, Tally};

#[derive(Parser, Debug)]
#[command(
    about = "Sessions that write and read back their own counters through causeway, \
             classifying every outcome (stale read, lost write, error, closed session)"
)]
struct Args {
    /// causeway's address.
    #[arg(long, default_value = "127.0.0.1:6432")]
    proxy: String,
    /// Concurrent sessions, each with its own row of chaos_counter.
    #[arg(long, default_value_t = 8)]
    sessions: u32,
    /// Seconds to run; 0 runs until SIGINT or SIGTERM.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Seed of each session's choice of cycles.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "app")]
    user: String,
    #[arg(long, default_value = "app")]
    password: String,
    #[arg(long, default_value = "app")]
    dbname: String,
    /// Also fail on a failed read, a closed or stuck session, an unresolved
    /// read or an anomaly.
    #[arg(long)]
    strict: bool,
    /// Milliseconds each session waits between cycles.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// A statement without an answer for this many seconds abandons its
    /// session (counted as closed by a timeout).
    #[arg(long, default_value_t = 30)]
    statement_timeout: u64,
    /// Seconds between progress lines; 0 prints none.
    #[arg(long, default_value_t = 10)]
    progress: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match client_config(&args) {
        Ok(config) => config,
        Err(why) => {
            eprintln!("chaos: {why}");
            return ExitCode::from(2);
        }
    };
    if let Err(why) = create_rows(&config, args.sessions).await {
        eprintln!(
            "chaos: could not create chaos_counter through {}: {why}",
            args.proxy
        );
        return ExitCode::from(2);
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let settings = Arc::new(Settings {
        config,
        statement_timeout: Duration::from_secs(args.statement_timeout.max(1)),
        pause: Duration::from_millis(args.pause_ms),
        seed: args.seed,
        tally: tally.clone(),
        stop: stop.clone(),
    });
    println!(
        "chaos {}: {} sessions through {} (odd ones prepared statements, even ones \
         the simple protocol), seed {}",
        clock(),
        args.sessions,
        args.proxy,
        args.seed
    );
    let started = Instant::now();
    let mut sessions = JoinSet::new();
    for id in 1..=args.sessions {
        sessions.spawn(Session::new(id, settings.clone()).run());
    }

    wait_for_the_end(&args, &tally, started).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    // Every statement has a timeout, so sessions end; a few seconds more
    // than that is a hang worth reporting rather than waiting out.
    let grace = Duration::from_secs(args.statement_timeout + 5);
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    if drained.is_err() {
        tally.stuck_at_end = sessions.len();
        sessions.abort_all();
    }
    println!("chaos summary ({}):", clock());
    print!("{}", tally.summary(elapsed, args.sessions, args.seed));
    let failures = tally.failures(args.strict);
    if failures.is_empty() {
        println!("chaos: passed");
        return ExitCode::SUCCESS;
    }
    println!("chaos: FAILED: {}", failures.join("; "));
    if tally.reads_ok == 0 {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn client_config(args: &Args) -> Result<tokio_postgres::Config, String> {
    let (host, port) = args
        .proxy
        .rsplit_once(':')
        .ok_or_else(|| format!("--proxy {} is not HOST:PORT", args.proxy))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--proxy {}: bad port", args.proxy))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(&args.user)
        .password(&args.password)
        .dbname(&args.dbname)
        .application_name("causeway-chaos")
        .connect_timeout(Duration::from_secs(5));
    Ok(config)
}

/// Creates the table and one row per session, retrying for a while: the
/// proxy may be starting, or the primary may be down at this moment.
async fn create_rows(config: &tokio_postgres::Config, sessions: u32) -> Result<(), String> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS chaos_counter (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0); \
         INSERT INTO chaos_counter (id, n) SELECT g, 0 FROM generate_series(1, {sessions}) AS g \
         ON CONFLICT (id) DO NOTHING"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client.batch_execute(&sql).await
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Until the duration is over or a signal comes, printing progress.
async fn wait_for_the_end(args: &Args, tally: &Mutex<Tally>, started: Instant) {
    let deadline = async {
        if args.duration == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_secs(args.duration)).await;
    };
    let progress = async {
        if args.progress == 0 {
            std::future::pending::<()>().await;
        }
        let mut every = tokio::time::interval(Duration::from_secs(args.progress));
        every.tick().await;
        loop {
            every.tick().await;
            let line = tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .progress(started.elapsed());
            println!("{line} ({})", clock());
        }
    };
    tokio::select! {
        _ = deadline => {}
        _ = progress => {}
        _ = signalled() => {}
    }
}

async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
