//! Roles are found, not configured: the primary is whichever server says it
//! is not in recovery. When the primary is gone and a replica is promoted,
//! writes follow it with no restart and no reload; while two servers claim
//! the role, writes are refused rather than sent to both. On clusters of
//! their own, since they promote replicas.

mod support;

use std::time::{Duration, Instant};

use causeway::replicas::WriteTarget;
use support::{wait_for, ClusterOptions, TestCluster, TestProxy, APP_DB};
use tokio_postgres::Client;

/// Waits until the proxy's monitor sends writes to `target`.
fn wait_write_target(proxy: &TestProxy, what: &str, target: WriteTarget) {
    wait_for(what, Duration::from_secs(30), || {
        match proxy.proxy.monitor.positions().write_target() {
            seen if seen == target => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

fn setup(cluster: &TestCluster) {
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE failover_notes (id bigserial PRIMARY KEY, body text NOT NULL)",
    );
    cluster.wait_replicas_caught_up();
}

/// Inserts a note; the port of the server that took it.
async fn write(client: &Client, body: &str) -> Result<i32, tokio_postgres::Error> {
    client
        .query_one(
            "INSERT INTO failover_notes (body) VALUES ($1) RETURNING inet_server_port()",
            &[&body],
        )
        .await
        .map(|row| row.get(0))
}

async fn count(client: &Client, body: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM failover_notes WHERE body = $1",
            &[&body],
        )
        .await
        .unwrap_or_else(|e| panic!("read of {body:?}: {}", support::describe_error(&e)))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica() {
    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    let session = support::connect_app(proxy.port, APP_DB, None).await;
    assert_eq!(
        write(&session, "before").await.expect("write"),
        i32::from(cluster.primary_port())
    );

    // The primary dies; replica0 is promoted.
    cluster.stop_server("primary");
    cluster.promote("replica0");
    let promoted = Instant::now();
    let new_primary = i32::from(cluster.replica_port(0));
    let mut attempts = 0;
    let port = loop {
        attempts += 1;
        match write(&session, "after").await {
            Ok(port) => break port,
            Err(e) => {
                assert_eq!(
                    e.code().map(|c| c.code()),
                    Some("57P03"),
                    "{}",
                    support::describe_error(&e)
                );
                assert!(
                    promoted.elapsed() < Duration::from_secs(30),
                    "writes never reached the promoted replica"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!(
        "failover: first write on the promoted replica {:?} after the promotion ({attempts} attempts)",
        promoted.elapsed()
    );
    assert_eq!(port, new_primary, "the write went to the promoted replica");
    // The session reads its write (the other replica follows the old
    // timeline and never replays it: the read goes where it is).
    assert_eq!(count(&session, "after").await, 1);
    assert_eq!(count(&session, "before").await, 1);
    // A new client writes there too.
    let newcomer = support::connect_app(proxy.port, APP_DB, None).await;
    assert_eq!(
        write(&newcomer, "newcomer").await.expect("write"),
        new_primary
    );
    assert_eq!(count(&newcomer, "newcomer").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_get_no_writes_until_one_is_gone() {
    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    let session = support::connect_app(proxy.port, APP_DB, None).await;
    write(&session, "before").await.expect("write");

    // Split brain: replica0 promoted while the primary is still up.
    cluster.promote("replica0");
    wait_write_target(
        &proxy,
        "the monitor to see replica0 promoted",
        WriteTarget::SplitBrain,
    );
    let err = write(&session, "split")
        .await
        .expect_err("no write while two servers claim the primary");
    assert_eq!(err.code().map(|c| c.code()), Some("57P03"));
    assert!(
        support::describe_error(&err).contains("two servers claim to be the primary"),
        "{}",
        support::describe_error(&err)
    );
    // Nothing was written anywhere (read on a connection of its own).
    let reader = support::connect_app(proxy.port, APP_DB, None).await;
    assert_eq!(count(&reader, "split").await, 0);

    // The old primary goes: replica0 takes the writes.
    cluster.stop_server("primary");
    wait_write_target(&proxy, "writes to go to replica0", WriteTarget::Promoted(0));
    assert_eq!(
        write(&session, "after").await.expect("write"),
        i32::from(cluster.replica_port(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_under_pgbench_fails_no_transaction() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let proxy = TestProxy::start(&cluster);
    support::pgbench(proxy.port, &["-i", "-s", "1", "-q"]);
    cluster.wait_replicas_caught_up();
    let port = proxy.port;
    let load = std::thread::spawn(move || {
        support::pgbench(port, &["-c", "8", "-j", "2", "-T", "8", "-n"])
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // PAUSE, let replica0 catch up, promote it, stop the old primary,
    // RESUME.
    let console = support::connect(
        proxy.port,
        support::APP_USER,
        support::APP_PASSWORD,
        "causeway",
    )
    .await;
    console.simple_query("PAUSE").await.expect("PAUSE");
    // A planned switchover promotes a replica that has every commit.
    cluster.wait_replica_caught_up(0);
    cluster.promote("replica0");
    cluster.stop_server("primary");
    wait_write_target(&proxy, "writes to go to replica0", WriteTarget::Promoted(0));
    console.simple_query("RESUME").await.expect("RESUME");
    let out = load.join().expect("pgbench thread");
    assert!(
        out.contains("number of failed transactions: 0 (0.000%)"),
        "transactions failed across the switchover:\n{out}"
    );
    // And the writes after it are on the new primary.
    let direct = support::connect(
        cluster.replica_port(0),
        support::APP_USER,
        support::APP_PASSWORD,
        APP_DB,
    )
    .await;
    let history: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("history")
        .get(0);
    let processed: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(processed > 0);
    assert_eq!(
        history, processed,
        "every committed transaction is on the new primary"
    );
}
