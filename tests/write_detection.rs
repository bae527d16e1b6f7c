//! A unit that may have written moves the causal LSN wherever it ran, and
//! what a hot standby refuses runs on the primary: user-defined functions
//! called from SELECT, writes hidden in views, serializable isolation in
//! every spelling, and the proxy-wide `global` causal scope. Against a real
//! primary and two streaming replicas; where staleness must be certain,
//! replay is paused on both replicas.

mod support;

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use support::{TestCluster, TestProxy, APP_DB};
use tokio::sync::Mutex;
use tokio_postgres::Client;

/// Tests that pause replay run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

const SETUP: &str = "
CREATE TABLE IF NOT EXISTS counters (k int PRIMARY KEY, v bigint NOT NULL);
CREATE OR REPLACE FUNCTION bump(key int, value bigint) RETURNS bigint
  LANGUAGE plpgsql VOLATILE AS $$
  BEGIN
    INSERT INTO counters VALUES (key, value) ON CONFLICT (k) DO UPDATE SET v = excluded.v;
    RETURN value;
  END $$;
CREATE OR REPLACE FUNCTION counter_of(key int) RETURNS bigint
  LANGUAGE sql STABLE AS $$ SELECT v FROM counters WHERE k = key $$;
CREATE OR REPLACE FUNCTION doubled(x bigint) RETURNS bigint
  LANGUAGE sql IMMUTABLE AS $$ SELECT x * 2 $$;
CREATE OR REPLACE VIEW bump_view AS SELECT bump(900, 9) AS bumped;
";

fn proxy() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let c = cluster();
        c.psql_db(c.primary_port(), APP_DB, SETUP);
        c.psql_db(
            c.primary_port(),
            APP_DB,
            "DROP DATABASE IF EXISTS serial_db",
        );
        c.psql_db(
            c.primary_port(),
            APP_DB,
            "CREATE DATABASE serial_db OWNER app",
        );
        c.psql_db(
            c.primary_port(),
            APP_DB,
            "ALTER DATABASE serial_db SET default_transaction_isolation = 'serializable'",
        );
        c.wait_replicas_caught_up();
        TestProxy::start(c)
    })
}

async fn client_on(port: u16, db: &str, options: Option<&str>) -> Client {
    support::connect_app(port, db, options).await
}

/// The counter's value and whether a replica served it.
async fn read_counter(client: &Client, key: i32) -> (Option<i64>, bool) {
    let row = client
        .query_one(
            "SELECT (SELECT v FROM counters WHERE k = $1), pg_is_in_recovery()",
            &[&key],
        )
        .await
        .unwrap_or_else(|e| panic!("read counter: {}", support::describe_error(&e)));
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volatile_function_called_from_select_is_a_write() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let _paused = cluster().pause_all_replay();
    for round in 0..5i64 {
        // A fresh session: no causal LSN, so any replica within lag would do.
        let client = client_on(port, APP_DB, None).await;
        let value = 100 + round;
        let row = client
            .query_one("SELECT bump($1, $2)", &[&1i32, &value])
            .await
            .expect("bump");
        assert_eq!(row.get::<_, i64>(0), value);
        let (read, on_replica) = read_counter(&client, 1).await;
        assert_eq!(read, Some(value), "round {round}: read its own write stale");
        assert!(
            !on_replica,
            "replay is paused: only the primary has the write"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_calling_stable_and_immutable_functions_stay_on_replicas() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    cluster().wait_replicas_caught_up();
    let client = client_on(port, APP_DB, None).await;
    for _ in 0..4 {
        let row = client
            .query_one(
                "SELECT counter_of(1), doubled(21), lower('X'), pg_is_in_recovery()",
                &[],
            )
            .await
            .expect("stable read");
        assert_eq!(row.get::<_, i64>(1), 42);
        assert!(
            row.get::<_, bool>(3),
            "a read of STABLE/IMMUTABLE functions left the replicas"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_made_through_the_proxy_is_known_at_once() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let _paused = cluster().pause_all_replay();
    let client = client_on(port, APP_DB, None).await;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION bump_twice(key int, value bigint) RETURNS bigint \
             LANGUAGE sql VOLATILE AS $$ SELECT bump(key, value); SELECT bump(key, value * 2) $$",
        )
        .await
        .expect("create function");
    let row = client
        .query_one("SELECT bump_twice($1, $2)", &[&2i32, &7i64])
        .await
        .expect("call");
    assert_eq!(row.get::<_, i64>(0), 14);
    let (read, _) = read_counter(&client, 2).await;
    assert_eq!(read, Some(14));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_hidden_in_a_view_is_retried_learned_and_never_stale() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy();
    let _paused = cluster().pause_all_replay();
    let retries_before = proxy.proxy.stats.retries.load(Ordering::Relaxed);
    for _ in 0..3 {
        let client = client_on(proxy.port, APP_DB, None).await;
        let rows = client
            .query("SELECT bumped FROM bump_view", &[])
            .await
            .expect("view read");
        assert_eq!(rows[0].get::<_, i64>(0), 9);
        let (read, on_replica) = read_counter(&client, 900).await;
        assert_eq!(read, Some(9));
        assert!(!on_replica);
    }
    let retries = proxy.proxy.stats.retries.load(Ordering::Relaxed) - retries_before;
    assert_eq!(
        retries, 1,
        "the refusal is paid once, then the statement is known to write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_sessions_read_in_every_spelling() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    cluster().wait_replicas_caught_up();
    let read = "SELECT count(*) FROM counters";
    // Session defaults: SET, SESSION CHARACTERISTICS, set_config, startup
    // option, database default.
    let sessions: [(&str, Option<&str>, &str); 5] = [
        (
            APP_DB,
            None,
            "SET default_transaction_isolation = 'serializable'",
        ),
        (
            APP_DB,
            None,
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        ),
        (
            APP_DB,
            None,
            "SELECT set_config('default_transaction_isolation', 'serializable', false)",
        ),
        (
            APP_DB,
            Some("-c default_transaction_isolation=serializable"),
            "SELECT 1",
        ),
        ("serial_db", None, "SELECT 1"),
    ];
    for (db, options, setup) in sessions {
        let client = client_on(port, db, options).await;
        client.batch_execute(setup).await.expect(setup);
        let table = if db == APP_DB { read } else { "SELECT 1" };
        for _ in 0..3 {
            client
                .simple_query(table)
                .await
                .unwrap_or_else(|e| panic!("{setup} in {db}: {}", support::describe_error(&e)));
            client.query(table, &[]).await.unwrap_or_else(|e| {
                panic!("{setup} in {db}, extended: {}", support::describe_error(&e))
            });
        }
        // The reads ran where a serializable read can: the primary.
        let on_replica: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("where")
            .get(0);
        assert!(
            !on_replica,
            "{setup} in {db}: a serializable read reached a replica"
        );
        let level = client
            .query_one("SHOW transaction_isolation", &[])
            .await
            .expect("show");
        assert_eq!(level.get::<_, String>(0), "serializable", "{setup} in {db}");
        client
            .batch_execute("BEGIN READ ONLY; SELECT 1; COMMIT")
            .await
            .unwrap_or_else(|e| {
                panic!("read-only block, {setup}: {}", support::describe_error(&e))
            });
    }
    // Transaction-level spellings (asyncpg, pgjdbc, psycopg).
    let client = client_on(port, APP_DB, None).await;
    for block in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT count(*) FROM counters; COMMIT",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE; SELECT 1; COMMIT",
        "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT",
    ] {
        client
            .batch_execute(block)
            .await
            .unwrap_or_else(|e| panic!("{block}: {}", support::describe_error(&e)));
    }
    for first in ["BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", "BEGIN"] {
        client.batch_execute(first).await.expect(first);
        if first == "BEGIN" {
            client
                .batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY")
                .await
                .expect("set transaction");
        }
        let rows = client
            .query(read, &[])
            .await
            .unwrap_or_else(|e| panic!("{first}, then a read: {}", support::describe_error(&e)));
        assert_eq!(rows.len(), 1);
        let on_replica: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("where")
            .get(0);
        assert!(
            !on_replica,
            "{first}: a serializable block ran on a replica"
        );
        client.batch_execute("COMMIT").await.expect("commit");
    }
    // A session that has read already turns serializable, and back: the
    // routing follows each change of its settings, not its first one.
    let client = client_on(port, APP_DB, None).await;
    let where_read = |sql: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", support::describe_error(&e)));
            row.get::<_, bool>(0)
        }
    };
    let probe = "SELECT pg_is_in_recovery()";
    assert!(
        where_read(probe).await,
        "a plain session reads from a replica"
    );
    client
        .batch_execute("SET default_transaction_isolation = 'serializable'")
        .await
        .expect("set");
    assert!(
        !where_read(probe).await,
        "after SET ... serializable, a read reached a replica"
    );
    client
        .batch_execute("RESET default_transaction_isolation")
        .await
        .expect("reset");
    assert!(
        where_read(probe).await,
        "after RESET, the session's reads stayed on the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_scope_makes_every_connection_see_every_commit() {
    let _serial = SERIAL.lock().await;
    proxy();
    let global = TestProxy::start_with(cluster(), |c| {
        c.routing.causal_scope = causeway::config::CausalScope::Global;
    });
    let writer = client_on(global.port, APP_DB, None).await;
    let reader = client_on(global.port, APP_DB, None).await;
    // Paused replay: a read on another connection must not be stale.
    {
        let _paused = cluster().pause_all_replay();
        writer
            .query("SELECT bump($1, $2)", &[&3i32, &1i64])
            .await
            .expect("write");
        let (read, on_replica) = read_counter(&reader, 3).await;
        assert_eq!(read, Some(1), "a second connection read a commit stale");
        assert!(!on_replica);
    }
    // Replay running: 50 of 50 fresh, most of them from replicas.
    cluster().wait_replicas_caught_up();
    let mut on_replicas = 0;
    for value in 2..52i64 {
        writer
            .execute(
                "INSERT INTO counters VALUES (3, $1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                &[&value],
            )
            .await
            .expect("write");
        let (read, on_replica) = read_counter(&reader, 3).await;
        assert_eq!(read, Some(value), "stale read on the second connection");
        on_replicas += usize::from(on_replica);
    }
    eprintln!("global scope: {on_replicas} of 50 reads on replicas");
    assert!(on_replicas > 0, "no read reached a replica");
    global.stop();
}

/// Reads of the primary's live state run there: a second session finds
/// the first one's open transaction in `pg_stat_activity` (SQLAlchemy's
/// own test suite does this), which a replica's view does not show. A
/// connection's view of itself and per-server statistics stay on replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_the_primarys_live_state_run_on_the_primary() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    cluster().wait_replicas_caught_up();
    let open = client_on(port, APP_DB, None).await;
    open.batch_execute("BEGIN").await.expect("begin");
    let xid: String = open
        .query_one("SELECT txid_current()::text", &[])
        .await
        .expect("txid_current")
        .get(0);
    let watcher = client_on(port, APP_DB, None).await;
    for view in [
        "SELECT count(*), pg_is_in_recovery() FROM pg_stat_activity WHERE backend_xid::text = $1",
        "SELECT count(*), pg_is_in_recovery() FROM pg_locks WHERE transactionid::text = $1",
    ] {
        let row = watcher.query_one(view, &[&xid]).await.expect(view);
        let (found, in_recovery): (i64, bool) = (row.get(0), row.get(1));
        assert!(!in_recovery, "{view}: ran on a replica");
        assert!(
            found >= 1,
            "{view}: the open transaction {xid} is not there"
        );
    }
    open.batch_execute("ROLLBACK").await.expect("rollback");
    for read in [
        "SELECT pg_is_in_recovery() FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        "SELECT pg_is_in_recovery() FROM pg_stat_user_tables LIMIT 1",
    ] {
        let row = watcher.query_one(read, &[]).await.expect(read);
        assert!(row.get::<_, bool>(0), "{read}: left the replicas");
    }
}

/// The database causeway stands for takes writes: asked whether a
/// transaction is read-only or the server a hot standby, it answers as the
/// primary does, not as the replica a read would otherwise go to (pgjdbc's
/// `targetServerType=primary` asks `SHOW transaction_read_only` after it
/// logs in, and would take causeway for a standby). Other settings are
/// still read on replicas, and the verdict on one text is not taken for
/// another that differs only in the setting's name (the facts cache files
/// texts by their literals blanked: `current_setting('...')` after one
/// with another name went to a replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_asking_if_it_may_write_is_told_as_the_primary_tells() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    cluster().wait_replicas_caught_up();
    let session = client_on(port, APP_DB, None).await;
    // (setting, where it ran): simple-protocol texts, filed by their key.
    let ask = |name: &'static str| {
        let session = &session;
        async move {
            let sql = format!("SELECT current_setting('{name}'), pg_is_in_recovery()");
            let rows = session.simple_query(&sql).await.expect(name);
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                        row.get(0).unwrap_or_default().to_string(),
                        row.get(1) == Some("t"),
                    )),
                    _ => None,
                })
                .expect("a row")
        }
    };
    let other = ("off".to_string(), true);
    assert_eq!(
        ask("default_transaction_read_only").await,
        other,
        "on a replica"
    );
    assert_eq!(
        ask("transaction_read_only").await,
        ("off".to_string(), false),
        "asked of the primary"
    );
    assert_eq!(ask("in_hot_standby").await, ("off".to_string(), false));
    assert_eq!(ask("default_transaction_read_only").await, other);
    for show in ["SHOW transaction_read_only", "SHOW in_hot_standby"] {
        let rows = session.simple_query(show).await.expect(show);
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("off"), "{show}");
    }
}
