//! The built-in dashboard in a real browser: causeway serves its metrics
//! address with application traffic going through it, headless Chromium
//! opens `http://<metrics address>/`, and the test reads from the page's DOM
//! that every chart, tile and table row holds live, non-zero data: reads on
//! each replica and on the primary and why, the replica share, read-wait
//! quantiles, replica lag while replay is paused, connections, clients,
//! errors by class and the causal map's size. Then it takes a screenshot
//! (`CAUSEWAY_DASHBOARD_SCREENSHOT=docs/dashboard.png` keeps it: the
//! README's picture is made this way).
//!
//! The proxy runs in-process ([`TestProxy`]) with the metrics endpoint the
//! binary serves (`causeway::http::serve`, its own recorder: this test binary
//! holds this one test). Chromium is Debian's `chromium`: without it the
//! test fails, saying how to install it (`bash cluster/setup.sh test` does).

#[path = "../support/mod.rs"]
mod support;

mod chromium;
mod http;
mod websocket;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use causeway::config::CausalScope;
use causeway::server::{Proxy, ProxyHandle};
use serde_json::Value;
use support::{connect_app, TestCluster, TestProxy, APP_DB};

use chromium::Chromium;

/// The screenshot's size, as the README shows it.
const WINDOW: (u32, u32) = (1280, 900);

/// Riders that write and read back their own rows, each with its own
/// `causeway.client_id` (so the causal map holds them).
const RIDERS: usize = 3;

// ---------------------------------------------------------------------------
// The proxy and its metrics address

/// Serves the metrics address as the binary does, on its own thread; its
/// address. `recorder` must have been installed before the proxy started.
fn serve_metrics(
    proxy: Arc<Proxy>,
    recorder: metrics_exporter_prometheus::PrometheusHandle,
) -> SocketAddr {
    let replicas: Vec<String> = proxy.replicas.iter().map(|r| r.name.clone()).collect();
    causeway::metrics::init_series(&proxy.primary.name, &replicas);
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("metrics runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the metrics address");
            let _ = address_tx.send(listener.local_addr().expect("metrics address"));
            let handle = ProxyHandle::new(proxy, None);
            if let Err(e) = causeway::http::serve(handle, recorder, listener).await {
                eprintln!("metrics endpoint stopped: {e}");
            }
        });
    });
    address_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the metrics endpoint did not start")
}

/// The page and what it loads come from causeway, with a policy that lets
/// the browser fetch from causeway's own origin only.
fn assert_served_from_the_binary(metrics: SocketAddr) {
    let host = metrics.to_string();
    let (head, page) = http::get(&host, "/").unwrap_or_else(|e| panic!("GET /: {e}"));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(page.contains("<main id=\"charts\">"), "{page}");
    for script in [
        "/dashboard/app.js",
        "/dashboard/chart.js",
        "/dashboard/prometheus.js",
    ] {
        let (head, _) = http::get(&host, script).unwrap_or_else(|e| panic!("GET {script}: {e}"));
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/javascript"),
            "{script}: {head}"
        );
    }
}

// ---------------------------------------------------------------------------
// Traffic

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn set_up_schema(port: u16) {
    connect_app(port, APP_DB, None)
        .await
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS browser_rides (id bigserial PRIMARY KEY, rider int NOT NULL)",
        )
        .await
        .expect("create browser_rides");
}

/// Application traffic until `stop` (or three minutes, whichever is
/// first): riders writing and reading back their own rows (read-your-writes
/// asserted), a reader that never writes, a read hinted to the primary and
/// a division by zero now and then. Each loop sleeps: a live page wants
/// steady traffic, not a benchmark. Returns the rows read back.
async fn traffic(port: u16, stop: Arc<AtomicBool>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    let running = move || !stop.load(Ordering::Relaxed) && Instant::now() < deadline;
    let mut riders = Vec::new();
    for rider in 0..RIDERS as i32 {
        let running = running.clone();
        riders.push(tokio::spawn(async move {
            let options = format!("-c causeway.client_id=rider-{rider}");
            let client = connect_app(port, APP_DB, Some(&options)).await;
            let mut read_back = 0u64;
            while running() {
                let id: i64 = client
                    .query_one(
                        "INSERT INTO browser_rides (rider) VALUES ($1) RETURNING id",
                        &[&rider],
                    )
                    .await
                    .expect("insert")
                    .get(0);
                let rows = client
                    .query("SELECT rider FROM browser_rides WHERE id = $1", &[&id])
                    .await
                    .expect("read back");
                assert_eq!(rows.len(), 1, "read-your-writes: ride {id} not seen");
                read_back += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            read_back
        }));
    }
    let others = tokio::spawn(async move {
        let client = connect_app(port, APP_DB, None).await;
        let mut round = 0u64;
        while running() {
            client
                .simple_query("SELECT count(*) FROM browser_rides")
                .await
                .expect("a read of a client that never wrote");
            if round.is_multiple_of(10) {
                client
                    .simple_query("/* causeway: primary */ SELECT 1")
                    .await
                    .expect("a hinted read");
            }
            if round.is_multiple_of(25) {
                let error = client
                    .simple_query("SELECT 1/0")
                    .await
                    .expect_err("division by zero");
                assert_eq!(error.code().map(|c| c.code()), Some("22012"), "{error}");
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let mut read_back = 0;
    for rider in riders {
        read_back += rider.await.expect("rider task");
    }
    others.await.expect("reader task");
    read_back
}

// ---------------------------------------------------------------------------
// The page, as its DOM says

/// What the page shows, read from its DOM: the body's state, every chart's
/// data-* (latest and peak value per series, points drawn), the tiles'
/// values, the servers table's rows and the header's pills. While the page
/// is still loading, only its state.
const READ_THE_PAGE: &str = r##"(() => { try { return JSON.stringify({
  state: document.body.dataset.state,
  error: document.body.dataset.error || null,
  polls: Number(document.body.dataset.polls),
  charts: Object.fromEntries([...document.querySelectorAll("figure.chart")].map((f) => [f.id, {
    latest: JSON.parse(f.dataset.latest || "{}"),
    peak: JSON.parse(f.dataset.peak || "{}"),
    points: Number(f.dataset.points || 0),
  }])),
  tiles: Object.fromEntries([...document.querySelectorAll(".tile")].map((t) => [t.dataset.stat, t.dataset.value === "" ? null : Number(t.dataset.value)])),
  servers: [...document.querySelectorAll("#servers tbody tr")].map((r) => ({ ...r.dataset })),
  primary: document.getElementById("primary").dataset.up,
  replicas: { ...document.getElementById("replicas").dataset },
}) } catch (e) { return JSON.stringify({ state: "not loaded: " + e }) } })()"##;

fn read_the_page(page: &mut Chromium) -> Value {
    let text = page
        .evaluate(READ_THE_PAGE)
        .unwrap_or_else(|e| panic!("reading the page: {e}\n{}", page.log_tail()));
    serde_json::from_str(text.as_str().unwrap_or("null")).expect("the page's state is JSON")
}

/// The highest value of `series` in `chart` in view, 0 when none.
fn peak(view: &Value, chart: &str, series: &str) -> f64 {
    view["charts"][chart]["peak"][series]
        .as_f64()
        .unwrap_or(0.0)
}

/// What the page does not show yet, in words; empty when it shows it all.
fn missing(view: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            missing.push(what.to_string());
        }
    };
    expect(view["state"] == "live", "the page is live (reads /metrics)");
    expect(view["error"].is_null(), "no error shown");
    expect(view["polls"].as_u64() >= Some(5), "five scrapes or more");

    let charts = view["charts"].as_object().cloned().unwrap_or_default();
    expect(charts.len() == 12, "12 charts");
    for (id, chart) in &charts {
        expect(
            chart["points"].as_u64() > Some(0),
            &format!("chart {id} draws points"),
        );
    }
    for server in ["replica0", "replica1", "primary"] {
        expect(
            peak(view, "reads-by-server", server) > 0.0,
            &format!("reads / s on {server}"),
        );
    }
    for why in [
        "fresh",
        "within lag",
        "primary: no fresh replica",
        "primary: hint",
    ] {
        expect(
            peak(view, "reads-by-reason", why) > 0.0,
            &format!("reads / s for {why:?}"),
        );
    }
    expect(
        peak(view, "replica-share", "on replicas") > 0.0,
        "a share of reads on replicas",
    );
    expect(peak(view, "read-wait", "p50") > 0.0, "read wait p50");
    expect(peak(view, "read-wait", "p99") > 0.0, "read wait p99");
    expect(
        peak(view, "waits", "waited, then fresh") > 0.0,
        "reads that waited, then ran on a fresh replica",
    );
    expect(
        peak(view, "lag-bytes", "replica1") > 0.0,
        "replica1's lag in bytes while its replay was paused",
    );
    expect(
        peak(view, "lag-seconds", "replica1") > 0.0,
        "replica1's lag in seconds while its replay was paused",
    );
    let connections: f64 = view["charts"]["server-connections"]["peak"]
        .as_object()
        .map(|peaks| peaks.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    expect(connections > 0.0, "server connections in the pools");
    expect(peak(view, "statements", "writes") > 0.0, "writes / s");
    expect(
        peak(view, "clients", "connected") > 0.0,
        "clients connected",
    );
    expect(peak(view, "errors", "22 data") > 0.0, "errors of class 22");
    expect(
        peak(view, "causal-map", "entries") >= RIDERS as f64,
        "the causal map holds every rider",
    );

    for tile in ["reads", "replica-share", "clients", "causal-map"] {
        expect(
            view["tiles"][tile].as_f64() > Some(0.0),
            &format!("tile {tile} above 0"),
        );
    }
    let rows = view["servers"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["server"].as_str()).collect();
    expect(
        names == ["primary", "replica0", "replica1"],
        "a servers row for the primary and each replica",
    );
    for row in &rows {
        expect(
            row["healthy"] == "1",
            &format!("{} healthy in the table", row["server"]),
        );
        if row["role"] == "replica" {
            expect(
                row["lagBytes"].as_str().is_some_and(|v| !v.is_empty()),
                &format!("{}'s lag in the table", row["server"]),
            );
        }
    }
    expect(view["primary"] == "1", "the header says the primary is up");
    expect(
        view["replicas"]["healthy"] == "2" && view["replicas"]["total"] == "2",
        "the header says 2 of 2 replicas serve reads",
    );
    missing
}

/// Reads the page until it shows everything [`missing`] asks for; panics
/// after `timeout` with what it lacks, what it showed and its DOM.
fn wait_until_the_page_shows_it_all(page: &mut Chromium, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let view = read_the_page(page);
        let lacking = missing(&view);
        if lacking.is_empty() {
            return view;
        }
        if Instant::now() >= deadline {
            let dom = page
                .evaluate("document.documentElement.outerHTML")
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .unwrap_or_else(|e| e);
            panic!(
                "after {timeout:?} the dashboard still does not show:\n  {}\n\nwhat it shows:\n{view:#}\n\nits DOM:\n{dom}\n{}",
                lacking.join("\n  "),
                page.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for_scrapes(page: &mut Chromium, scrapes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = read_the_page(page);
        if view["polls"].as_u64() >= Some(scrapes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not read /metrics {scrapes} times in 30 s: {view:#}\n{}",
            page.log_tail()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// The test

#[test]
fn the_dashboard_draws_live_traffic_in_headless_chromium() {
    let started = Instant::now();
    let browser = chromium::find().unwrap_or_else(|| {
        panic!(
            "Chromium is not installed, so the dashboard cannot be tested in a browser: \
             apt-get install chromium (bash cluster/setup.sh test installs it)"
        )
    });
    // Before anything records: the proxy's metrics go to this recorder.
    let recorder =
        causeway::http::install_recorder().expect("the only metrics recorder of this process");
    let cluster = TestCluster::shared();
    let proxy = TestProxy::start_with(cluster, |config| {
        config.routing.causal_scope = CausalScope::ClientId;
    });
    let metrics = serve_metrics(proxy.proxy.clone(), recorder);
    assert_served_from_the_binary(metrics);

    let rt = runtime();
    rt.block_on(set_up_schema(proxy.port));
    cluster.wait_replicas_caught_up();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = rt.spawn(traffic(proxy.port, stop.clone()));

    let dir = tempfile::Builder::new()
        .prefix("causeway-dashboard-browser-")
        .tempdir()
        .expect("temp dir");
    let url = format!("http://{metrics}/");
    let mut page = Chromium::open(&browser, &url, dir.path(), WINDOW);
    wait_for_scrapes(&mut page, 3);

    // Lag: replica1 stops replaying while the riders write; then replica0
    // too, so reads of new writes find no fresh replica in time and go to
    // the primary. Then both catch up.
    cluster.pause_replay(1);
    thread::sleep(Duration::from_secs(3));
    cluster.pause_replay(0);
    thread::sleep(Duration::from_secs(3));
    cluster.resume_replay(0);
    thread::sleep(Duration::from_secs(2));
    cluster.resume_replay(1);

    let view = wait_until_the_page_shows_it_all(&mut page, Duration::from_secs(60));
    eprintln!("the dashboard shows: {view:#}");
    // Steady traffic after the catch-up, for the picture: a few seconds,
    // or half a minute when the picture is kept (for the README).
    let keep = std::env::var_os("CAUSEWAY_DASHBOARD_SCREENSHOT");
    thread::sleep(Duration::from_secs(if keep.is_some() { 30 } else { 3 }));
    let png = page.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "the screenshot is not a PNG of a drawn page ({} bytes)",
        png.len()
    );
    let shot = dir.path().join("dashboard.png");
    std::fs::write(&shot, &png).expect("write the screenshot");
    if let Some(keep) = keep {
        std::fs::write(&keep, &png).expect("write the screenshot where asked");
        eprintln!("screenshot written to {}", keep.to_string_lossy());
    }

    stop.store(true, Ordering::Relaxed);
    let read_back = rt.block_on(traffic).expect("traffic");
    assert!(read_back > 0, "no rider read its rows back");
    drop(page);
    proxy.stop();
    eprintln!(
        "dashboard browser test: {read_back} rows written and read back, took {:.1?}",
        started.elapsed()
    );
}
