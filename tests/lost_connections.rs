//! A server connection closed between units (`pg_terminate_backend`, a
//! server restart, an idle timeout) is not the client's problem: its next
//! unit gets a new connection, with the session's settings replayed, and
//! no error. Against a real primary and two streaming replicas, in both
//! pool modes.

mod support;

use std::time::Duration;

use causeway::config::PoolMode;
use support::{TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio_postgres::Client;

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

/// Which backend answers, and what the session's settings are there.
async fn backend(client: &Client, hint: &str) -> (i32, String) {
    let row = client
        .query_one(
            &format!("{hint} SELECT pg_backend_pid(), current_setting('statement_timeout')"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{hint}: {}", support::describe_error(&e)));
    (row.get(0), row.get(1))
}

/// Terminates `pid` on the server at `port` and waits until it is gone.
async fn terminate(port: u16, pid: i32) {
    let admin = support::connect(port, APP_USER, APP_PASSWORD, APP_DB).await;
    let done: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(done, "backend {pid} was not there to terminate");
    let mut gone = false;
    for _ in 0..200 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if left == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "backend {pid} did not exit");
}

async fn survives_terminated_connections(mode: PoolMode) {
    let proxy = TestProxy::start_with(cluster(), |c| c.pool.mode = mode);
    cluster().wait_replicas_caught_up();
    let client = support::connect_app(proxy.port, APP_DB, None).await;
    client
        .batch_execute("SET statement_timeout = '12345ms'")
        .await
        .expect("set");
    for (hint, port) in [
        ("/* causeway: primary */", cluster().primary_port()),
        ("/* causeway: replica */", 0),
    ] {
        let (pid, setting) = backend(&client, hint).await;
        assert_eq!(setting, "12345ms");
        let port = if port == 0 {
            // The replica that answered: the one with that backend.
            let mut found = None;
            for p in cluster().replica_ports() {
                let direct = support::connect(p, APP_USER, APP_PASSWORD, APP_DB).await;
                let n: i64 = direct
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                        &[&pid],
                    )
                    .await
                    .expect("activity")
                    .get(0);
                if n == 1 {
                    found = Some(p);
                }
            }
            found.expect("the replica backend")
        } else {
            port
        };
        terminate(port, pid).await;
        for _ in 0..3 {
            let (new_pid, setting) = backend(&client, hint).await;
            assert_ne!(
                new_pid, pid,
                "{mode:?}, {hint}: the terminated backend answered"
            );
            assert_eq!(
                setting, "12345ms",
                "{mode:?}, {hint}: the setting was replayed"
            );
        }
    }
    assert!(!client.is_closed());
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_replaces_a_terminated_connection() {
    survives_terminated_connections(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_replaces_a_terminated_connection() {
    survives_terminated_connections(PoolMode::Transaction).await;
}
