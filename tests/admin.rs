//! The admin console (database `causeway`) and RELOAD, against a real
//! cluster through the real `causeway` binary. Every command is asked
//! through the simple protocol (`simple_query`, psql) and through prepared
//! statements (tokio-postgres's `query` and `execute`, which Parse,
//! Describe, Bind and Execute as psycopg's `prepare=True` and JDBC do),
//! in plain text and over TLS.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    config_text, connect, try_connect, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER,
};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The commands that answer with rows, as `SHOW HELP` lists them.
const SHOWS: &[&str] = &[
    "SHOW HELP",
    "SHOW CLIENTS",
    "SHOW SERVERS",
    "SHOW REPLICAS",
    "SHOW POOLS",
    "SHOW DATABASES",
    "SHOW STATS",
    "SHOW CONFIG",
    "SHOW VERSION",
];

/// A `causeway` process; killed when dropped.
struct Running {
    child: Child,
    port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test config with a fixed listen port and metrics off (tests run in parallel).
fn config_for(cluster: &TestCluster, port: u16, replicas: usize) -> String {
    let text = config_text(cluster).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    // Keep only the first `replicas` [[replicas]] tables.
    let mut kept = String::new();
    let mut seen = 0;
    for block in text.split("\n[[replicas]]") {
        if kept.is_empty() {
            kept.push_str(block);
        } else if seen < replicas {
            kept.push_str("\n[[replicas]]");
            kept.push_str(block);
            seen += 1;
        } else {
            seen += 1;
        }
    }
    kept.push_str("\n[metrics]\nenabled = false\n");
    kept
}

/// Starts causeway on the shared cluster with `replicas` replicas; the
/// config file lives in the returned directory.
fn start_on_shared(replicas: usize) -> (tempfile::TempDir, std::path::PathBuf, Running) {
    let cluster = TestCluster::shared();
    let dir = tempfile::tempdir().expect("dir");
    let port = support::free_port();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_for(cluster, port, replicas)).expect("config");
    let proxy = start(&path, port);
    (dir, path, proxy)
}

fn start(config_path: &std::path::Path, port: u16) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("causeway starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "causeway did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Running { child, port }
}

async fn console(port: u16, sql: &str) -> Vec<Vec<Option<String>>> {
    let client = connect(port, APP_USER, APP_PASSWORD, "causeway").await;
    rows(&client, sql).await
}

async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .expect("console command")
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Column names and rows of `sql` through the simple protocol.
async fn simple(client: &Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let messages = client.simple_query(sql).await.expect(sql);
    let columns = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(columns) => {
                Some(columns.iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .unwrap_or_default();
    (columns, rows(client, sql).await)
}

/// Column names and rows of `sql` as a prepared statement: tokio-postgres
/// Parses and Describes it, then Binds (asking for binary results) and
/// Executes it.
async fn prepared(client: &Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let statement = client.prepare(sql).await.expect(sql);
    let columns = statement
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let rows = client
        .query(&statement, &[])
        .await
        .expect(sql)
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect();
    (columns, rows)
}

/// psql (from `$PG_BIN` or the PATH) with a libpq connection string;
/// stdout, or stderr as the error.
fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let psql = std::env::var("PG_BIN")
        .map(|bin| format!("{bin}/psql"))
        .unwrap_or_else(|_| "psql".to_string());
    let out = Command::new(psql)
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn console_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={APP_USER} dbname=causeway")
}

/// Waits until SHOW REPLICAS lists `count` healthy replicas.
async fn wait_healthy(port: u16, count: usize) -> Vec<Vec<Option<String>>> {
    let started = Instant::now();
    loop {
        let replicas = console(port, "SHOW REPLICAS").await;
        let healthy = replicas
            .iter()
            .filter(|r| r[2].as_deref() == Some("true"))
            .count();
        if replicas.len() == count && healthy == count {
            return replicas;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "replicas never healthy: {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_live_replicas_clients_and_stats() {
    let cluster = TestCluster::shared();
    let (_dir, _path, proxy) = start_on_shared(2);
    let replicas = wait_healthy(proxy.port, 2).await;
    let primary_lsn = cluster.primary_lsn();
    for (i, replica) in replicas.iter().enumerate() {
        assert_eq!(replica[0].as_deref(), Some(format!("replica{i}").as_str()));
        assert_eq!(
            replica[1].as_deref(),
            Some(format!("127.0.0.1:{}", cluster.replica_port(i)).as_str())
        );
        let replayed: support::Lsn = replica[3].as_deref().unwrap_or("").parse().expect("an LSN");
        assert!(
            replayed.0 > 0 && replayed <= primary_lsn,
            "{replayed} vs {primary_lsn}"
        );
    }
    let app = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    app.simple_query("SELECT 1").await.expect("a read");
    let clients = console(proxy.port, "SHOW CLIENTS").await;
    assert_eq!(clients.len(), 1, "the app client is listed: {clients:?}");
    assert_eq!(clients[0][1].as_deref(), Some("app"));
    let stats = console(proxy.port, "SHOW STATS").await;
    let clients_total = stats
        .iter()
        .find(|r| r[0].as_deref() == Some("clients_total"))
        .and_then(|r| r[1].clone());
    assert_eq!(clients_total.as_deref(), Some("1"));
    let version = console(proxy.port, "SHOW VERSION").await;
    assert!(version[0][0]
        .as_deref()
        .unwrap_or("")
        .starts_with("causeway "));
    let servers = console(proxy.port, "show servers;").await;
    assert!(!servers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admins_are_refused() {
    let (_dir, _path, proxy) = start_on_shared(2);
    let err = try_connect(
        proxy.port,
        support::MD5_USER,
        support::MD5_PASSWORD,
        "causeway",
    )
    .await
    .map(|_| ())
    .expect_err("md5user is no admin");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42501"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removes_a_replica_without_dropping_clients() {
    let cluster = TestCluster::shared();
    let (_dir, path, proxy) = start_on_shared(2);
    wait_healthy(proxy.port, 2).await;
    let app = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    app.simple_query("SELECT 1").await.expect("before reload");

    std::fs::write(&path, config_for(cluster, proxy.port, 1)).expect("config with one replica");
    let admin = connect(proxy.port, APP_USER, APP_PASSWORD, "causeway").await;
    let done = admin.simple_query("RELOAD").await.expect("reload");
    assert!(done
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    wait_healthy(proxy.port, 1).await;
    app.simple_query("SELECT 1")
        .await
        .expect("the old client still works");

    std::fs::write(&path, "[proxy]\nlisten = 5\n").expect("broken config");
    let err = admin.simple_query("RELOAD").await.expect_err("bad config");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("listen"), "{message}");
    assert_eq!(
        console(proxy.port, "SHOW REPLICAS").await.len(),
        1,
        "the old config stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_transactions_finish_then_closes() {
    let (_dir, _path, mut proxy) = start_on_shared(2);
    let busy = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    let idle = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    busy.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open transaction");
    let pid = proxy.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New clients are turned away at once.
    assert!(try_connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB)
        .await
        .is_err());
    // An idle client was told why it is closed.
    let err = idle
        .simple_query("SELECT 1")
        .await
        .expect_err("idle client closed");
    assert!(err.is_closed() || err.as_db_error().is_some(), "{err}");
    // The open transaction finishes normally.
    busy.simple_query("SELECT 2")
        .await
        .expect("still inside the transaction");
    busy.batch_execute("COMMIT")
        .await
        .expect("commit goes through");
    let exited = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                return Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("wait task");
    let status = exited.expect("causeway exits once its last transaction ends");
    assert!(status.success(), "{status:?}");
}

/// A client connected with `application_name` `name`.
async fn named_client(port: u16, name: &str) -> Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(APP_USER)
        .password(APP_PASSWORD)
        .dbname(APP_DB)
        .application_name(name)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"));
    tokio::spawn(connection);
    client
}

/// Waits until `SHOW CLIENTS` shows the client named `name` in `state`.
async fn wait_state(port: u16, name: &str, state: &str) {
    let started = Instant::now();
    loop {
        let clients = console(port, "SHOW CLIENTS").await;
        let row = clients
            .iter()
            .find(|c| c[4].as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} in SHOW CLIENTS: {clients:?}"));
        if row[10].as_deref() == Some(state) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} never showed {state:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_says_what_each_client_is_doing() {
    let (_dir, _path, proxy) = start_on_shared(0);
    let port = proxy.port;
    let (columns, _) = simple(
        &connect(port, APP_USER, APP_PASSWORD, "causeway").await,
        "SHOW CLIENTS",
    )
    .await;
    assert_eq!(columns[10], "state", "{columns:?}");
    let idle = named_client(port, "idle").await;
    idle.simple_query("SELECT 1").await.expect("a read");
    wait_state(port, "idle", "idle").await;
    let in_block = named_client(port, "in_block").await;
    in_block.simple_query("BEGIN").await.expect("BEGIN");
    in_block
        .simple_query("SELECT 1")
        .await
        .expect("a read in the block");
    wait_state(port, "in_block", "idle in transaction").await;
    let busy = named_client(port, "busy").await;
    let sleeping =
        tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(1)").await.map(|_| busy) });
    wait_state(port, "busy", "active").await;
    in_block.simple_query("COMMIT").await.expect("COMMIT");
    wait_state(port, "in_block", "idle").await;
    let _busy = sleeping.await.expect("task").expect("the sleep ends");
    wait_state(port, "busy", "idle").await;
    // Held by PAUSE, then let go by RESUME.
    let admin = connect(port, APP_USER, APP_PASSWORD, "causeway").await;
    rows(&admin, "PAUSE").await;
    let held = tokio::spawn(async move { idle.simple_query("SELECT 2").await.map(|_| idle) });
    wait_state(port, "idle", "paused").await;
    rows(&admin, "RESUME").await;
    let _idle = held
        .await
        .expect("task")
        .expect("the held read runs after RESUME");
    wait_state(port, "idle", "idle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_one_client_and_shutdown_drains_the_proxy() {
    let (_dir, _path, mut proxy) = start_on_shared(2);
    let victim = named_client(proxy.port, "victim").await;
    let bystander = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    let clients = console(proxy.port, "SHOW CLIENTS").await;
    let pid = clients
        .iter()
        .find(|c| c.iter().any(|v| v.as_deref() == Some("victim")))
        .and_then(|c| c[0].clone())
        .expect("the victim in SHOW CLIENTS");
    // The console's own connection is not in SHOW CLIENTS; an unknown pid
    // is an error that says so.
    let admin = connect(proxy.port, APP_USER, APP_PASSWORD, "causeway").await;
    let err = admin
        .simple_query("KILL 999999999")
        .await
        .expect_err("no such client");
    assert!(support::describe_error(&err).contains("no client with pid"));
    rows(&admin, &format!("KILL {pid}")).await;
    let err = victim
        .simple_query("SELECT 1")
        .await
        .expect_err("a killed client is gone");
    assert!(
        err.as_db_error()
            .is_none_or(|db| db.code().code() == "57P01"),
        "{}",
        support::describe_error(&err)
    );
    bystander
        .simple_query("SELECT 1")
        .await
        .expect("the others go on");

    rows(&admin, "SHUTDOWN").await;
    let status = tokio::task::spawn_blocking(move || proxy.child.wait())
        .await
        .expect("wait")
        .expect("exit status");
    assert!(
        status.success(),
        "causeway exits cleanly after SHUTDOWN: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_simple_and_prepared_queries_alike() {
    let (_dir, _path, mut proxy) = start_on_shared(2);
    wait_healthy(proxy.port, 2).await;
    let app = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    app.simple_query("SELECT 1").await.expect("a read");
    let admin = connect(proxy.port, APP_USER, APP_PASSWORD, "causeway").await;

    for sql in SHOWS {
        let (simple_columns, simple_rows) = simple(&admin, sql).await;
        let (prepared_columns, prepared_rows) = prepared(&admin, sql).await;
        assert!(!simple_columns.is_empty(), "{sql}");
        assert_eq!(simple_columns, prepared_columns, "{sql}");
        assert_eq!(simple_rows.len(), prepared_rows.len(), "{sql}");
        // Clocks and LSNs move between the two asks (other tests write on
        // the shared cluster); the rest is the same.
        if !["SHOW CLIENTS", "SHOW REPLICAS", "SHOW STATS"].contains(sql) {
            assert_eq!(simple_rows, prepared_rows, "{sql}");
        }
    }
    let (_, replicas) = prepared(&admin, "show replicas;").await;
    let names: Vec<_> = replicas.iter().map(|r| r[0].as_deref()).collect();
    assert_eq!(names, [Some("replica0"), Some("replica1")]);
    // A statement prepared once runs again, as psycopg's prepare=True and
    // JDBC's server-prepared statements do.
    let statement = admin.prepare("SHOW REPLICAS").await.expect("prepare");
    for _ in 0..3 {
        assert_eq!(admin.query(&statement, &[]).await.expect("run").len(), 2);
    }

    // The commands without rows, prepared; a driver's SET is accepted.
    for sql in ["PAUSE", "RESUME", "RELOAD", "SET extra_float_digits = 3"] {
        admin.execute(sql, &[]).await.expect(sql);
    }
    app.simple_query("SELECT 1")
        .await
        .expect("the app goes on after PAUSE and RESUME");

    // An unknown command fails at Parse, with the commands in its hint,
    // and the connection goes on.
    let err = admin.query("SHOW NOTHING", &[]).await.expect_err("unknown");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "42601");
    assert!(db.message().contains("SHOW NOTHING"), "{}", db.message());
    assert!(
        db.hint().is_some_and(|h| h.contains("SHOW POOLS")),
        "{:?}",
        db.hint()
    );
    let err = admin
        .execute("KILL 999999999", &[])
        .await
        .expect_err("no such client");
    assert!(support::describe_error(&err).contains("no client with pid"));
    let (_, version) = prepared(&admin, "SHOW VERSION").await;
    assert_eq!(version.len(), 1, "the console answers after errors");

    let (_, clients) = prepared(&admin, "SHOW CLIENTS").await;
    let pid = clients[0][0].clone().expect("the app's pid");
    admin
        .execute(format!("KILL {pid}").as_str(), &[])
        .await
        .expect("KILL, prepared");
    app.simple_query("SELECT 1")
        .await
        .expect_err("a killed client is gone");

    admin.execute("SHUTDOWN", &[]).await.expect("SHUTDOWN");
    let status = tokio::task::spawn_blocking(move || proxy.child.wait())
        .await
        .expect("wait")
        .expect("exit status");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_databases_and_help_as_pgbouncer_shows_them() {
    let cluster = TestCluster::shared();
    let (_dir, _path, proxy) = start_on_shared(2);
    wait_healthy(proxy.port, 2).await;
    let app = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    app.simple_query("SELECT 1").await.expect("a read");
    let admin = connect(proxy.port, APP_USER, APP_PASSWORD, "causeway").await;

    let (columns, pools) = simple(&admin, "SHOW POOLS").await;
    assert_eq!(
        columns,
        [
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "sv_used",
            "maxwait",
            "pool_mode"
        ]
    );
    let pool = pools
        .iter()
        .find(|p| p[0].as_deref() == Some(APP_DB) && p[1].as_deref() == Some(APP_USER))
        .unwrap_or_else(|| panic!("a pool for app/app: {pools:?}"));
    let number = |v: &Option<String>| {
        v.as_deref()
            .unwrap_or("")
            .parse::<usize>()
            .expect("a count")
    };
    assert_eq!(number(&pool[2]), 1, "one client: {pool:?}");
    assert_eq!(pool[3], None, "waiting clients are not counted: {pool:?}");
    assert!(
        number(&pool[4]) + number(&pool[5]) >= 1,
        "the read's connection: {pool:?}"
    );
    assert_eq!(pool[8].as_deref(), Some("transaction"));

    let (columns, databases) = simple(&admin, "SHOW DATABASES").await;
    assert_eq!(&columns[..4], ["name", "host", "port", "database"]);
    let app_rows: Vec<_> = databases
        .iter()
        .filter(|d| d[0].as_deref() == Some(APP_DB))
        .collect();
    let mut ports: Vec<u16> = vec![cluster.primary_port()];
    ports.extend(cluster.replica_ports());
    assert_eq!(
        app_rows.len(),
        ports.len(),
        "app on every server: {databases:?}"
    );
    for (row, port) in app_rows.iter().zip(&ports) {
        assert_eq!(row[1].as_deref(), Some("127.0.0.1"));
        assert_eq!(row[2].as_deref(), Some(port.to_string().as_str()));
        assert_eq!(row[3].as_deref(), Some(APP_DB));
    }
    assert_eq!(app_rows[0][5].as_deref(), Some("primary"));
    let console_row = databases.last().expect("the console's own row");
    assert_eq!(console_row[0].as_deref(), Some("causeway"));
    assert_eq!(
        console_row[2].as_deref(),
        Some(proxy.port.to_string().as_str())
    );

    // SHOW HELP lists every command, and each SHOW it lists answers.
    let (_, help) = simple(&admin, "SHOW HELP").await;
    let listed: Vec<&str> = help.iter().filter_map(|r| r[0].as_deref()).collect();
    for sql in SHOWS {
        assert!(listed.contains(sql), "{sql} in {listed:?}");
    }
    for command in ["RELOAD", "PAUSE", "RESUME", "KILL pid", "SHUTDOWN"] {
        assert!(listed.contains(&command), "{command} in {listed:?}");
    }
    // Several commands in one Query, as psql -c sends them.
    let both = admin
        .simple_query("SHOW VERSION; SHOW HELP")
        .await
        .expect("two commands");
    let completes = both
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completes, 2);
    let err = admin.simple_query("SHOW LISTS").await.expect_err("unknown");
    let hint = err.as_db_error().and_then(|e| e.hint()).unwrap_or("");
    for sql in SHOWS {
        assert!(hint.contains(sql), "{sql} in the hint: {hint}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_every_command() {
    let (_dir, _path, proxy) = start_on_shared(2);
    wait_healthy(proxy.port, 2).await;
    let conninfo = console_conninfo(proxy.port);
    for sql in SHOWS {
        let out = psql(&conninfo, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        // Nothing is connected but the console: no clients, servers or pools.
        let empty = ["SHOW CLIENTS", "SHOW SERVERS", "SHOW POOLS"].contains(sql);
        assert_eq!(out.is_empty(), empty, "{sql}: {out}");
    }
    let replicas = psql(&conninfo, "SHOW REPLICAS").expect("SHOW REPLICAS");
    let names: Vec<_> = replicas
        .lines()
        .map(|l| l.split('|').next().unwrap_or(""))
        .collect();
    assert_eq!(names, ["replica0", "replica1"]);
    for sql in ["PAUSE", "RESUME", "RELOAD", "SET application_name = 'psql'"] {
        psql(&conninfo, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let err = psql(&conninfo, "SHOW LISTS").expect_err("unknown");
    assert!(
        err.contains("unknown console command") && err.contains("HINT:"),
        "{err}"
    );
}

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, as
/// PEM files in `dir`: (ca.pem, server.pem, server.key).
fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Not rcgen's default name, which the server certificate also has.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "causeway console test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, cert.pem()).expect("write certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

#[test]
fn the_console_answers_over_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = certificates(dir.path());
    let proxy = TestProxy::start_with(TestCluster::shared(), |c| {
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
        c.tls.client_mode = Some(causeway::tls::ClientMode::Require);
    });
    let tls = format!(
        "{} sslmode=verify-full sslrootcert={} channel_binding=require",
        console_conninfo(proxy.port).replace("host=127.0.0.1", "host=localhost hostaddr=127.0.0.1"),
        ca.display()
    );
    let replicas = psql(&tls, "SHOW REPLICAS").expect("psql over TLS");
    assert_eq!(replicas.lines().count(), 2, "{replicas}");

    // Prepared statements over TLS, with SCRAM-SHA-256-PLUS.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let roots = causeway::tls::ServerTls::new(
            causeway::tls::SslMode::VerifyFull,
            Some(ca.as_path()),
            "test.sslrootcert",
        )
        .expect("roots")
        .expect("tls");
        let connector = postgres_rustls::MakeTlsConnector::new(tokio_rustls::TlsConnector::from(
            roots.config.clone(),
        ));
        let (admin, connection) = tokio_postgres::Config::new()
            .host("localhost")
            .hostaddr(std::net::IpAddr::from([127, 0, 0, 1]))
            .port(proxy.port)
            .user(APP_USER)
            .password(APP_PASSWORD)
            .dbname("causeway")
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .channel_binding(tokio_postgres::config::ChannelBinding::Require)
            .connect(connector)
            .await
            .expect("the console over TLS");
        tokio::spawn(connection);
        let (_, replicas) = prepared(&admin, "SHOW REPLICAS").await;
        assert_eq!(replicas.len(), 2);
        let (_, pools) = simple(&admin, "SHOW POOLS").await;
        assert!(pools.iter().all(|p| p.len() == 9), "{pools:?}");
    });
}
