//! Limits against abuse: clients per role and per database, and clients
//! that sit idle inside a transaction, holding a server connection. Each
//! refusal is in Postgres's own words. Against a real primary and two
//! streaming replicas.

mod support;

use std::time::Duration;

use support::{TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

async fn refusal(port: u16) -> String {
    match support::try_connect(port, APP_USER, APP_PASSWORD, APP_DB).await {
        Ok(_) => "connected".to_string(),
        Err(e) => support::describe_error(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_per_role_and_per_database_are_capped() {
    for (per_user, per_database, expected) in [
        (2, 0, "FATAL 53300: too many connections for role \"app\""),
        (
            0,
            2,
            "FATAL 53300: too many connections for database \"app\"",
        ),
    ] {
        let proxy = TestProxy::start_with(cluster(), |c| {
            c.proxy.max_client_connections_per_user = per_user;
            c.proxy.max_client_connections_per_database = per_database;
        });
        let first = support::connect_app(proxy.port, APP_DB, None).await;
        let _second = support::connect_app(proxy.port, APP_DB, None).await;
        assert_eq!(refusal(proxy.port).await, expected);
        // One leaves: there is room again once the proxy has seen it go.
        drop(first);
        let mut seen = String::new();
        for _ in 0..100 {
            seen = refusal(proxy.port).await;
            if seen == "connected" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, "connected");
        proxy.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_is_closed_and_its_work_rolled_back() {
    cluster().psql_db(
        cluster().primary_port(),
        APP_DB,
        "CREATE TABLE IF NOT EXISTS idle_notes (id bigserial PRIMARY KEY, body text)",
    );
    let proxy = TestProxy::start_with(cluster(), |c| {
        c.proxy.client_idle_in_transaction_timeout_ms = 300;
    });
    let idler = support::connect_app(proxy.port, APP_DB, None).await;
    idler
        .batch_execute("BEGIN; INSERT INTO idle_notes (body) VALUES ('never committed')")
        .await
        .expect("open a transaction");
    // Idle outside a transaction: no limit.
    let patient = support::connect_app(proxy.port, APP_DB, None).await;
    // The scenario: both sit idle past the limit.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let err = idler
        .batch_execute("COMMIT")
        .await
        .expect_err("closed for idling in a transaction");
    let text = support::describe_error(&err);
    assert!(
        text.contains("57P05") || idler.is_closed(),
        "not closed for idling: {text}"
    );
    patient
        .simple_query("SELECT 1")
        .await
        .expect("idle at rest is fine");
    let direct = support::connect(cluster().primary_port(), APP_USER, APP_PASSWORD, APP_DB).await;
    let left: i64 = direct
        .query_one(
            "SELECT count(*) FROM idle_notes WHERE body = 'never committed'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the idle transaction's write was not rolled back");
    proxy.stop();
}

/// A statement that waits longer than `query_wait_timeout_ms` for a server
/// connection gets an ERROR (53300), and its client stays connected: its
/// next statement runs once a connection is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_waits_for_a_server_connection_only_so_long() {
    let proxy = TestProxy::start_with(cluster(), |c| {
        c.pool.max_server_connections = 1;
        c.pool.query_wait_timeout_ms = 300;
    });
    let holder = support::connect_app(proxy.port, APP_DB, None).await;
    let waiter = support::connect_app(proxy.port, APP_DB, None).await;
    // The one primary connection is held by an open block.
    holder
        .batch_execute("BEGIN; SELECT txid_current()")
        .await
        .expect("block");
    let started = std::time::Instant::now();
    let err = waiter
        .batch_execute("SELECT txid_current()")
        .await
        .expect_err("no connection free");
    let waited = started.elapsed();
    let db = err.as_db_error().expect("an ERROR, not a closed session");
    assert_eq!(
        (db.severity(), db.code().code()),
        ("ERROR", "53300"),
        "{db:?}"
    );
    assert!(
        db.message()
            .contains("within 300 ms (query_wait_timeout_ms)"),
        "{db:?}"
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    holder.batch_execute("COMMIT").await.expect("commit");
    let row = waiter
        .query_one("SELECT txid_current() > 0", &[])
        .await
        .expect("the same client, once a connection is free");
    assert!(row.get::<_, bool>(0));
    proxy.stop();
}
