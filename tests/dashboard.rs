//! The Grafana dashboard (`grafana/dashboards/causeway.json`) against a real
//! proxy: every metric its queries name is exported after real traffic, and
//! every query returns data in a real Prometheus scraping that proxy.
//!
//! The in-process `TestProxy` installs no metrics recorder, so this test runs
//! the real `causeway` binary with a generated config, on free ports, pointed
//! at the shared test cluster. Traffic runs in two rounds with a Prometheus
//! scrape between them, so that counters created in the first round have
//! increased by the time the queries run (`rate()` ignores a series' first
//! sample): writes, reads, read-your-writes reads that wait, a read that
//! gives up waiting and falls back to the primary (`stale`, replay paused on
//! both replicas), one that waits until a replica catches up, a write
//! function a replica refuses (retried on the primary), a division by zero,
//! a failed login, and a replica stopped and started (poll errors, health).
//!
//! The Prometheus half needs the `prometheus` binary (Debian package
//! `prometheus`). Without it the test fails under CI (`CI` set) and prints
//! a skip notice otherwise.
//!
//! HTTP is a few lines of HTTP/1.0 over `TcpStream`: no client dependency.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{connect, free_port, try_connect, TestCluster, APP_DB, APP_PASSWORD, APP_USER};

const DASHBOARD: &str = "grafana/dashboards/causeway.json";

/// What `$__rate_interval`, `$__interval` and `$__range` become when the
/// test evaluates a query; Prometheus scrapes every second here.
const RATE_INTERVAL: &str = "30s";

// ---------------------------------------------------------------------------
// The dashboard and its queries

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn load_dashboard() -> Value {
    let path = repo_path(DASHBOARD);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A PromQL expression of the dashboard and where it is.
#[derive(Debug, Clone)]
struct Query {
    /// `panel "Reads by server" target A`, or `variable server`.
    place: String,
    expr: String,
    /// For a `label_values(selector, label)` variable: the label.
    label: Option<String>,
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every query: panel targets' `expr`, and the query variables' queries
/// (`label_values(selector, label)` contributes its selector).
fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("panel {title:?} has a target without a PromQL `expr`: {target}")
            });
            queries.push(Query {
                place: format!(
                    "panel {title:?} target {}",
                    target["refId"].as_str().unwrap_or("?")
                ),
                expr: expr.to_string(),
                label: None,
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let text = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query: {variable}"));
        let (expr, label) = match parse_label_values(text) {
            Some((selector, label)) => (selector, Some(label)),
            None => (text.to_string(), None),
        };
        queries.push(Query {
            place: format!("variable {name}"),
            expr,
            label,
        });
    }
    queries
}

/// `label_values(selector, label)` -> (selector, label). `label_values(label)`
/// (no selector) names no metric and is refused: the dashboard should not
/// list a label of every metric on the server.
fn parse_label_values(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let comma = inner
        .rfind(',')
        .unwrap_or_else(|| panic!("label_values without a selector: {query}"));
    Some((
        inner[..comma].trim().to_string(),
        inner[comma + 1..].trim().to_string(),
    ))
}

/// Words that are PromQL syntax, not metric names, when not followed by `(`.
const KEYWORDS: &[&str] = &[
    // Aggregation operators, which may be followed by `by (...)` before `(`.
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "start",
    "end",
];

/// Modifiers whose parenthesised list holds label names, not expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: identifiers outside strings,
/// label matchers (`{...}`), ranges (`[...]`) and label lists (`by (...)`)
/// that are not functions, keywords or numbers. A `{__name__=...}` selector
/// is refused: its names could not be checked.
fn metric_names(expr: &str) -> BTreeSet<String> {
    assert!(
        !expr.contains("__name__"),
        "query selects metrics by __name__, which this test cannot check: {expr}"
    );
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Index just past the string that starts at `start` (a quote).
    let skip_string = |start: usize| -> usize {
        let quote = chars[start];
        let mut j = start + 1;
        while j < chars.len() && chars[j] != quote {
            if chars[j] == '\\' && quote != '`' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    // Index just past the bracket that closes the one at `start`.
    let skip_group = |start: usize, close: char| -> usize {
        let open = chars[start];
        let mut depth = 0;
        let mut j = start;
        while j < chars.len() {
            match chars[j] {
                '"' | '\'' | '`' => {
                    j = skip_string(j);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {open} in {expr}")
    };
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i),
            '{' => i = skip_group(i, '}'),
            '[' => i = skip_group(i, ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                // A Grafana variable: $name, $__rate_interval, ${name}.
                i += 1;
                if i < chars.len() && chars[i] == '{' {
                    i = skip_group(i, '}');
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number (0.99, 1e3, 0x1f) or a duration.
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if called && LABEL_LISTS.contains(&word.as_str()) {
                    i = skip_group(next, ')');
                } else if !called && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Metric names the queries use that `exported` lacks, with where they are used.
fn missing_metrics(queries: &[Query], exported: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    for query in queries {
        for name in metric_names(&query.expr) {
            if !exported.contains(&name) {
                missing.push(format!("{name} (in {}: {})", query.place, query.expr));
            }
        }
    }
    missing
}

/// A query as Grafana sends it, with the variables at "All".
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", RATE_INTERVAL)
        .replace("$__range", "5m")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${server}", ".*")
        .replace("$server", ".*")
}

// ---------------------------------------------------------------------------
// The Prometheus text format

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_scrape(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            let mut end = body.len();
            while let Some((at, c)) = chars.next() {
                match c {
                    '}' => {
                        end = at + 1;
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        let mut value = String::new();
                        chars.next(); // the opening quote
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '"' => break,
                                '\\' => {
                                    if let Some((_, escaped)) = chars.next() {
                                        value.push(match escaped {
                                            'n' => '\n',
                                            other => other,
                                        });
                                    }
                                }
                                other => value.push(other),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    other => key.push(other),
                }
            }
            rest = &body[end..];
        }
        let value = rest.split_whitespace().next().unwrap_or("");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value in line {line:?}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample `name` whose labels include `labels`, summed
/// over every match; `None` when none matches.
fn sample_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

// ---------------------------------------------------------------------------
// HTTP/1.0 over TcpStream

/// GETs `path` from `addr`; returns the status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("timeouts on {addr}: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read from {addr}{path}: {e}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in the answer of {addr}{path}: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(format!(
            "{addr}{path} answered HTTP/1.0 with a chunked body"
        ));
    }
    Ok((status, body.to_string()))
}

/// Percent-encodes a query-string value.
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Processes

/// A child process killed (and reaped) when dropped, with its log file.
struct Spawned {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Spawned {
    fn start(name: &'static str, command: &mut Command, log: PathBuf) -> Spawned {
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Spawned { name, child, log }
    }

    /// The last lines of its output, for a failure message.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "--- last lines of {} ({}) ---\n{tail}",
            self.name,
            self.log.display()
        )
    }

    /// Panics (with its log) if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status})\n{}", self.name, self.log_tail());
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Ok`; panics after `timeout`
/// with the last state seen and `context()`.
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last}\n{}",
                context()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// The proxy under test

struct Proxy {
    process: Spawned,
    port: u16,
    metrics: SocketAddr,
}

impl Proxy {
    fn start(cluster: &TestCluster, dir: &Path) -> Proxy {
        let port = free_port();
        let metrics_port = free_port();
        let mut config = format!(
            r#"
[proxy]
listen = "127.0.0.1:{port}"
shutdown_timeout_ms = 1000

[primary]
name = "primary"
port = {primary}

[routing]
monitor_user = "postgres"
# Long enough that a read can still be waiting when replay resumes.
max_wait_ms = 1000
optimistic_transactions = true

[metrics]
enabled = true
listen = "127.0.0.1:{metrics_port}"

[[users]]
name = "{APP_USER}"
password = "{APP_PASSWORD}"
"#,
            primary = cluster.primary_port(),
        );
        for (i, replica_port) in cluster.replica_ports().iter().enumerate() {
            config.push_str(&format!(
                "\n[[replicas]]\nname = \"replica{i}\"\nport = {replica_port}\n"
            ));
        }
        let config_path = dir.join("proxy.toml");
        fs::write(&config_path, config).expect("write proxy.toml");
        let process = Spawned::start(
            "causeway",
            Command::new(env!("CARGO_BIN_EXE_causeway"))
                .arg("--config")
                .arg(&config_path)
                .env("RUST_LOG", "info"),
            dir.join("causeway.log"),
        );
        let mut proxy = Proxy {
            process,
            port,
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
        };
        let metrics = proxy.metrics;
        let log = proxy.process.log.clone();
        wait_until(
            "causeway's /readyz to answer 200",
            Duration::from_secs(30),
            || {
                proxy.process.assert_running();
                match http_get(metrics, "/readyz") {
                    Ok((200, _)) => Ok(()),
                    Ok((status, body)) => Err(format!("{status} {body:?}")),
                    Err(e) => Err(e),
                }
            },
            || fs::read_to_string(&log).unwrap_or_default(),
        );
        let (status, body) = http_get(metrics, "/healthz").expect("GET /healthz");
        assert_eq!((status, body.trim()), (200, "ok"), "/healthz");
        for i in 0..cluster.replica_count() {
            proxy.wait_replica_health(&format!("replica{i}"), true);
        }
        proxy
    }

    fn scrape(&mut self) -> String {
        self.process.assert_running();
        match http_get(self.metrics, "/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET /metrics: {status} {body}"),
            Err(e) => panic!("GET /metrics: {e}\n{}", self.process.log_tail()),
        }
    }

    /// Waits until `/metrics` shows `causeway_replica_healthy{server}` as `healthy`.
    fn wait_replica_health(&mut self, server: &str, healthy: bool) {
        let want = if healthy { 1.0 } else { 0.0 };
        let metrics = self.metrics;
        wait_until(
            &format!("causeway_replica_healthy{{server=\"{server}\"}} = {want}"),
            Duration::from_secs(30),
            || {
                let (_, body) = http_get(metrics, "/metrics")?;
                let seen = sample_sum(
                    &parse_scrape(&body),
                    "causeway_replica_healthy",
                    &[("server", server)],
                );
                if seen == Some(want) {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            },
            || self.process.log_tail(),
        );
    }
}

// ---------------------------------------------------------------------------
// Prometheus

struct Prometheus {
    process: Spawned,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, target: SocketAddr) -> Prometheus {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: causeway\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let process = Spawned::start(
            "prometheus",
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn"),
            dir.join("prometheus.log"),
        );
        let mut prometheus = Prometheus { process, addr };
        let log = prometheus.process.log.clone();
        wait_until(
            "Prometheus to be ready (/-/ready)",
            Duration::from_secs(60),
            || {
                prometheus.process.assert_running();
                match http_get(addr, "/-/ready") {
                    Ok((200, _)) => Ok(()),
                    Ok((status, body)) => Err(format!("{status} {body:?}")),
                    Err(e) => Err(e),
                }
            },
            || fs::read_to_string(&log).unwrap_or_default(),
        );
        prometheus
    }

    /// GETs an API path; returns the JSON `data` of a `success` answer,
    /// or the error.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.addr, path)?;
        let json: Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: not JSON ({e}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!("{status}: {json}"));
        }
        Ok(json["data"].clone())
    }

    fn query(&self, expr: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", url_encode(expr)))
    }

    /// Waits for a scrape of the proxy that started after `after` (unix s):
    /// from then on everything the proxy had counted by `after` is stored.
    fn wait_scrape_after(&self, after: f64) {
        wait_until(
            "a Prometheus scrape of the proxy after the traffic",
            Duration::from_secs(30),
            || {
                let data = self.query("timestamp(causeway_primary_up)")?;
                let newest = data["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                    .fold(f64::NEG_INFINITY, f64::max);
                if newest > after {
                    Ok(())
                } else {
                    Err(format!(
                        "newest scrape at {newest}, traffic ended at {after}"
                    ))
                }
            },
            || self.process.log_tail(),
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

async fn app_client(port: u16) -> tokio_postgres::Client {
    connect(port, APP_USER, APP_PASSWORD, APP_DB).await
}

/// The table and the write function the traffic uses.
async fn set_up_schema(port: u16) {
    app_client(port)
        .await
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS dashboard_rides (id bigserial PRIMARY KEY, distance int NOT NULL);
             CREATE OR REPLACE FUNCTION dashboard_sneaky_write() RETURNS bigint LANGUAGE sql
               AS 'INSERT INTO dashboard_rides (distance) VALUES (7) RETURNING id';
             CREATE OR REPLACE VIEW dashboard_sneaky_view AS SELECT dashboard_sneaky_write() AS id",
        )
        .await
        .expect("create dashboard_rides and dashboard_sneaky_write()");
}

/// Writes and reads from a few clients at once: reads of their own writes
/// (fresh, maybe waiting), reads of a client that never writes (within_lag),
/// a write a replica refuses (retry), a division by zero, a failed login.
async fn steady_traffic(port: u16, primary_port: u16) {
    let mut tasks = Vec::new();
    for writer in 0..3i32 {
        tasks.push(tokio::spawn(async move {
            let client = app_client(port).await;
            for i in 0..30 {
                let id: i64 = client
                    .query_one(
                        "INSERT INTO dashboard_rides (distance) VALUES ($1) RETURNING id",
                        &[&(writer * 100 + i)],
                    )
                    .await
                    .expect("insert")
                    .get(0);
                let rows = client
                    .query("SELECT distance FROM dashboard_rides WHERE id = $1", &[&id])
                    .await
                    .expect("read back");
                assert_eq!(rows.len(), 1, "read-your-writes: ride {id} not seen");
            }
        }));
    }
    tasks.push(tokio::spawn(async move {
        let client = app_client(port).await;
        for _ in 0..100 {
            client
                .simple_query("SELECT count(*) FROM dashboard_rides")
                .await
                .expect("count");
        }
    }));
    // A session pinned by a temporary table.
    tasks.push(tokio::spawn(async move {
        let client = app_client(port).await;
        client
            .batch_execute("CREATE TEMP TABLE dashboard_scratch (x int)")
            .await
            .expect("temp table");
    }));
    // Transaction blocks, optimistic: one that only reads, one that reads
    // then writes (moved to the primary, replayed, matched).
    tasks.push(tokio::spawn(async move {
        let client = app_client(port).await;
        for _ in 0..5 {
            client.batch_execute("BEGIN").await.expect("begin");
            client
                .query(
                    "SELECT count(*) FROM dashboard_rides WHERE distance > $1",
                    &[&0i32],
                )
                .await
                .expect("read in a block");
            client.batch_execute("COMMIT").await.expect("commit");
        }
        client.batch_execute("BEGIN").await.expect("begin");
        // A read whose answer concurrent writers cannot change.
        client
            .query("SELECT count(*) FROM dashboard_rides WHERE id < 0", &[])
            .await
            .expect("read before the write");
        client
            .execute("INSERT INTO dashboard_rides (distance) VALUES (3)", &[])
            .await
            .expect("write in an optimistic block");
        client.batch_execute("COMMIT").await.expect("commit");
    }));
    for task in tasks {
        task.await.expect("traffic task");
    }

    let client = app_client(port).await;
    let row = client
        // A write hidden in a view: the proxy cannot see it (a function
        // called directly is known VOLATILE from pg_proc), so the replica
        // refuses it the first time; later rounds know it writes.
        .query_one(
            "SELECT id, inet_server_port() FROM dashboard_sneaky_view",
            &[],
        )
        .await
        .expect("a write a replica refuses is re-run on the primary");
    assert_eq!(row.get::<_, i32>(1), i32::from(primary_port));

    let error = client
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(error.code().map(|c| c.code()), Some("22012"), "{error}");

    let refused = try_connect(port, APP_USER, "not-the-password", APP_DB).await;
    assert!(refused.is_err(), "a wrong password logged in");
}

/// Read-your-writes reads while replay is paused. First, with every replica
/// paused, a read of a new write waits while replay resumes on replica0 and
/// is served there (wait `caught_up`). Then, with replica0 paused again
/// (replica1 still paused, and by now stalled), a read of a new write waits
/// `max_wait_ms` and falls back to the primary (`stale`, wait `gave_up`).
///
/// The proxy does not wait for replicas that have sat behind without
/// replaying for a while (`router::STALL`), so each read follows its write
/// at once, while the replica it could wait for has only just fallen behind.
fn stale_and_caught_up_reads(rt: &tokio::runtime::Runtime, cluster: &TestCluster, port: u16) {
    let client = std::sync::Arc::new(rt.block_on(app_client(port)));
    let read = "SELECT inet_server_port() FROM dashboard_rides WHERE id = $1";
    let insert = "INSERT INTO dashboard_rides (distance) VALUES (1) RETURNING id";
    let write = |client: &tokio_postgres::Client| -> i64 {
        rt.block_on(client.query_one(insert, &[]))
            .expect("insert")
            .get(0)
    };

    // Caught up before pausing, so that no replica is behind (and soon
    // stalled) before the write below.
    cluster.wait_replicas_caught_up();
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i);
    }
    let id = write(&client);
    let reader = client.clone();
    let waiting = rt.spawn(async move { reader.query_one(read, &[&id]).await });
    std::thread::sleep(Duration::from_millis(150));
    cluster.resume_replay(0);
    let served_by: i32 = rt
        .block_on(waiting)
        .expect("reader task")
        .expect("read after replay resumed")
        .get(0);
    assert_eq!(
        served_by,
        i32::from(cluster.replica_port(0)),
        "a read waiting while replica0 resumes replay should be served by replica0"
    );

    cluster.pause_replay(0);
    let id = write(&client);
    let served_by: i32 = rt
        .block_on(client.query_one(read, &[&id]))
        .expect("read-your-writes with every replica paused: the primary answers")
        .get(0);
    assert_eq!(
        served_by,
        i32::from(cluster.primary_port()),
        "a read of a write no replica has replayed falls back to the primary"
    );
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i);
    }
}

/// Stops the last replica until the proxy sees it unhealthy (poll errors),
/// then starts it again and waits until the proxy sees it healthy.
fn replica_outage(cluster: &TestCluster, proxy: &mut Proxy) {
    let name = format!("replica{}", cluster.replica_count() - 1);
    cluster.stop_server(&name);
    proxy.wait_replica_health(&name, false);
    cluster.start_server(&name);
    proxy.wait_replica_health(&name, true);
}

fn traffic_round(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    proxy: &mut Proxy,
    with_outage: bool,
) {
    rt.block_on(steady_traffic(proxy.port, cluster.primary_port()));
    stale_and_caught_up_reads(rt, cluster, proxy.port);
    if with_outage {
        replica_outage(cluster, proxy);
    }
}

/// The series the traffic must have produced: otherwise a panel would be
/// empty for want of traffic, not for want of a metric.
fn assert_traffic_counted(samples: &[Sample]) {
    let expect: &[(&str, &[(&str, &str)])] = &[
        ("causeway_statements_total", &[("route", "replica")]),
        (
            "causeway_statements_total",
            &[("route", "primary"), ("reason", "write")],
        ),
        (
            "causeway_statements_total",
            &[("route", "primary"), ("reason", "stale")],
        ),
        (
            "causeway_statements_total",
            &[("route", "primary"), ("reason", "retry")],
        ),
        ("causeway_read_waits_total", &[("outcome", "gave_up")]),
        ("causeway_read_waits_total", &[("outcome", "caught_up")]),
        ("causeway_read_wait_seconds_count", &[]),
        ("causeway_read_retries_total", &[("reason", "refused")]),
        (
            "causeway_session_pins_total",
            &[("reason", "temporary table")],
        ),
        (
            "causeway_optimistic_transactions_total",
            &[("outcome", "read_only")],
        ),
        (
            "causeway_optimistic_transactions_total",
            &[("outcome", "matched")],
        ),
        ("causeway_optimistic_replays_total", &[]),
        ("causeway_optimistic_replayed_units_total", &[]),
        ("causeway_errors_total", &[("class", "22")]),
        ("causeway_client_auth_failures_total", &[]),
        ("causeway_replica_poll_errors_total", &[]),
        ("causeway_server_connections", &[("server", "primary")]),
        (
            "causeway_statement_duration_seconds_count",
            &[("route", "replica")],
        ),
        (
            "causeway_statement_duration_seconds_count",
            &[("route", "primary")],
        ),
        ("causeway_client_bytes_received_total", &[]),
        ("causeway_client_bytes_sent_total", &[]),
    ];
    let mut missing = Vec::new();
    for (name, labels) in expect {
        match sample_sum(samples, name, labels) {
            Some(v) if v > 0.0 => {}
            seen => missing.push(format!("{name}{labels:?} = {seen:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "after the traffic these should be counted (> 0), but are not: {missing:#?}"
    );
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn dashboard_queries_have_data_in_prometheus() {
    let started = Instant::now();
    let dashboard = load_dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 10, "only {} queries found", queries.len());

    let prometheus_binary = find_on_path("prometheus");
    if prometheus_binary.is_none() {
        let message = "the `prometheus` binary is not on PATH, so the dashboard's queries \
                       cannot be evaluated: apt-get install prometheus";
        assert!(
            !under_ci(),
            "{message} (CI is set: this check must run in CI)"
        );
        // Straight to stderr: the test harness captures eprintln! of a
        // passing test, and this notice must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPING the Prometheus half of dashboard_queries_have_data_in_prometheus: {message}\n"
        );
    }

    let cluster = TestCluster::shared();
    let dir = tempfile::Builder::new()
        .prefix("causeway-dashboard-")
        .tempdir()
        .expect("temp dir");
    let mut proxy = Proxy::start(cluster, dir.path());
    // (0) A fresh proxy, before any client: every metric the dashboard
    // names is there already, at zero, so no panel says "No data".
    let fresh: BTreeSet<String> = parse_scrape(&proxy.scrape())
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let missing = missing_metrics(&queries, &fresh);
    assert!(
        missing.is_empty(),
        "a fresh proxy does not export metrics the dashboard names:\n{}",
        missing.join("\n")
    );
    let prometheus = prometheus_binary
        .as_deref()
        .map(|binary| Prometheus::start(binary, dir.path(), proxy.metrics));

    let rt = runtime();
    rt.block_on(set_up_schema(proxy.port));
    cluster.wait_replicas_caught_up();

    // Round 1 creates every series; Prometheus scrapes; round 2 makes the
    // counters grow in a window rate() can see.
    traffic_round(&rt, cluster, &mut proxy, true);
    if let Some(prometheus) = &prometheus {
        prometheus.wait_scrape_after(unix_now());
    }
    traffic_round(&rt, cluster, &mut proxy, false);
    let traffic_done = unix_now();

    // (a) Every metric the dashboard names is exported.
    let scrape = proxy.scrape();
    let samples = parse_scrape(&scrape);
    assert_traffic_counted(&samples);
    let exported: BTreeSet<String> = samples.iter().map(|s| s.name.clone()).collect();
    let missing = missing_metrics(&queries, &exported);
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the proxy does not export:\n{}\n\nexported: {exported:#?}",
        missing.join("\n")
    );

    // (b) Every query returns data in a real Prometheus.
    if let Some(prometheus) = &prometheus {
        prometheus.wait_scrape_after(traffic_done);
        let mut failures = Vec::new();
        for query in &queries {
            let expr = concrete(&query.expr);
            let answer = match &query.label {
                // A variable: the values Grafana would offer.
                Some(label) => prometheus
                    .api(&format!(
                        "/api/v1/label/{label}/values?match[]={}",
                        url_encode(&expr)
                    ))
                    .and_then(|data| match data.as_array() {
                        Some(values) if !values.is_empty() => Ok(()),
                        _ => Err(format!("no values: {data}")),
                    }),
                None => prometheus.query(&expr).and_then(|data| {
                    let result = data["result"].as_array().cloned().unwrap_or_default();
                    let values: Vec<&str> = result
                        .iter()
                        .filter_map(|r| r["value"][1].as_str())
                        .collect();
                    if result.is_empty() {
                        Err("empty result".to_string())
                    } else if values
                        .iter()
                        .all(|v| v.parse::<f64>().map_or(true, f64::is_nan))
                    {
                        Err(format!("only NaN: {data}"))
                    } else {
                        Ok(())
                    }
                }),
            };
            match answer {
                Ok(()) => eprintln!("ok: {}", query.place),
                Err(e) => failures.push(format!("{}: {expr}\n    -> {e}", query.place)),
            }
        }
        assert!(
            failures.is_empty(),
            "dashboard queries without data in Prometheus:\n{}\n{}",
            failures.join("\n"),
            prometheus.process.log_tail()
        );
        eprintln!(
            "all {} dashboard queries answered with data by Prometheus",
            queries.len()
        );
    }
    eprintln!("dashboard test took {:.1?}", started.elapsed());
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (route, le) (rate(causeway_statement_duration_seconds_bucket{instance=~"$instance", route="x"}[$__rate_interval])))"#
        ),
        ["causeway_statement_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            r#"sum(rate(a_total{reason!~"write|transaction"}[5m])) / on (instance) group_left (server) sum without (x) (b{c="by (d)"}) > bool 0.5 or vector(1) offset 1m"#
        ),
        ["a_total", "b"]
    );
    assert_eq!(
        names("max(up) and ignoring(job) c:recorded:rate5m + 1e3"),
        ["c:recorded:rate5m", "up"]
    );
    assert_eq!(
        parse_label_values(
            r#"label_values(causeway_statements_total{instance=~"$instance"}, server)"#
        ),
        Some((
            r#"causeway_statements_total{instance=~"$instance"}"#.to_string(),
            "server".to_string()
        ))
    );
}

#[test]
fn a_missing_metric_is_reported() {
    let queries = vec![Query {
        place: "panel \"x\" target A".to_string(),
        expr: "sum(rate(causeway_statements_total[1m])) / sum(rate(causeway_no_such_total[1m]))"
            .to_string(),
        label: None,
    }];
    let exported: BTreeSet<String> = ["causeway_statements_total".to_string()].into();
    let missing = missing_metrics(&queries, &exported);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].starts_with("causeway_no_such_total"),
        "{missing:?}"
    );
}

#[test]
fn scrape_lines_are_parsed() {
    let samples = parse_scrape(
        "# TYPE x counter\nx{a=\"1\",b=\"q\\\"z\"} 3\n\ny_bucket{le=\"+Inf\"} 7\nz 1.5e3\n",
    );
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0].labels["b"], "q\"z");
    assert_eq!(sample_sum(&samples, "x", &[("a", "1")]), Some(3.0));
    assert_eq!(
        sample_sum(&samples, "y_bucket", &[("le", "+Inf")]),
        Some(7.0)
    );
    assert_eq!(sample_sum(&samples, "z", &[]), Some(1500.0));
    assert_eq!(sample_sum(&samples, "x", &[("a", "2")]), None);
}

/// The dashboard is well formed: unique panel ids that do not overlap on the
/// 24-column grid, every panel and target on the `DS_PROMETHEUS` data source
/// variable (which defaults to the provisioned uid), unique refIds.
#[test]
fn dashboard_is_well_formed() {
    let dashboard = load_dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert_eq!(dashboard["uid"], "causeway");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let ds = variables
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(
        ds["current"]["value"], "prometheus",
        "default: the provisioned uid"
    );

    let datasource = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut ids = BTreeSet::new();
    let mut rects: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    for panel in all_panels(&dashboard) {
        let title = panel["title"]
            .as_str()
            .expect("every panel has a title")
            .to_string();
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id at {title}"
        );
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().expect("x"),
            grid["y"].as_u64().expect("y"),
            grid["w"].as_u64().expect("w"),
            grid["h"].as_u64().expect("h"),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {grid}");
        for (other, ox, oy, ow, oh) in &rects {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        rects.push((title.clone(), x, y, w, h));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], datasource, "{title}: datasource");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(
                target["datasource"], datasource,
                "{title}: target datasource"
            );
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}: refIds"
            );
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: every query filters on $instance: {expr}"
            );
        }
    }
}

/// The provisioning files, scrape config and compose file agree with each
/// other and with the dashboard.
#[test]
fn provisioning_matches_the_dashboard() {
    let read =
        |p: &str| fs::read_to_string(repo_path(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
    let datasource = read("grafana/provisioning/datasources/prometheus.yml");
    assert!(datasource.contains("uid: prometheus"), "datasource uid");
    assert!(
        datasource.contains("url: http://prometheus:9090"),
        "datasource url"
    );
    let provider = read("grafana/provisioning/dashboards/causeway.yml");
    assert!(
        provider.contains("path: /etc/grafana/dashboards"),
        "provider path"
    );
    let compose = read("grafana/docker-compose.yml");
    for needle in [
        "./dashboards:/etc/grafana/dashboards:ro",
        "./provisioning:/etc/grafana/provisioning:ro",
        "./prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "host.docker.internal:host-gateway",
        "GF_AUTH_ANONYMOUS_ENABLED: \"true\"",
        "GF_AUTH_ANONYMOUS_ORG_ROLE: Viewer",
    ] {
        assert!(
            compose.contains(needle),
            "docker-compose.yml lacks {needle:?}"
        );
    }
    let readme = read("grafana/README.md");
    for query in dashboard_queries(&load_dashboard()) {
        if query.label.is_none() {
            assert!(
                readme.contains(&format!("`{}`", query.expr)),
                "grafana/README.md does not list the query of {}: {}",
                query.place,
                query.expr
            );
        }
    }
    let scrape = read("grafana/prometheus.yml");
    assert!(
        scrape.contains("host.docker.internal:9187"),
        "scrape target"
    );
    assert!(scrape.contains("scrape_interval: 5s"), "scrape interval");
    if let Some(promtool) = find_on_path("promtool") {
        let out = Command::new(promtool)
            .args(["check", "config"])
            .arg(repo_path("grafana/prometheus.yml"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool check config grafana/prometheus.yml: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
