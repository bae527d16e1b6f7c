//! Optimistic transactions (`[routing] optimistic_transactions = true`):
//! plain `BEGIN` blocks, as ORMs send them, start on a fresh replica; at
//! their first write they move to the primary, where what they read is
//! replayed and compared; a difference fails the block with 40001 and
//! writes nothing. Against a real primary and two streaming replicas;
//! where staleness must be certain, replay is paused on both replicas.

mod support;

use std::sync::OnceLock;

use support::{TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

/// Tests that pause replay run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

fn setup() {
    static SETUP: OnceLock<()> = OnceLock::new();
    SETUP.get_or_init(|| {
        cluster().psql_db(
            cluster().primary_port(),
            APP_DB,
            "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
             INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 50) g ON CONFLICT DO NOTHING;",
        );
        cluster().wait_replicas_caught_up();
    });
}

/// The proxy with optimistic transactions on, and a small bound.
fn optimistic() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        setup();
        TestProxy::start_with(cluster(), |c| {
            c.routing.optimistic_transactions = true;
            c.routing.optimistic_max_statements = 8;
        })
    })
}

/// The proxy as configured by default: optimistic transactions off.
fn plain() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        setup();
        TestProxy::start(cluster())
    })
}

async fn client(proxy: &TestProxy) -> Client {
    support::connect_app(proxy.port, APP_DB, None).await
}

async fn direct() -> Client {
    support::connect(cluster().primary_port(), APP_USER, APP_PASSWORD, APP_DB).await
}

/// The balance and whether a replica answered.
async fn balance(client: &Client, id: i32) -> (i64, bool) {
    let row = client
        .query_one(
            "SELECT balance, pg_is_in_recovery() FROM accounts WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("read balance: {}", support::describe_error(&e)));
    (row.get(0), row.get(1))
}

/// The balance alone: a read whose answer is the same on every server, so
/// a block that reads it and then writes replays it without a difference.
/// `statement` is [`balance_statement`], prepared once, so that each read
/// is one unit.
async fn balance_only(client: &Client, statement: &Statement, id: i32) -> i64 {
    client
        .query_one(statement, &[&id])
        .await
        .unwrap_or_else(|e| panic!("read balance: {}", support::describe_error(&e)))
        .get(0)
}

async fn balance_statement(client: &Client) -> Statement {
    client
        .prepare("SELECT balance FROM accounts WHERE id = $1")
        .await
        .expect("prepare")
}

/// Units the proxy has run on replicas so far (replays are not counted).
fn replica_units(proxy: &TestProxy) -> u64 {
    (0..cluster().replica_count())
        .map(|i| proxy.proxy.stats.units(&format!("replica{i}")))
        .sum()
}

async fn batch(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", support::describe_error(&e)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_blocks_run_on_replicas() {
    let _serial = SERIAL.lock().await;
    let c = client(optimistic()).await;
    for begin in [
        "BEGIN",
        "BEGIN ISOLATION LEVEL READ COMMITTED",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "BEGIN READ WRITE",
    ] {
        batch(&c, begin).await;
        let (first, on_replica) = balance(&c, 1).await;
        assert!(on_replica, "{begin}: the block started on the primary");
        let (again, still) = balance(&c, 1).await;
        assert!(still);
        assert_eq!(first, again);
        batch(&c, "COMMIT").await;
    }
    // With the feature off, plain blocks run on the primary, as before.
    let off = client(plain()).await;
    batch(&off, "BEGIN").await;
    let (_, on_replica) = balance(&off, 1).await;
    batch(&off, "COMMIT").await;
    assert!(!on_replica, "optimistic transactions are off by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_moves_to_the_primary_and_commits() {
    let _serial = SERIAL.lock().await;
    let proxy = optimistic();
    let c = client(proxy).await;
    let statement = balance_statement(&c).await;
    let id = 2;
    let (before, _) = balance(&c, id).await;
    let on_replicas = replica_units(proxy);
    batch(&c, "BEGIN").await;
    let read = balance_only(&c, &statement, id).await;
    assert!(
        replica_units(proxy) > on_replicas,
        "the block's read ran on the primary"
    );
    assert_eq!(read, before);
    let updated = c
        .query_one(
            "UPDATE accounts SET balance = balance + 5 WHERE id = $1 RETURNING balance, pg_is_in_recovery()",
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("update: {}", support::describe_error(&e)));
    assert_eq!(updated.get::<_, i64>(0), before + 5);
    assert!(!updated.get::<_, bool>(1), "the write ran on a replica");
    let (inside, on_replica) = balance(&c, id).await;
    assert_eq!(inside, before + 5);
    assert!(!on_replica, "after the move the block stays on the primary");
    batch(&c, "COMMIT").await;
    // Read-your-writes after the commit.
    let (after, _) = balance(&c, id).await;
    assert_eq!(after, before + 5);
    let (primary, _) = balance(&direct().await, id).await;
    assert_eq!(primary, before + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_primary_would_not_give_fails_the_block_with_40001() {
    let _serial = SERIAL.lock().await;
    let proxy = optimistic();
    let c = client(proxy).await;
    let statement = balance_statement(&c).await;
    let id = 3;
    let _paused = cluster().pause_all_replay();
    let on_replicas = replica_units(proxy);
    batch(&c, "BEGIN").await;
    let read = balance_only(&c, &statement, id).await;
    assert!(
        replica_units(proxy) > on_replicas,
        "a session that never wrote reads a replica within lag"
    );
    // Another client changes the row on the primary meanwhile.
    direct()
        .await
        .execute(
            "UPDATE accounts SET balance = balance + 1000 WHERE id = $1",
            &[&id],
        )
        .await
        .expect("concurrent update");
    let err = c
        .execute(
            "UPDATE accounts SET balance = $1 WHERE id = $2",
            &[&(read - 10), &id],
        )
        .await
        .expect_err("a write based on an answer the primary would not give");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err:?}");
    batch(&c, "ROLLBACK").await;
    let (now, _) = balance(&direct().await, id).await;
    assert_eq!(now, read + 1000, "the failed block wrote nothing");
    // The connection goes on.
    let (_, _) = balance(&c, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_past_the_bound_move_at_once_and_stay_correct() {
    let _serial = SERIAL.lock().await;
    let proxy = optimistic();
    let c = client(proxy).await;
    let statement = balance_statement(&c).await;
    batch(&c, "BEGIN").await;
    let mut places = Vec::new();
    for id in 10..22 {
        let before = replica_units(proxy);
        assert_eq!(balance_only(&c, &statement, id).await, 100);
        places.push(replica_units(proxy) > before);
    }
    batch(&c, "COMMIT").await;
    assert!(
        places[..8].iter().all(|&r| r),
        "within the bound: a replica {places:?}"
    );
    assert!(
        places[8..].iter().all(|&r| !r),
        "past it: the primary {places:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_reads_its_own_earlier_writes() {
    let _serial = SERIAL.lock().await;
    let c = client(optimistic()).await;
    let _paused = cluster().pause_all_replay();
    for round in 0..3 {
        let value = 5000 + round;
        c.execute("UPDATE accounts SET balance = $1 WHERE id = 4", &[&value])
            .await
            .expect("autocommit write");
        batch(&c, "BEGIN").await;
        let (read, _) = balance(&c, 4).await;
        batch(&c, "COMMIT").await;
        assert_eq!(read, value, "an optimistic block read its own write stale");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_that_usually_write_start_on_the_primary() {
    let _serial = SERIAL.lock().await;
    let proxy = optimistic();
    let c = client(proxy).await;
    let mut first_on_replica = Vec::new();
    for round in 0..8i64 {
        batch(&c, "BEGIN").await;
        let before = replica_units(proxy);
        c.query_one(
            "SELECT balance FROM accounts WHERE id = 5 AND balance > $1",
            &[&-1i64],
        )
        .await
        .expect("read");
        first_on_replica.push(replica_units(proxy) > before);
        c.execute(
            "UPDATE accounts SET balance = $1 WHERE id = 5",
            &[&(200 + round)],
        )
        .await
        .expect("write");
        batch(&c, "COMMIT").await;
    }
    assert!(first_on_replica[0], "an unknown shape starts on a replica");
    assert!(
        !first_on_replica[7],
        "a shape that always wrote still starts on a replica: {first_on_replica:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_inside_the_block_are_replayed() {
    let _serial = SERIAL.lock().await;
    let c = client(optimistic()).await;
    for round in 0..3i64 {
        batch(&c, "BEGIN").await;
        // Prepared inside the block (Parse, then Bind in its own batch), as
        // pgbench -M prepared and pgjdbc do, then a write: the replay must
        // prepare it on the primary once, in order.
        let read = c
            .prepare("SELECT balance FROM accounts WHERE id = $1 AND balance >= $2")
            .await
            .expect("prepare in the block");
        let before: i64 = c
            .query_one(&read, &[&6i32, &0i64])
            .await
            .expect("read")
            .get(0);
        let write = c
            .prepare("UPDATE accounts SET balance = $1 WHERE id = 6")
            .await
            .expect("prepare the write");
        c.execute(&write, &[&(before + 1)])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {}", support::describe_error(&e)));
        batch(&c, "COMMIT").await;
        assert_eq!(
            balance_only(&c, &balance_statement(&c).await, 6).await,
            before + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_increment_blocks_never_read_stale_nor_lose_an_increment() {
    let _serial = SERIAL.lock().await;
    let proxy = optimistic();
    let setup = direct().await;
    setup
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS block_counters (k int PRIMARY KEY, v bigint NOT NULL); \
             DELETE FROM block_counters; \
             INSERT INTO block_counters SELECT g, 0 FROM generate_series(0, 3) g;",
        )
        .await
        .expect("counters");
    cluster().wait_replicas_caught_up();
    let rounds = 150i64;
    let on_replicas = replica_units(proxy);
    let mut sessions = Vec::new();
    for k in 0..4i32 {
        let port = proxy.port;
        sessions.push(tokio::spawn(async move {
            let c = support::connect_app(port, APP_DB, None).await;
            let mut serialization_failures = 0;
            for round in 0..rounds {
                // Each session owns its row: a read that is not the
                // latest is the session's own write read stale, and the
                // replay on the primary would fail the block with 40001.
                // A shape per round, so that learning (which would start
                // these blocks on the primary) does not spare the replay.
                c.batch_execute("BEGIN").await.expect("begin");
                let v: i64 = c
                    .query_one(
                        &format!("SELECT v AS v{round} FROM block_counters WHERE k = $1"),
                        &[&k],
                    )
                    .await
                    .expect("read")
                    .get(0);
                match c
                    .execute(
                        "UPDATE block_counters SET v = $1 WHERE k = $2",
                        &[&(v + 1), &k],
                    )
                    .await
                {
                    Ok(_) => c.batch_execute("COMMIT").await.expect("commit"),
                    Err(e) if e.code().map(|c| c.code()) == Some("40001") => {
                        serialization_failures += 1;
                        c.batch_execute("ROLLBACK").await.expect("rollback");
                    }
                    Err(e) => panic!("session {k}: {}", support::describe_error(&e)),
                }
            }
            let v: i64 = c
                .query_one("SELECT v FROM block_counters WHERE k = $1", &[&k])
                .await
                .expect("final read")
                .get(0);
            (v, serialization_failures)
        }));
    }
    for (k, session) in sessions.into_iter().enumerate() {
        let (v, failures) = session.await.expect("session");
        assert_eq!(
            failures, 0,
            "session {k} read its own row stale {failures} times"
        );
        assert_eq!(v, rounds, "session {k} lost increments");
    }
    // Most blocks started on a replica and were replayed on the primary.
    let started_on_replicas = replica_units(proxy) - on_replicas;
    assert!(
        started_on_replicas >= 4 * rounds as u64 / 2,
        "only {started_on_replicas} units on replicas"
    );
}
