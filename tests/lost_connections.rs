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

/// The replica backend running the statement marked `marker`, as
/// (replica port, pid), once one is seen.
async fn replica_backend_of(marker: &str) -> (u16, i32) {
    for _ in 0..500 {
        for port in cluster().replica_ports() {
            let direct = support::connect(port, APP_USER, APP_PASSWORD, APP_DB).await;
            let found = direct
                .query_opt(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                    &[&marker],
                )
                .await
                .expect("pg_stat_activity");
            if let Some(row) = found {
                return (port, row.get(0));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no replica backend ran {marker}");
}

/// A `READ ONLY` block on a replica whose connection dies, between its
/// statements or under one, goes on on the primary: the block is replayed
/// there, its answers compared with those the client had, and the
/// statement that was running runs again. The client sees no error. So
/// does an optimistic block (`optimistic_transactions`), whose replica's
/// FATAL the client used to get.
///
/// A replica whose connection died gets no reads until the monitor has
/// looked at it again; the monitor looks at once. The proxies here poll
/// once a minute, so each case starting on a replica also shows that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_block_whose_replica_dies_goes_on_on_the_primary() {
    let plain = TestProxy::start_with(cluster(), |c| {
        c.routing.poll_interval_ms = 60_000;
    });
    let optimistic = TestProxy::start_with(cluster(), |c| {
        c.routing.poll_interval_ms = 60_000;
        c.routing.optimistic_transactions = true;
    });
    cluster().wait_replicas_caught_up();
    let in_block = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')";
    for (proxy, case, begin, read_only) in [
        (&plain, "between", "BEGIN READ ONLY", "on"),
        (&plain, "between", "BEGIN; SET TRANSACTION READ ONLY", "on"),
        (&plain, "under", "BEGIN TRANSACTION READ ONLY", "on"),
        (&optimistic, "between", "BEGIN", "off"),
        (&optimistic, "under", "START TRANSACTION", "off"),
    ] {
        proxy.wait_healthy(Duration::from_secs(5));
        let client = support::connect_app(proxy.port, APP_DB, None).await;
        let marker = format!("ro_block_{}_{}", case, begin.len());
        client.batch_execute(begin).await.expect(begin);
        let first: i32 = client
            .query_one(&format!("SELECT 7 AS {marker}"), &[])
            .await
            .expect("the block's first read")
            .get(0);
        assert_eq!(first, 7);
        let (port, pid) = replica_backend_of(&marker).await;
        let row = if case == "between" {
            terminate(port, pid).await;
            client.query_one(in_block, &[]).await
        } else {
            let sleeper = format!("SELECT 8 AS {marker}_sleep FROM pg_sleep(2)");
            let running = {
                let client = &client;
                async move { client.query_one(&sleeper, &[]).await }
            };
            let kill = async {
                let (port, pid) = replica_backend_of(&format!("{marker}_sleep")).await;
                terminate(port, pid).await;
            };
            let (slept, ()) = tokio::join!(running, kill);
            let slept: i32 = slept
                .unwrap_or_else(|e| panic!("{begin}: {}", support::describe_error(&e)))
                .get(0);
            assert_eq!(slept, 8, "{begin}: the statement ran again");
            client.query_one(in_block, &[]).await
        };
        let row = row.unwrap_or_else(|e| panic!("{begin}: {}", support::describe_error(&e)));
        let (recovery, mode): (bool, String) = (row.get(0), row.get(1));
        assert!(!recovery, "{begin}: the block went on on the primary");
        assert_eq!(mode, read_only, "{begin}: transaction_read_only");
        client.batch_execute("COMMIT").await.expect("COMMIT");
        let row = client
            .query_one("SELECT count(*) FROM pg_stat_activity", &[])
            .await
            .expect("the session goes on");
        assert!(row.get::<_, i64>(0) > 0);
        assert!(!client.is_closed());
    }
    plain.stop();
    optimistic.stop();
}

/// The pid of the one backend on `port` whose statement is `query` and
/// which waits for a lock.
async fn blocked_backend(port: u16, query: &str) -> i32 {
    let admin = support::connect(port, APP_USER, APP_PASSWORD, APP_DB).await;
    for _ in 0..500 {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND wait_event_type = 'Lock'",
                &[&query],
            )
            .await
            .expect("pg_stat_activity");
        if let [row] = &rows[..] {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no backend on port {port} waits for a lock in {query:?}");
}

/// What a run of messages up to ReadyForQuery says: each ERROR's SQLSTATE
/// and severity, each row's fields as text, and the status it ends in.
fn summary(messages: &[support::raw::RawMessage]) -> (Vec<String>, Vec<String>, u8) {
    let errors = messages
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| {
            format!(
                "{} {}",
                m.field(b'S').unwrap_or_default(),
                m.field(b'C').unwrap_or_default()
            )
        })
        .collect();
    let rows = messages
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let mut fields = Vec::new();
            let mut rest = &m.body[2..];
            while rest.len() >= 4 {
                let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                rest = &rest[4..];
                let len = usize::try_from(len).unwrap_or(0).min(rest.len());
                fields.push(String::from_utf8_lossy(&rest[..len]).into_owned());
                rest = &rest[len..];
            }
            fields.join(",")
        })
        .collect();
    let status = messages.last().map_or(0, |m| m.body[0]);
    (errors, rows, status)
}

/// Sends `sql` as a simple Query and sums up its answer (see [`summary`]).
async fn ask(client: &mut support::raw::RawClient, sql: &str) -> (Vec<String>, Vec<String>, u8) {
    client.send(&support::raw::query(sql)).await;
    summary(&client.read_until_ready().await)
}

/// Bind and Execute of the unnamed statement and portal, then Sync: the
/// rest of a batch cut at a Flush.
fn rest_of_batch() -> Vec<u8> {
    use support::raw::message;
    let mut rest = message(b'B', &[0; 8]);
    rest.extend(message(b'E', &[0; 5]));
    rest.extend(message(b'S', b""));
    rest
}

/// Units pipelined to the primary when its connection is lost are each
/// answered, in the client's order: reads kept for a re-run (the session's
/// last commit LSN is unknown, so they went to the primary) run again; a
/// write between them, which may have run, gets an ERROR in its turn; the
/// client stays out of any block, and its session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_pipelined_on_a_lost_primary_connection_are_answered_in_order() {
    use support::raw::{self, RawClient};
    let primary = cluster().primary_port();
    cluster().psql_db(
        primary,
        APP_DB,
        "DROP TABLE IF EXISTS pipelined_loss; \
         CREATE TABLE pipelined_loss (id int); INSERT INTO pipelined_loss VALUES (1)",
    );
    cluster().wait_replicas_caught_up();
    let proxy = TestProxy::start(cluster());
    proxy.wait_healthy(Duration::from_secs(5));
    let locker = support::connect(primary, APP_USER, APP_PASSWORD, APP_DB).await;
    let mut client = RawClient::login_trusted(proxy.port, "trusted", APP_DB).await;

    // An autocommit write lost under way: it may have committed, at an
    // LSN the proxy never learnt.
    locker
        .batch_execute("BEGIN; LOCK TABLE pipelined_loss IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let write = "INSERT INTO pipelined_loss VALUES (2)";
    client.send(&raw::query(write)).await;
    terminate(primary, blocked_backend(primary, write).await).await;
    let (errors, _, status) = summary(&client.read_until_ready().await);
    assert_eq!(errors, ["ERROR 08006"], "the lost write");
    assert_eq!(status, b'I');

    // Three units in one go: a read, a write and a read.
    let first = "SELECT 'first', count(*) FROM pipelined_loss";
    let mut batch = raw::query(first);
    batch.extend(raw::query("INSERT INTO pipelined_loss VALUES (3)"));
    batch.extend(raw::query("SELECT 'third', count(*) FROM pipelined_loss"));
    client.send(&batch).await;
    // The first waits for the lock on the primary, the others behind it.
    let pid = blocked_backend(primary, first).await;
    terminate(primary, pid).await;
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    let answers = [
        summary(&client.read_until_ready().await),
        summary(&client.read_until_ready().await),
        summary(&client.read_until_ready().await),
    ];
    assert_eq!(
        answers,
        [
            (vec![], vec!["first,1".to_string()], b'I'),
            (vec!["ERROR 08006".to_string()], vec![], b'I'),
            (vec![], vec!["third,1".to_string()], b'I'),
        ],
        "each unit answered in its turn"
    );
    // Neither write ran: both waited for the lock when their connection
    // was lost.
    client
        .send(&raw::query("SELECT 'after', count(*) FROM pipelined_loss"))
        .await;
    let after = summary(&client.read_until_ready().await);
    assert_eq!(after, (vec![], vec!["after,1".to_string()], b'I'));
    proxy.stop();
}

/// Parse, Bind and Execute of `sql` as the unnamed statement and portal,
/// then an empty message of each tag in `ends` (Sync, Flush).
fn unnamed_batch(sql: &str, ends: &[u8]) -> Vec<u8> {
    use support::raw::message;
    let mut batch = message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    batch.extend(message(b'B', &[0; 8]));
    batch.extend(message(b'E', &[0; 5]));
    for &end in ends {
        batch.extend(message(end, b""));
    }
    batch
}

/// libpq leaves pipeline mode with a Sync and then a Flush alone. That
/// Flush has nothing to flush: the session stays at rest, its replica
/// connection goes back to the pool, and the loss of that connection
/// costs the client nothing (it used to close the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_alone_after_a_sync_leaves_the_session_at_rest() {
    use support::raw::{self, RawClient};
    cluster().wait_replicas_caught_up();
    let proxy = TestProxy::start(cluster());
    proxy.wait_healthy(Duration::from_secs(5));
    let mut client = RawClient::login_trusted(proxy.port, "trusted", APP_DB).await;
    let marker = "flush_alone_read";
    let batch = unnamed_batch(&format!("SELECT 1 AS {marker}, pg_is_in_recovery()"), b"SH");
    client.send(&batch).await;
    let (errors, rows, status) = summary(&client.read_until_ready().await);
    assert_eq!(
        (errors, rows, status),
        (vec![], vec!["1,t".to_string()], b'I')
    );

    let (port, pid) = replica_backend_of(marker).await;
    terminate(port, pid).await;
    client
        .send(&raw::query("SELECT 2, pg_is_in_recovery()"))
        .await;
    let after = summary(&client.read_until_ready().await);
    assert_eq!(after.0, Vec::<String>::new(), "the session goes on");
    assert_eq!(after.1.len(), 1, "{after:?}");
    assert!(after.1[0].starts_with("2,"), "{after:?}");
    proxy.stop();
}

/// A batch the client cut at a Flush (psycopg fetching in pipeline mode,
/// asyncpg before a COPY) whose server connection is lost outside a block.
/// If the client still waits for an answer of it, it gets an ERROR, what it
/// sends up to its Sync is skipped, as Postgres skips it after an error,
/// and the Sync gets ReadyForQuery. If every message of it was answered,
/// the client waits for nothing and hears nothing of the loss: its Sync is
/// answered. Either way the session goes on (it used to be closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_at_a_flush_whose_server_is_lost_fails_until_its_sync() {
    use support::raw::{self, RawClient};
    cluster().wait_replicas_caught_up();
    let proxy = TestProxy::start(cluster());
    for (case, sql, waits) in [
        ("running", "pg_sleep(5)", true),
        ("answered", "pg_is_in_recovery()", false),
    ] {
        proxy.wait_healthy(Duration::from_secs(5));
        let mut client = RawClient::login_trusted(proxy.port, "trusted", APP_DB).await;
        let marker = format!("flushed_batch_{case}");
        let batch = unnamed_batch(&format!("SELECT 1 AS {marker}, {sql}"), b"H");
        client.send(&batch).await;
        if !waits {
            let mut flushed = Vec::new();
            while flushed
                .last()
                .is_none_or(|m: &raw::RawMessage| m.tag != b'C')
            {
                flushed.push(client.read_message().await.expect("the flushed answers"));
            }
            assert_eq!(summary(&flushed).1, ["1,t"], "the batch ran on a replica");
        }
        let (port, pid) = replica_backend_of(&marker).await;
        terminate(port, pid).await;
        // The rest of the batch, then its Sync.
        let mut rest = rest_of_batch();
        if !waits {
            // Nothing before the Sync: the unnamed statement is gone.
            rest = raw::message(b'S', b"");
        }
        client.send(&rest).await;
        let answered = client.read_until_ready().await;
        let (errors, rows, status) = summary(&answered);
        let expected: Vec<String> = if waits {
            vec!["ERROR 08006".into()]
        } else {
            vec![]
        };
        assert_eq!(errors, expected, "{case}: {answered:?}");
        assert!(rows.is_empty(), "{case}: nothing of the rest ran: {rows:?}");
        assert_eq!(status, b'I', "{case}");

        assert_eq!(
            ask(&mut client, "SELECT 2").await,
            (vec![], vec!["2".to_string()], b'I'),
            "{case}: the session goes on"
        );
    }
    proxy.stop();
}

/// The same inside a transaction block on the primary: the client waiting
/// for its batch's answer gets an ERROR, its Sync an aborted block's
/// ReadyForQuery, and ROLLBACK ends the block; nothing of it was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_at_a_flush_in_a_block_whose_server_is_lost_aborts_the_block() {
    use support::raw::{self, RawClient};
    let primary = cluster().primary_port();
    cluster().psql_db(
        primary,
        APP_DB,
        "DROP TABLE IF EXISTS flushed_block; CREATE TABLE flushed_block (id int)",
    );
    let proxy = TestProxy::start(cluster());
    let mut client = RawClient::login_trusted(proxy.port, "trusted", APP_DB).await;
    client
        .send(&raw::query("BEGIN; INSERT INTO flushed_block VALUES (1)"))
        .await;
    assert_eq!(summary(&client.read_until_ready().await).2, b'T');
    let sleeper = "SELECT 1 AS flushed_block_sleep, pg_sleep(5)";
    client.send(&unnamed_batch(sleeper, b"H")).await;
    let pid = {
        let admin = support::connect(primary, APP_USER, APP_PASSWORD, APP_DB).await;
        let mut found = None;
        for _ in 0..500 {
            let row = admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE query = $1 AND wait_event = 'PgSleep'",
                    &[&sleeper],
                )
                .await
                .expect("pg_stat_activity");
            if let Some(row) = row {
                found = Some(row.get(0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        found.expect("the batch sleeps on the primary")
    };
    terminate(primary, pid).await;
    client.send(&rest_of_batch()).await;
    let answered = client.read_until_ready().await;
    let (errors, rows, status) = summary(&answered);
    assert_eq!(errors, ["ERROR 08006"], "{answered:?}");
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(status, b'E', "an aborted block");

    client.send(&raw::query("SELECT 2")).await;
    let (errors, _, status) = summary(&client.read_until_ready().await);
    assert_eq!((errors, status), (vec!["ERROR 25P02".to_string()], b'E'));
    client.send(&raw::query("ROLLBACK")).await;
    assert_eq!(
        summary(&client.read_until_ready().await),
        (vec![], vec![], b'I')
    );
    assert_eq!(
        ask(&mut client, "SELECT count(*) FROM flushed_block").await,
        (vec![], vec!["0".to_string()], b'I'),
        "nothing was committed"
    );
    proxy.stop();
}

/// Parse, Describe, Bind, Execute and Sync of `sql` as the named
/// statement `name` (postgres.js prepares every statement so).
fn named_batch(name: &str, sql: &str) -> Vec<u8> {
    use support::raw::message;
    let mut parse = format!("{name}\0{sql}\0").into_bytes();
    parse.extend([0, 0]);
    let mut batch = message(b'P', &parse);
    batch.extend(message(b'D', format!("S{name}\0").as_bytes()));
    batch.extend(bind_named(name));
    batch
}

/// Bind of the named statement `name` to the unnamed portal, Execute, Sync.
fn bind_named(name: &str) -> Vec<u8> {
    use support::raw::message;
    let mut bind = format!("\0{name}\0").into_bytes();
    bind.extend([0, 0, 0, 0, 0, 0]);
    let mut batch = message(b'B', &bind);
    batch.extend(message(b'E', &[0; 5]));
    batch.extend(message(b'S', b""));
    batch
}

/// Opens a block that writes on the primary, and loses it: its backend is
/// terminated, and the next statement gets 08006 in an aborted block.
async fn lose_a_block(client: &mut support::raw::RawClient, table: &str) {
    let primary = cluster().primary_port();
    let (errors, rows, status) = ask(
        client,
        &format!("BEGIN; INSERT INTO {table} VALUES (1); SELECT pg_backend_pid()"),
    )
    .await;
    assert_eq!((errors.len(), status), (0, b'T'), "{rows:?}");
    let pid: i32 = rows[0].parse().expect("a pid");
    terminate(primary, pid).await;
    let (errors, _, status) = ask(client, "SELECT 1").await;
    assert_eq!((errors, status), (vec!["ERROR 08006".to_string()], b'E'));
}

/// A ROLLBACK prepared inside a block lost with its server ends that
/// block, and exists afterwards, as Postgres makes a transaction's end in
/// an aborted block (postgres.js prepares its `rollback` so, then runs it
/// by name in the next lost block; a 25P02 there left its transaction
/// waiting forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_prepared_in_a_lost_block_is_kept_for_the_next_one() {
    use support::raw::RawClient;
    cluster().psql_db(
        cluster().primary_port(),
        APP_DB,
        "DROP TABLE IF EXISTS lost_rollback; CREATE TABLE lost_rollback (id int)",
    );
    let proxy = TestProxy::start(cluster());
    let mut client = RawClient::login_trusted(proxy.port, "trusted", APP_DB).await;

    lose_a_block(&mut client, "lost_rollback").await;
    client.send(&named_batch("end_it", "rollback")).await;
    let answered = client.read_until_ready().await;
    let tags: Vec<u8> = answered.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1tn2CZ", "{answered:?}");
    assert_eq!(summary(&answered).2, b'I');

    lose_a_block(&mut client, "lost_rollback").await;
    client.send(&bind_named("end_it")).await;
    let answered = client.read_until_ready().await;
    let (errors, _, status) = summary(&answered);
    assert_eq!((errors, status), (vec![], b'I'), "{answered:?}");
    assert!(
        answered
            .iter()
            .any(|m| m.tag == b'C' && m.body.starts_with(b"ROLLBACK")),
        "{answered:?}"
    );

    // At rest, a server runs it (made there first): Postgres's warning
    // that no transaction is in progress.
    client.send(&bind_named("end_it")).await;
    let answered = client.read_until_ready().await;
    let warnings: Vec<String> = answered
        .iter()
        .filter(|m| m.tag == b'N')
        .filter_map(|m| m.field(b'C'))
        .collect();
    assert_eq!(warnings, ["25P01"], "{answered:?}");
    assert_eq!(summary(&answered), (vec![], vec![], b'I'));
    assert_eq!(
        ask(&mut client, "SELECT count(*) FROM lost_rollback").await,
        (vec![], vec!["0".to_string()], b'I'),
        "nothing was committed"
    );
    proxy.stop();
}
