//! The `causeway` binary: reads the config, starts the proxy, and handles
//! signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;

use causeway::config::Config;
use causeway::server::{self, Proxy, ProxyHandle};

/// A PostgreSQL proxy with read-your-writes over streaming replicas.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Path to the config file.
    #[arg(short, long, default_value = "proxy.toml")]
    config: PathBuf,
    /// Check the config and exit: 0 when valid, 1 with the reason when not.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("causeway: invalid config: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check {
        println!("{}: OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    // One worker: a single-threaded runtime, with no cross-thread wakeups
    // on the per-message path. More: a work-stealing pool.
    let mut runtime = if config.proxy.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.proxy.worker_threads > 1 {
        runtime.worker_threads(config.proxy.worker_threads);
    }
    // worker_threads = 0: tokio's default, one per core.
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("causeway: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(config, args.config))
}

async fn run(config: Config, config_path: PathBuf) -> ExitCode {
    let listen = config.proxy.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("causeway: cannot listen on {listen} (proxy.listen): {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(%listen, primary = %config.primary.name, replicas = config.replicas.len(), "causeway listening");
    let metrics = config.metrics.clone();
    let recorder = if metrics.enabled {
        causeway::http::install_recorder()
    } else {
        None
    };
    let proxy = Arc::new(Proxy::new(config));
    if recorder.is_some() {
        let replicas: Vec<String> = proxy.replicas.iter().map(|r| r.name.clone()).collect();
        causeway::metrics::init_series(&proxy.primary.name, &replicas);
        // Each server's pool-wait histogram is on the page from the start.
        for name in std::iter::once(&proxy.primary.name).chain(&replicas) {
            proxy.stats.server(name);
        }
    }
    proxy.start_monitor();
    let handle = ProxyHandle::new(proxy, Some(config_path));
    if let Some(recorder) = recorder {
        let listen = metrics.listen;
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("causeway: cannot listen on {listen} (metrics.listen): {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(%listen, "metrics on http://{listen}/metrics");
        let endpoint = handle.clone();
        tokio::spawn(async move {
            if let Err(e) = causeway::http::serve(endpoint, recorder, listener).await {
                tracing::error!(%listen, error = %e, "metrics endpoint stopped");
            }
        });
    }
    let reloader = handle.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match reloader.reload() {
                Ok(done) => tracing::info!("SIGHUP: {done}"),
                Err(e) => tracing::error!("SIGHUP: config not reloaded: {e}"),
            }
        }
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stop signal received");
        let _ = stop_tx.send(true);
    });
    server::serve(handle, listener, stop_rx).await;
    ExitCode::SUCCESS
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
