//! Read routing with per-session causal LSN, against a real primary and two
//! streaming replicas. Where staleness must be certain, replay is paused on
//! both replicas first; which server answered is read from
//! `inet_server_port()` in the same statement.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::raw::{self, RawClient};
use support::{connect, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio::sync::Mutex;
use tokio_postgres::Client;

/// Tests that pause replay, or count where reads went, run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

fn proxy() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let proxy = TestProxy::start(cluster());
        let setup =
            "CREATE TABLE IF NOT EXISTS rides (id bigserial PRIMARY KEY, distance int NOT NULL); \
                     CREATE SEQUENCE IF NOT EXISTS route_seq;";
        cluster().psql_db(cluster().primary_port(), APP_DB, setup);
        cluster().wait_replicas_caught_up();
        proxy
    })
}

async fn client() -> Client {
    connect(proxy().port, APP_USER, APP_PASSWORD, APP_DB).await
}

/// Which server a port belongs to.
fn server_of(port: i32) -> String {
    let c = cluster();
    if port == i32::from(c.primary_port()) {
        return "primary".into();
    }
    for (i, p) in c.replica_ports().iter().enumerate() {
        if port == i32::from(*p) {
            return format!("replica{i}");
        }
    }
    format!("unknown port {port}")
}

/// The server that answers a read on `client` now.
async fn server_of_read(client: &Client) -> String {
    let row = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("read");
    server_of(row.get(0))
}

async fn insert_ride(client: &Client, distance: i32) -> i64 {
    client
        .query_one(
            "INSERT INTO rides (distance) VALUES ($1) RETURNING id",
            &[&distance],
        )
        .await
        .expect("insert ride")
        .get(0)
}

/// Reads a ride's distance and the server that answered.
async fn read_ride(client: &Client, id: i64) -> (Option<i32>, String) {
    let row = client
        .query_one(
            "SELECT (SELECT distance FROM rides WHERE id = $1), inet_server_port()",
            &[&id],
        )
        .await
        .expect("read ride");
    (row.get(0), server_of(row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_write_with_replay_paused_then_replica_after_catch_up() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let id = {
        let _paused = cluster().pause_all_replay();
        let id = insert_ride(&client, 42).await;
        let (distance, server) = read_ride(&client, id).await;
        assert_eq!(distance, Some(42), "the session must see its own write");
        assert_eq!(server, "primary", "no replica has replayed it");
        id
    };
    cluster().wait_replicas_caught_up();
    let (distance, server) = read_ride(&client, id).await;
    assert_eq!(distance, Some(42));
    assert!(
        server.starts_with("replica"),
        "caught-up replica should serve: {server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_then_read() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let id = insert_ride(&client, 1).await;
    cluster().wait_replicas_caught_up();
    let _paused = cluster().pause_all_replay();
    client
        .execute("UPDATE rides SET distance = 99 WHERE id = $1", &[&id])
        .await
        .expect("update");
    assert_eq!(
        read_ride(&client, id).await,
        (Some(99), "primary".to_string())
    );
    client
        .execute("DELETE FROM rides WHERE id = $1", &[&id])
        .await
        .expect("delete");
    assert_eq!(read_ride(&client, id).await, (None, "primary".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_a_transaction_then_read_after_commit() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let _paused = cluster().pause_all_replay();
    client.batch_execute("BEGIN").await.expect("begin");
    let id = insert_ride(&client, 7).await;
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        read_ride(&client, id).await,
        (Some(7), "primary".to_string())
    );
}

/// Extended-protocol messages, unnamed statement and portal, no parameters.
fn extended(sql: &str) -> Vec<u8> {
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut bytes = raw::message(b'P', &parse);
    bytes.extend(raw::message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    bytes.extend(raw::message(b'E', &[0, 0, 0, 0, 0]));
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_with_its_first_write_is_read_after_commit() {
    // `BEGIN; UPDATE ...` in one simple query, and BEGIN with the UPDATE in
    // one Sync (what pgjdbc sends with autocommit off); COMMIT comes later,
    // alone. The read after it must see the update.
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let id = insert_ride(&client, 1).await;
    cluster().wait_replicas_caught_up();
    let _paused = cluster().pause_all_replay();
    client
        .batch_execute(&format!(
            "BEGIN; UPDATE rides SET distance = 2 WHERE id = {id}"
        ))
        .await
        .expect("begin and update");
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        read_ride(&client, id).await,
        (Some(2), "primary".to_string()),
        "simple protocol"
    );

    let mut jdbc = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    let mut batch = extended("BEGIN");
    batch.extend(extended(&format!(
        "UPDATE rides SET distance = 3 WHERE id = {id}"
    )));
    batch.extend(raw::message(b'S', &[]));
    jdbc.send(&batch).await;
    let answers = jdbc.read_until_ready().await;
    assert!(
        answers.iter().all(|m| m.tag != b'E'),
        "begin and update: {answers:?}"
    );
    assert_eq!(answers.last().map(|m| m.body.clone()), Some(b"T".to_vec()));
    let mut commit = extended("COMMIT");
    commit.extend(raw::message(b'S', &[]));
    jdbc.send(&commit).await;
    jdbc.read_until_ready().await;
    assert_eq!(
        raw_read_ride(&mut jdbc, id).await,
        ("3".to_string(), "primary".to_string()),
        "extended protocol"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_before_its_table_changed_shape_fails_as_on_postgres() {
    // A replica's "cached plan must not change result type" is Postgres's
    // answer, not a replica's refusal: re-run on the primary, the statement
    // would be prepared afresh and its rows, of the new shape, read by a
    // client that keeps the old column list (tokio-postgres, sqlx, pgx).
    let _serial = SERIAL.lock().await;
    let client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS reshaped; CREATE TABLE reshaped (a int, b text); \
             INSERT INTO reshaped VALUES (1, 'hello')",
        )
        .await
        .expect("table");
    cluster().wait_replicas_caught_up();
    let statement = client
        .prepare("SELECT a, b, inet_server_port() FROM reshaped")
        .await
        .expect("prepare");
    let row = client.query_one(&statement, &[]).await.expect("first run");
    assert_eq!(row.get::<_, &str>(1), "hello");
    let port: i32 = row.get(2);
    assert_ne!(server_of(port), "primary", "the first run reads a replica");
    client
        .batch_execute("ALTER TABLE reshaped DROP COLUMN b, ADD COLUMN b int DEFAULT 7")
        .await
        .expect("alter");
    cluster().wait_replicas_caught_up();
    let err = client
        .query_one(&statement, &[])
        .await
        .expect_err("the statement's result type changed");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("0A000"),
        "as on Postgres: {err}"
    );
}

/// Waits for the replicas to replay everything, then pauses their replay.
fn caught_up_then_paused() -> support::PausedReplay<'static> {
    cluster().wait_replicas_caught_up();
    cluster().pause_all_replay()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_proxy_cannot_see_are_read_after_they_commit() {
    // A view over a function that writes, made on the primary behind the
    // proxy's back: a SELECT from it is a write nothing in its text shows.
    // Inside a block, or outside one on the primary, it runs there and
    // commits; the read after the commit must still see what it wrote.
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let id = insert_ride(&client, 1).await;
    cluster().psql_db(
        cluster().primary_port(),
        APP_DB,
        &format!(
            "CREATE FUNCTION hidden_distance_{id}(d int) RETURNS int LANGUAGE sql AS \
             $$ UPDATE rides SET distance = d WHERE id = {id} RETURNING distance $$; \
             CREATE VIEW hidden_five_{id} AS SELECT hidden_distance_{id}(5); \
             CREATE VIEW hidden_six_{id} AS SELECT hidden_distance_{id}(6); \
             CREATE VIEW hidden_seven_{id} AS SELECT hidden_distance_{id}(7); \
             CREATE VIEW hidden_eight_{id} AS SELECT hidden_distance_{id}(8); \
             CREATE VIEW hidden_nine_{id} AS SELECT hidden_distance_{id}(9)"
        ),
    );
    // Each case with the replicas caught up, then paused: what a case
    // before it wrote keeps no replica fresh enough by itself.
    let paused = caught_up_then_paused();

    // A lone COMMIT: the proxy asks the server whether the block wrote.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute(&format!("SELECT * FROM hidden_five_{id}"))
        .await
        .expect("hidden write");
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        read_ride(&client, id).await,
        (Some(5), "primary".to_string()),
        "after a lone COMMIT"
    );
    drop(paused);
    let paused = caught_up_then_paused();

    // The COMMIT behind the hidden write in one query: asked as a write.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute(&format!("SELECT * FROM hidden_six_{id}; COMMIT"))
        .await
        .expect("hidden write and commit");
    assert_eq!(
        read_ride(&client, id).await,
        (Some(6), "primary".to_string()),
        "after a COMMIT in the same query"
    );
    drop(paused);
    let paused = caught_up_then_paused();

    // The extended protocol's COMMIT (pgjdbc's): asked as a write too.
    let mut jdbc = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    let mut batch = extended("BEGIN");
    batch.extend(extended(&format!("SELECT * FROM hidden_seven_{id}")));
    batch.extend(raw::message(b'S', &[]));
    jdbc.send(&batch).await;
    let answers = jdbc.read_until_ready().await;
    assert!(answers.iter().all(|m| m.tag != b'E'), "{answers:?}");
    let mut commit = extended("COMMIT");
    commit.extend(raw::message(b'S', &[]));
    jdbc.send(&commit).await;
    jdbc.read_until_ready().await;
    assert_eq!(
        raw_read_ride(&mut jdbc, id).await,
        ("7".to_string(), "primary".to_string()),
        "after an extended COMMIT"
    );
    drop(paused);
    let paused = caught_up_then_paused();

    // Outside a block, a read sent to the primary (here by a hint) commits
    // what it writes at once: asked as a write as well.
    client
        .batch_execute(&format!(
            "/* causeway: primary */ SELECT * FROM hidden_eight_{id}"
        ))
        .await
        .expect("hinted hidden write");
    assert_eq!(
        read_ride(&client, id).await,
        (Some(8), "primary".to_string()),
        "after a read the primary served outside a block"
    );
    drop(paused);
    let _paused = caught_up_then_paused();

    // A whole block in one query.
    client
        .batch_execute(&format!("BEGIN; SELECT * FROM hidden_nine_{id}; COMMIT"))
        .await
        .expect("a block in one query");
    assert_eq!(
        read_ride(&client, id).await,
        (Some(9), "primary".to_string()),
        "after a block in one query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_only_read_leaves_reads_on_the_replicas() {
    // The question whether a block wrote costs a block that did not write
    // nothing in routing: the read after it still goes to a replica.
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let id = insert_ride(&client, 1).await;
    cluster().wait_replicas_caught_up();
    let _paused = cluster().pause_all_replay();
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute(&format!("SELECT distance FROM rides WHERE id = {id}"))
        .await
        .expect("read in the block");
    client.batch_execute("COMMIT").await.expect("commit");
    let (distance, server) = read_ride(&client, id).await;
    assert_eq!(distance, Some(1));
    assert!(server.starts_with("replica"), "read went to {server}");
}

/// A ride's distance and the server that answered, read by a raw client.
async fn raw_read_ride(raw: &mut RawClient, id: i64) -> (String, String) {
    raw.send(&raw::query(&format!(
        "SELECT distance, inet_server_port() FROM rides WHERE id = {id}"
    )))
    .await;
    let answers = raw.read_until_ready().await;
    let row = answers
        .iter()
        .find(|m| m.tag == b'D')
        .expect("the ride's row");
    let port: i32 = text_column(&row.body, 1).parse().expect("port");
    (text_column(&row.body, 0), server_of(port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_transaction_is_read_after_commit() {
    // BEGIN, UPDATE and COMMIT each in its own Sync, sent at once without
    // waiting for answers (libpq's and tokio-postgres's pipelining).
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let id = insert_ride(&client, 1).await;
    cluster().wait_replicas_caught_up();
    let _paused = cluster().pause_all_replay();
    let mut raw = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    for distance in 2..5 {
        let mut batch = Vec::new();
        for sql in [
            "BEGIN".to_string(),
            format!("UPDATE rides SET distance = {distance} WHERE id = {id}"),
            "COMMIT".to_string(),
        ] {
            batch.extend(extended(&sql));
            batch.extend(raw::message(b'S', &[]));
        }
        raw.send(&batch).await;
        for _ in 0..3 {
            let answers = raw.read_until_ready().await;
            assert!(answers.iter().all(|m| m.tag != b'E'), "{answers:?}");
        }
        assert_eq!(
            raw_read_ride(&mut raw, id).await,
            (distance.to_string(), "primary".to_string()),
            "the read after the pipelined commit"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_the_server_role_are_answered_by_the_primary() {
    // pgjdbc's targetServerType=primary asks `SHOW transaction_read_only`
    // at connect and refuses a server that says `on`, as a replica does.
    let _serial = SERIAL.lock().await;
    let client = client().await;
    for sql in [
        "SHOW transaction_read_only",
        "show in_hot_standby",
        "SELECT current_setting('transaction_read_only')",
    ] {
        let row = client
            .simple_query(sql)
            .await
            .expect(sql)
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
        assert_eq!(row.as_deref(), Some("off"), "{sql}");
    }
    let row = client
        .query_one(
            "SELECT current_setting('in_hot_standby'), inet_server_port()",
            &[],
        )
        .await
        .expect("role and port");
    assert_eq!(row.get::<_, String>(0), "off");
    assert_eq!(server_of(row.get(1)), "primary");
    // Any other read still goes to a replica.
    assert!(server_of_read(&client).await.starts_with("replica"));
}

/// Column `n` of a DataRow body, as text.
fn text_column(body: &[u8], n: usize) -> String {
    let mut at = 2;
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().expect("length"));
        at += 4 + usize::try_from(len).unwrap_or(0);
    }
    let len = i32::from_be_bytes(body[at..at + 4].try_into().expect("length"));
    let len = usize::try_from(len).expect("not NULL");
    String::from_utf8_lossy(&body[at + 4..at + 4 + len]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_write_does_not_force_the_primary() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let _paused = cluster().pause_all_replay();
    client
        .batch_execute("BEGIN; INSERT INTO rides (distance) VALUES (5); ROLLBACK")
        .await
        .expect("rolled back write");
    let (_, server) = read_ride(&client, -1).await;
    assert!(
        server.starts_with("replica"),
        "a session with no committed write reads from replicas: {server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_run_on_one_replica() {
    let _serial = SERIAL.lock().await;
    cluster().wait_replicas_caught_up();
    let client = client().await;
    for begin in [
        "BEGIN READ ONLY",
        "BEGIN; SET TRANSACTION READ ONLY",
        "BEGIN|SET TRANSACTION READ ONLY",
    ] {
        // `|` separates statements sent one by one.
        for statement in begin.split('|') {
            client.batch_execute(statement).await.expect("begin");
        }
        let mut servers = Vec::new();
        for _ in 0..4 {
            servers.push(server_of_read(&client).await);
        }
        client.batch_execute("COMMIT").await.expect("commit");
        assert!(servers[0].starts_with("replica"), "{begin}: {servers:?}");
        assert!(
            servers.iter().all(|s| *s == servers[0]),
            "{begin}: one replica for the block: {servers:?}"
        );
    }
    // A plain transaction block runs on the primary, reads included.
    client.batch_execute("BEGIN").await.expect("begin");
    let server = server_of_read(&client).await;
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(server, "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_to_its_replica() {
    let _serial = SERIAL.lock().await;
    cluster().wait_replicas_caught_up();
    // Each connection's reads, outside any block, all on one replica while
    // it qualifies (its plan cache and buffers stay warm). How connections
    // are spread over the replicas is the router's unit test: here other
    // tests' sessions may take numbers in between.
    for _ in 0..4 {
        let client = client().await;
        let mut servers = Vec::new();
        for _ in 0..6 {
            servers.push(server_of_read(&client).await);
        }
        assert!(servers[0].starts_with("replica"), "{servers:?}");
        assert!(
            servers.iter().all(|s| *s == servers[0]),
            "one replica for the connection: {servers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_session_to_replicas() {
    let _serial = SERIAL.lock().await;
    cluster().wait_replicas_caught_up();
    let client = client().await;
    client
        .batch_execute("SET search_path TO pg_catalog, public; SET TIME ZONE 'Asia/Tokyo'")
        .await
        .expect("set");
    let mut replica_reads = 0;
    for _ in 0..6 {
        let row = client
            .query_one(
                "SELECT current_setting('search_path'), current_setting('TimeZone'), inet_server_port()",
                &[],
            )
            .await
            .expect("read settings");
        assert_eq!(row.get::<_, String>(0), "pg_catalog, public");
        assert_eq!(row.get::<_, String>(1), "Asia/Tokyo");
        if server_of(row.get(2)).starts_with("replica") {
            replica_reads += 1;
        }
    }
    assert!(replica_reads >= 1, "reads should reach replicas");
    client
        .batch_execute("RESET TIME ZONE")
        .await
        .expect("reset");
    let row = client
        .query_one("SELECT current_setting('TimeZone') <> 'Asia/Tokyo'", &[])
        .await
        .expect("read");
    assert!(row.get::<_, bool>(0), "RESET must follow the session too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_before_a_write_executes_on_a_replica_after() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let statement = client
        .prepare("SELECT (SELECT distance FROM rides WHERE id = $1), inet_server_port()")
        .await
        .expect("prepare");
    let id = {
        let _paused = cluster().pause_all_replay();
        let id = insert_ride(&client, 11).await;
        let row = client
            .query_one(&statement, &[&id])
            .await
            .expect("execute on primary");
        assert_eq!(
            (row.get::<_, Option<i32>>(0), server_of(row.get(1))),
            (Some(11), "primary".into())
        );
        id
    };
    cluster().wait_replicas_caught_up();
    let mut servers = Vec::new();
    for _ in 0..4 {
        let row = client
            .query_one(&statement, &[&id])
            .await
            .expect("execute on replica");
        assert_eq!(row.get::<_, Option<i32>>(0), Some(11));
        servers.push(server_of(row.get(1)));
    }
    assert!(
        servers.iter().all(|s| s.starts_with("replica")),
        "{servers:?}"
    );
    // SQL-level PREPARE follows the session as well.
    client
        .batch_execute("PREPARE ride_by_id(bigint) AS SELECT distance, inet_server_port() FROM rides WHERE id = $1")
        .await
        .expect("sql prepare");
    for _ in 0..3 {
        let rows = client
            .simple_query(&format!("EXECUTE ride_by_id({id})"))
            .await
            .expect("execute");
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        assert_eq!(row.get(0), Some("11"));
    }
    client
        .batch_execute("DEALLOCATE ride_by_id")
        .await
        .expect("deallocate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_functions_and_data_modifying_ctes_go_to_the_primary() {
    let _serial = SERIAL.lock().await;
    cluster().wait_replicas_caught_up();
    let client = client().await;
    let row = client
        .query_one("SELECT nextval('route_seq') > 0, inet_server_port()", &[])
        .await
        .expect("nextval");
    assert_eq!(server_of(row.get(1)), "primary");
    let row = client
        .query_one(
            "WITH gone AS (DELETE FROM rides WHERE id = -1 RETURNING id) SELECT count(*), inet_server_port() FROM gone",
            &[],
        )
        .await
        .expect("cte");
    assert_eq!(server_of(row.get(1)), "primary");
}

/// Runs `sql` on the primary (for the test proxy's cluster) and waits
/// until both replicas have it.
fn on_every_server(sql: &str) {
    let _ = proxy();
    cluster().psql_db(cluster().primary_port(), APP_DB, sql);
    cluster().wait_replicas_caught_up();
}

/// Messages up to and including the first of tag `last`.
async fn read_through(client: &mut RawClient, last: u8) -> Vec<raw::RawMessage> {
    let mut answers = Vec::new();
    while let Some(m) = client.read_message().await {
        let done = m.tag == last;
        answers.push(m);
        if done {
            return answers;
        }
    }
    panic!("connection closed after {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_read_prepared_before_a_flush_runs_again_on_the_primary() {
    // asyncpg prepares with Parse, Describe and Flush, reads the answers,
    // then sends Bind, Execute and Sync. When the replica refuses the
    // Execute (a view hides a nextval), the run on the primary needs the
    // statement there too, and the statement stays usable afterwards.
    let _serial = SERIAL.lock().await;
    on_every_server("CREATE OR REPLACE VIEW flush_numbers AS SELECT nextval('route_seq') AS n");
    let mut client = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    let mut prepare = raw::message(
        b'P',
        b"flushed\0SELECT n > 0, inet_server_port() FROM flush_numbers\0\0\0",
    );
    prepare.extend(raw::message(b'D', b"Sflushed\0"));
    prepare.extend(raw::message(b'H', &[]));
    client.send(&prepare).await;
    let described = read_through(&mut client, b'T').await;
    assert_eq!(
        described.first().map(|m| m.tag),
        Some(b'1'),
        "{described:?}"
    );
    for round in 0..2 {
        let mut run = raw::message(b'B', b"\0flushed\0\0\0\0\0\0\0");
        run.extend(raw::message(b'E', b"\0\0\0\0\0"));
        run.extend(raw::message(b'S', &[]));
        client.send(&run).await;
        let answers = client.read_until_ready().await;
        let errors: Vec<_> = answers
            .iter()
            .filter(|m| m.tag == b'E')
            .map(|m| (m.field(b'C'), m.field(b'M')))
            .collect();
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        let row = answers.iter().find(|m| m.tag == b'D').expect("a row");
        assert_eq!(text_column(&row.body, 0), "t", "round {round}");
        let port: i32 = text_column(&row.body, 1).parse().expect("port");
        assert_eq!(server_of(port), "primary", "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_after_a_flushed_prepare_runs_on_the_primary() {
    // asyncpg's copy_records_to_table: Parse, Describe and Flush of a
    // look at the table (a read, on a replica), then the COPY as a simple
    // Query with no Sync between. The COPY must run on the primary, and
    // the statement stay usable.
    let _serial = SERIAL.lock().await;
    on_every_server("CREATE TABLE IF NOT EXISTS copy_target (n int)");
    let mut client = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    let retries_before = read_retries().await;
    for round in 0..3 {
        let name = format!("look{round}\0");
        let mut parse = name.as_bytes().to_vec();
        parse.extend_from_slice(b"SELECT n, inet_server_port() FROM copy_target LIMIT 0\0\0\0");
        let mut look = raw::message(b'P', &parse);
        look.extend(raw::message(b'D', format!("S{name}").as_bytes()));
        look.extend(raw::message(b'H', &[]));
        client.send(&look).await;
        read_through(&mut client, b'T').await;
        client
            .send(&raw::query("COPY copy_target (n) FROM STDIN"))
            .await;
        // The data follows without waiting for CopyInResponse, once the
        // COPY has left the proxy: it must reach the server running it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut data = raw::message(b'd', format!("{round}\n").as_bytes());
        data.extend(raw::message(b'c', &[]));
        client.send(&data).await;
        let done = tokio::time::timeout(Duration::from_secs(10), client.read_until_ready())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the COPY never finished"));
        let tags: Vec<String> = done
            .iter()
            .filter(|m| m.tag == b'C' || m.tag == b'E')
            .map(|m| {
                String::from_utf8_lossy(&m.body)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .collect();
        assert_eq!(tags, ["COPY 1"], "round {round}: {done:?}");
        let mut bind = b"\0".to_vec();
        bind.extend_from_slice(name.as_bytes());
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut run = raw::message(b'B', &bind);
        run.extend(raw::message(b'E', b"\0\0\0\0\0"));
        run.extend(raw::message(b'S', &[]));
        client.send(&run).await;
        let answers = client.read_until_ready().await;
        assert!(
            answers.iter().all(|m| m.tag != b'E'),
            "round {round}: the prepared look: {answers:?}"
        );
    }
    // The COPY went to the primary at once, never to a replica that
    // refused it (its data, sent after it, cannot run again elsewhere).
    assert_eq!(read_retries().await, retries_before, "no COPY was refused");
}

/// Reads re-run on the primary so far, from the admin console.
async fn read_retries() -> u64 {
    let console = connect(proxy().port, APP_USER, APP_PASSWORD, "causeway").await;
    let rows = console
        .simple_query("SHOW STATS")
        .await
        .expect("SHOW STATS");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("read_retries") => {
                r.get(1).and_then(|v| v.parse().ok())
            }
            _ => None,
        })
        .expect("read_retries in SHOW STATS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_replica_refuses_is_rerun_on_the_primary() {
    let _serial = SERIAL.lock().await;
    let _ = proxy();
    cluster().psql_db(
        cluster().primary_port(),
        APP_DB,
        "CREATE OR REPLACE FUNCTION sneaky_write() RETURNS bigint LANGUAGE sql VOLATILE \
         AS 'INSERT INTO rides (distance) VALUES (123) RETURNING id'",
    );
    cluster().wait_replicas_caught_up();
    let client = client().await;
    // The classifier cannot know this function writes: a replica refuses
    // it (25006) and the proxy re-runs it on the primary, invisibly.
    let row = client
        .query_one("SELECT sneaky_write(), inet_server_port()", &[])
        .await
        .expect("no error reaches the client");
    let id: i64 = row.get(0);
    assert_eq!(server_of(row.get(1)), "primary");
    let count = cluster().psql_db(
        cluster().primary_port(),
        APP_DB,
        &format!("SELECT count(*) FROM rides WHERE id = {id} AND distance = 123"),
    );
    assert_eq!(count, "1");
}

/// Write-then-read `rounds` times with a two-insert implicit transaction;
/// returns the stale reads.
async fn multi_statement_rounds(client: &Client, rounds: i32) -> u32 {
    let mut stale = 0;
    for i in 0..rounds {
        let rows = client
            .simple_query(&format!(
                "INSERT INTO rides (distance) VALUES ({i}); INSERT INTO rides (distance) VALUES ({i}) RETURNING id"
            ))
            .await
            .expect("two inserts");
        let id: i64 = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .expect("returned id");
        if read_ride(client, id).await.0 != Some(i) {
            stale += 1;
        }
    }
    stale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_write_then_read_is_never_stale() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    // The commit LSN is asked for after the implicit transaction commits,
    // never inside it, where it would be short of the commit record.
    assert_eq!(
        multi_statement_rounds(&client, 300).await,
        0,
        "stale reads out of 300"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_commit_is_never_stale() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    // With synchronous_commit = off the flush position trails the commit
    // record; the insert position does not. (Reads wait for the WAL writer
    // to flush, so fewer rounds.)
    client
        .batch_execute("SET synchronous_commit = off")
        .await
        .expect("set");
    assert_eq!(
        multi_statement_rounds(&client, 40).await,
        0,
        "stale reads out of 40"
    );
    client
        .batch_execute("RESET synchronous_commit")
        .await
        .expect("reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_sessions_write_then_read_never_stale() {
    let _serial = SERIAL.lock().await;
    cluster().wait_replicas_caught_up();
    let mut tasks = Vec::new();
    for session in 0..16 {
        tasks.push(tokio::spawn(async move {
            let client = client().await;
            let (mut stale, mut on_replica) = (0u32, 0u32);
            for i in 0..500 {
                let distance = session * 1000 + i;
                let id = insert_ride(&client, distance).await;
                let (seen, server) = read_ride(&client, id).await;
                if seen != Some(distance) {
                    stale += 1;
                }
                if server.starts_with("replica") {
                    on_replica += 1;
                }
            }
            (stale, on_replica)
        }));
    }
    let (mut stale, mut on_replica) = (0, 0);
    for task in tasks {
        let (s, r) = task.await.expect("session task");
        stale += s;
        on_replica += r;
    }
    println!(
        "16 x 500 write-then-read: {stale} stale, {on_replica}/8000 reads on replicas ({:.1}%)",
        f64::from(on_replica) / 80.0
    );
    assert_eq!(stale, 0);
    assert!(on_replica > 0, "some reads must reach replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_stale_error_gives_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let strict = TestProxy::start_with(cluster(), |c| {
        c.routing.on_stale = causeway::router::OnStale::Error;
        c.routing.max_wait_ms = 30;
    });
    let client = connect(strict.port, APP_USER, APP_PASSWORD, APP_DB).await;
    let _paused = cluster().pause_all_replay();
    let id = insert_ride(&client, 3).await;
    let err = client
        .query_one("SELECT distance FROM rides WHERE id = $1", &[&id])
        .await
        .expect_err("no fresh replica");
    let db = err.as_db_error().expect("a server-shaped error");
    assert_eq!(db.code().code(), "57P03");
    assert!(
        db.message().contains("no replica has replayed"),
        "{}",
        db.message()
    );
    // The session goes on: a hinted read goes to the primary.
    let row = client
        .query_one(
            "/* causeway: primary */ SELECT distance FROM rides WHERE id = $1",
            &[&id],
        )
        .await
        .expect("hinted read");
    assert_eq!(row.get::<_, i32>(0), 3);
}

#[test]
fn replicas_stopped_reads_move_on_without_errors() {
    let own = TestCluster::start(support::ClusterOptions::default());
    own.psql_db(
        own.primary_port(),
        APP_DB,
        "CREATE TABLE things (id int); INSERT INTO things VALUES (1)",
    );
    own.wait_replicas_caught_up();
    let proxy = TestProxy::start(&own);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
        let read = || async {
            let row = client
                .query_one("SELECT count(*), inet_server_port() FROM things", &[])
                .await
                .expect("read must not fail");
            assert_eq!(row.get::<_, i64>(0), 1);
            row.get::<_, i32>(1)
        };
        own.stop_server("replica0");
        for _ in 0..20 {
            let port = read().await;
            assert_ne!(
                port,
                i32::from(own.replica_port(0)),
                "stopped replica served a read"
            );
        }
        own.stop_server("replica1");
        for _ in 0..10 {
            assert_eq!(read().await, i32::from(own.primary_port()));
        }
        own.start_server("replica1");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut on_replica1 = false;
        for _ in 0..20 {
            on_replica1 |= read().await == i32::from(own.replica_port(1));
        }
        assert!(on_replica1, "a recovered replica gets reads again");
    });
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_after_nextval_in_autocommit() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    // Transaction pooling hands the session its last primary connection
    // back when it is free, so session state the proxy cannot replay
    // (currval, lastval) is still there for the next statement.
    for _ in 0..20 {
        let next: i64 = client
            .query_one("SELECT nextval('route_seq')", &[])
            .await
            .expect("nextval")
            .get(0);
        let current: i64 = client
            .query_one("SELECT currval('route_seq')", &[])
            .await
            .expect("currval in the same session")
            .get(0);
        assert_eq!(current, next);
        let last: i64 = client
            .query_one("SELECT lastval()", &[])
            .await
            .expect("lastval")
            .get(0);
        assert_eq!(last, next);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replicas_are_not_waited_for() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let _paused = cluster().pause_all_replay();
    insert_ride(&client, 1).await;
    // Both replicas now sit behind without replaying: after a moment the
    // proxy stops making reads wait for them.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let id = insert_ride(&client, 2).await;
    let waits_before = proxy()
        .proxy
        .stats
        .waits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        read_ride(&client, id).await,
        (Some(2), "primary".to_string())
    );
    let waits_after = proxy()
        .proxy
        .stats
        .waits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        waits_after, waits_before,
        "no read waited for a paused replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_after_a_replica_read_runs_on_the_primary() {
    let _serial = SERIAL.lock().await;
    cluster().wait_replicas_caught_up();
    let mut client = client().await;
    for _ in 0..5 {
        // The read leaves the session on a replica; the lone BEGIN that
        // follows is held back and must still open the block on the primary.
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("read");
        assert!(server_of(row.get(0)).starts_with("replica"));
        let tx = client.transaction().await.expect("begin");
        let row = tx
            .query_one(
                "INSERT INTO rides (distance) VALUES (8) RETURNING inet_server_port()",
                &[],
            )
            .await
            .expect("a write inside the transaction");
        assert_eq!(server_of(row.get(0)), "primary");
        tx.commit().await.expect("commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_write_transactions_stay_on_the_primary() {
    let _serial = SERIAL.lock().await;
    let mut client = client().await;
    for round in 0..30 {
        let tx = client.transaction().await.expect("begin");
        let row = tx
            .query_one(
                "INSERT INTO rides (distance) VALUES ($1) RETURNING id, inet_server_port()",
                &[&round],
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: write in transaction: {e}"));
        assert_eq!(server_of(row.get(1)), "primary", "round {round}");
        let id: i64 = row.get(0);
        tx.query_one(
            "SELECT distance FROM rides WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .expect("lock");
        tx.execute(
            "UPDATE rides SET distance = distance + 1 WHERE id = $1",
            &[&id],
        )
        .await
        .expect("update");
        tx.commit().await.expect("commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_lasts_while_any_of_its_reasons_does() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    client
        .batch_execute("CREATE TEMP TABLE mine (id int); INSERT INTO mine VALUES (1)")
        .await
        .expect("temp table");
    client
        .batch_execute("LISTEN pin_test")
        .await
        .expect("listen");
    client.batch_execute("UNLISTEN *").await.expect("unlisten");
    // The temp table still ties the session to its server connection.
    for _ in 0..10 {
        let row = client
            .query_one("SELECT count(*) FROM mine", &[])
            .await
            .expect("the temp table is still there");
        assert_eq!(row.get::<_, i64>(0), 1);
    }
    client.batch_execute("DISCARD ALL").await.expect("discard");
}

/// The monitor polls each server every `poll_interval_ms` only while reads
/// are routed by what it sees: after a second with none, every 100 ms; a
/// stream of reads has it poll at the fast pace again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_polls_fast_only_while_reads_are_routed() {
    // A proxy of its own: no other test's reads reach its monitor. Reads
    // wait for a replica as long as it takes on a loaded machine: where the
    // read below runs must not hang on how fast a replica replays.
    let proxy = TestProxy::start_with(cluster(), |c| c.routing.max_wait_ms = 10_000);
    proxy.wait_healthy(Duration::from_secs(5));
    let window = Duration::from_secs(2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = proxy.proxy.monitor.polls();
    tokio::time::sleep(window).await;
    let quiet = proxy.proxy.monitor.polls() - before;

    // The first read after the quiet spell, of a row just written: the
    // positions it finds are up to 100 ms old, yet it reads its write, on
    // a replica.
    let client = connect(proxy.port, APP_USER, APP_PASSWORD, APP_DB).await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS monitor_quiet (id int); \
             INSERT INTO monitor_quiet VALUES (1)",
        )
        .await
        .expect("write");
    let row = client
        .query_one(
            "SELECT count(*), pg_is_in_recovery() FROM monitor_quiet WHERE id = 1",
            &[],
        )
        .await
        .expect("read after the quiet spell");
    let (seen, on_replica): (i64, bool) = (row.get(0), row.get(1));
    assert!(seen >= 1, "the read saw its own write");
    assert!(on_replica, "the read ran on a replica");
    let before = proxy.proxy.monitor.polls();
    let started = std::time::Instant::now();
    let mut reads = 0;
    while started.elapsed() < window {
        client.simple_query("SELECT 1").await.expect("read");
        reads += 1;
    }
    let busy = proxy.proxy.monitor.polls() - before;
    // Three servers: about 20 polls each in the quiet window (every 100
    // ms), about 200 each while reads come (every 10 ms).
    assert!(quiet < 120, "{quiet} polls in {window:?} without reads");
    assert!(
        busy > 3 * quiet.max(60),
        "{busy} polls in {window:?} of {reads} reads, {quiet} without"
    );
    proxy.stop();
}
