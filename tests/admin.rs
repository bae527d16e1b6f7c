//! The admin console (database `causeway`) and RELOAD, against a real
//! cluster through the real `causeway` binary.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{config_text, connect, try_connect, TestCluster, APP_DB, APP_PASSWORD, APP_USER};
use tokio_postgres::{Client, SimpleQueryMessage};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_one_client_and_shutdown_drains_the_proxy() {
    let (_dir, _path, mut proxy) = start_on_shared(2);
    let (victim, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.port)
        .user(APP_USER)
        .password(APP_PASSWORD)
        .dbname(APP_DB)
        .application_name("victim")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("victim connects");
    tokio::spawn(connection);
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
