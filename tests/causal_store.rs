//! Several causeway instances, one causal view: with `[routing]
//! causal_store` pointing at Redis, a client id's write through one
//! instance is read through another, never stale, with replay paused on
//! every replica; without the store the same test reads stale. Redis
//! stopped mid-run costs no stale read and no error (reads go to the
//! primary), and reads go back to the replicas once it is back.

mod support;

use std::time::Duration;

use causeway::config::CausalScope;
use support::{ClusterOptions, TestCluster, TestProxy, APP_DB};
use tokio_postgres::Client;

fn instance(cluster: &TestCluster, store: bool) -> TestProxy {
    let redis = cluster.redis_port().expect("a cluster with Redis");
    TestProxy::start_with(cluster, |c| {
        c.routing.causal_scope = CausalScope::ClientId;
        if store {
            c.routing.causal_store = Some(format!("redis://127.0.0.1:{redis}/0"));
        }
    })
}

async fn client(port: u16, id: &str) -> Client {
    let c = support::connect_app(port, APP_DB, None).await;
    c.batch_execute(&format!("SET causeway.client_id = '{id}'"))
        .await
        .expect("client id");
    c
}

/// Writes through `writer`, reads through `reader`: whether the read saw
/// the write, and whether it ran on a replica.
async fn cycle(writer: &Client, reader: &Client) -> (bool, bool) {
    let id: i64 = writer
        .query_one("INSERT INTO store_notes DEFAULT VALUES RETURNING id", &[])
        .await
        .unwrap_or_else(|e| panic!("write: {}", support::describe_error(&e)))
        .get(0);
    let row = reader
        .query_one(
            "SELECT count(*) = 1, pg_is_in_recovery() FROM store_notes WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("read: {}", support::describe_error(&e)));
    (row.get(0), row.get(1))
}

/// Runs `n` cycles alternating instances; (stale reads, reads on replicas).
async fn cycles(a: &Client, b: &Client, n: usize) -> (usize, usize) {
    let (mut stale, mut on_replicas) = (0, 0);
    for i in 0..n {
        let (writer, reader) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let (saw, on_replica) = cycle(writer, reader).await;
        stale += usize::from(!saw);
        on_replicas += usize::from(on_replica);
    }
    (stale, on_replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_writes_through_another_instance() {
    let cluster = TestCluster::start(ClusterOptions {
        with_redis: true,
        ..ClusterOptions::default()
    });
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE store_notes (id bigserial PRIMARY KEY)",
    );
    cluster.wait_replicas_caught_up();

    // Without the store, instance B knows nothing of A's writes.
    {
        let (a, b) = (instance(&cluster, false), instance(&cluster, false));
        let (ca, cb) = (client(a.port, "alone").await, client(b.port, "alone").await);
        let _paused = cluster.pause_all_replay();
        let (stale, _) = cycles(&ca, &cb, 10).await;
        assert!(
            stale > 0,
            "without a shared store, reads through the other instance are stale"
        );
        a.stop();
        b.stop();
    }

    let (a, b) = (instance(&cluster, true), instance(&cluster, true));
    let (ca, cb) = (
        client(a.port, "shared").await,
        client(b.port, "shared").await,
    );
    {
        // Replay paused: every read must find the write, on the primary.
        let _paused = cluster.pause_all_replay();
        let (stale, _) = cycles(&ca, &cb, 1000).await;
        assert_eq!(stale, 0, "stale reads across instances, replay paused");
    }
    cluster.wait_replicas_caught_up();
    let (stale, on_replicas) = cycles(&ca, &cb, 50).await;
    assert_eq!(stale, 0);
    assert!(
        on_replicas > 0,
        "with replay running, reads reach the replicas"
    );

    // Redis stops mid-run: no stale read, no error; reads use the primary.
    cluster.stop_server("redis");
    let (stale, on_replicas) = cycles(&ca, &cb, 100).await;
    assert_eq!(stale, 0, "stale reads while Redis is down");
    assert_eq!(
        on_replicas, 0,
        "no replica read can be shown fresh without Redis"
    );
    cluster.start_server("redis");
    // Back: reads return to the replicas (after a grace period).
    let mut back = 0;
    for _ in 0..200 {
        let (stale, on_replicas) = cycles(&ca, &cb, 2).await;
        assert_eq!(stale, 0, "stale reads after Redis came back");
        back += on_replicas;
        if back > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back > 0, "reads never went back to the replicas");
}
