//! Read-your-writes across connections and proxies: a client named by
//! `causeway.client_id` shares one causal LSN over all its connections, and
//! a causal token (`causeway.lsn`) carries it to any connection of any
//! causeway. Replay is paused on both replicas where staleness must be certain.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::raw::{self, RawClient};
use support::{TestCluster, TestProxy, APP_DB};
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

static SERIAL: Mutex<()> = Mutex::const_new(());

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

fn proxy() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        // These tests are about who shares a causal LSN under the narrower
        // scopes; the default, "global", shares it with everyone.
        let proxy = TestProxy::start_with(cluster(), |c| {
            c.routing.causal_scope = causeway::config::CausalScope::ClientId
        });
        cluster().psql_db(
            cluster().primary_port(),
            APP_DB,
            "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, body text NOT NULL)",
        );
        cluster().wait_replicas_caught_up();
        proxy
    })
}

/// Connects to `port` as `app`, with startup `options` if given.
async fn client_on(port: u16, options: Option<&str>) -> Client {
    support::connect_app(port, APP_DB, options).await
}

async fn write_note(client: &Client, body: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO notes (body) VALUES ($1) RETURNING id",
            &[&body],
        )
        .await
        .expect("insert")
        .get(0)
}

/// Reads a note back; returns whether it was found and which server answered.
async fn read_note(client: &Client, id: i64) -> (bool, bool) {
    let row = client
        .query_one(
            "SELECT count(*) = 1, pg_is_in_recovery() FROM notes WHERE id = $1",
            &[&id],
        )
        .await
        .expect("read");
    (row.get(0), row.get(1))
}

async fn show(client: &Client, name: &str) -> String {
    let messages = client
        .simple_query(&format!("SHOW {name}"))
        .await
        .expect("show");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_id_shares_read_your_writes_other_ids_do_not() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let writer = client_on(port, Some("-c causeway.client_id=alice")).await;
    let same = client_on(port, None).await;
    same.batch_execute("SET causeway.client_id = 'alice'")
        .await
        .expect("set id");
    assert_eq!(show(&same, "causeway.client_id").await, "alice");
    let other = client_on(port, Some("-c causeway.client_id=bob")).await;
    let _paused = cluster().pause_all_replay();
    let id = write_note(&writer, "alice was here").await;
    assert_eq!(
        read_note(&same, id).await,
        (true, false),
        "same id: fresh, from the primary"
    );
    assert_eq!(
        read_note(&other, id).await,
        (false, true),
        "another id: served by a (paused, stale) replica"
    );
    // RESET: the connection stands alone again.
    same.batch_execute("RESET causeway.client_id")
        .await
        .expect("reset id");
    assert_eq!(read_note(&same, id).await, (false, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_token_carries_to_another_proxy() {
    let _serial = SERIAL.lock().await;
    let _ = proxy();
    let second = TestProxy::start(cluster());
    let _paused = cluster().pause_all_replay();
    // The writer reads its token from the ParameterStatus sent after the write.
    let mut writer = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    writer
        .send(&raw::query(
            "INSERT INTO notes (body) VALUES ('token') RETURNING id",
        ))
        .await;
    let messages = writer.read_until_ready().await;
    let status = messages
        .iter()
        .find(|m| m.tag == b'S' && m.body.starts_with(b"causeway.lsn\0"))
        .expect("causeway.lsn reported before ReadyForQuery");
    let token = String::from_utf8_lossy(&status.body[b"causeway.lsn\0".len()..])
        .trim_end_matches('\0')
        .to_string();
    let row = messages
        .iter()
        .find(|m| m.tag == b'D')
        .expect("returned id");
    let id: i64 = String::from_utf8_lossy(&row.body[6..]).parse().expect("id");
    let primary_lsn = cluster().primary_lsn();
    assert!(token.contains('/'), "token {token}");
    // The token is the writer's commit position: never past what the primary wrote.
    let token_lsn: support::Lsn = token.parse().expect("token parses");
    assert!(token_lsn <= primary_lsn, "{token} > {primary_lsn}");

    let reader = client_on(second.port, None).await;
    assert_eq!(
        read_note(&reader, id).await,
        (false, true),
        "without the token: stale replica"
    );
    reader
        .batch_execute(&format!("SET causeway.min_lsn = '{token}'"))
        .await
        .expect("hand in token");
    assert_eq!(
        read_note(&reader, id).await,
        (true, false),
        "with the token: fresh"
    );
    assert_eq!(show(&reader, "causeway.lsn").await, token);
    let err = reader
        .batch_execute("SET causeway.min_lsn = 'yesterday'")
        .await
        .expect_err("bad token");
    let db = err.as_db_error().expect("server-shaped error");
    assert_eq!(db.code().code(), "22023");
    assert!(
        db.message().contains("expected two hexadecimal numbers"),
        "{}",
        db.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_lsn_expires() {
    let _serial = SERIAL.lock().await;
    let _ = proxy();
    let short = TestProxy::start_with(cluster(), |c| {
        c.routing.client_lsn_ttl_ms = 300;
        c.routing.causal_scope = causeway::config::CausalScope::ClientId;
    });
    let writer = client_on(short.port, Some("-c causeway.client_id=carol")).await;
    let reader = client_on(short.port, Some("-c causeway.client_id=carol")).await;
    let _paused = cluster().pause_all_replay();
    let id = write_note(&writer, "soon forgotten").await;
    assert_eq!(
        read_note(&reader, id).await,
        (true, false),
        "within the TTL: fresh"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        read_note(&reader, id).await,
        (false, true),
        "after the TTL: any replica"
    );
    // The writer's own session still remembers its write.
    assert_eq!(read_note(&writer, id).await, (true, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_scope_shares_by_login_role() {
    let _serial = SERIAL.lock().await;
    let _ = proxy();
    let by_user = TestProxy::start_with(cluster(), |c| {
        c.routing.causal_scope = causeway::config::CausalScope::User;
    });
    let writer = client_on(by_user.port, None).await;
    let reader = client_on(by_user.port, None).await;
    let _paused = cluster().pause_all_replay();
    let id = write_note(&writer, "by role").await;
    assert_eq!(read_note(&reader, id).await, (true, false));
}

/// Drivers that prepare every statement by name (asyncpg; psycopg from a
/// statement's sixth run; tokio-postgres) send `causeway.*` commands as
/// Parse, then Bind and Execute of that name: the proxy answers all of it,
/// and only the Execute changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causeway_commands_prepared_by_name_are_answered_by_the_proxy() {
    let client = client_on(proxy().port, None).await;
    let set = client
        .prepare("SET causeway.client_id = 'prepared-a'")
        .await
        .expect("prepare the SET");
    client
        .prepare("SET causeway.client_id = 'only-prepared'")
        .await
        .expect("prepare another SET");
    assert_eq!(
        show(&client, "causeway.client_id").await,
        "",
        "preparing sets nothing"
    );
    for round in 0..3 {
        client
            .execute(&set, &[])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {}", support::describe_error(&e)));
        let row = client
            .query_one("SHOW causeway.client_id", &[])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {}", support::describe_error(&e)));
        assert_eq!(row.get::<_, String>(0), "prepared-a", "round {round}");
    }
    let lsn = client
        .query_one("SHOW causeway.lsn", &[])
        .await
        .expect("SHOW causeway.lsn, prepared");
    assert_eq!(lsn.columns()[0].name(), "causeway.lsn");
}

/// In a failed transaction block a `causeway.*` command is refused like
/// any other (25P02), and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causeway_commands_in_a_failed_block_are_refused() {
    let client = client_on(proxy().port, None).await;
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute("SELECT 1 / 0")
        .await
        .expect_err("division by zero");
    for sql in [
        "SHOW causeway.lsn",
        "SET causeway.client_id = 'in-failed-block'",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("25P02"),
            "{sql}: {err}"
        );
    }
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(show(&client, "causeway.client_id").await, "");
}

/// `SET causeway.client_id` in a block is undone by its ROLLBACK and kept
/// by its COMMIT, as the server treats any SET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_set_in_a_rolled_back_block_is_undone() {
    let client = client_on(proxy().port, Some("-c causeway.client_id=before")).await;
    client
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");
    client
        .batch_execute("SET causeway.client_id = 'inside'")
        .await
        .expect("set in the block");
    assert_eq!(show(&client, "causeway.client_id").await, "inside");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(show(&client, "causeway.client_id").await, "before");
    client
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");
    client
        .batch_execute("SET causeway.client_id = 'kept'")
        .await
        .expect("set in the block");
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(show(&client, "causeway.client_id").await, "kept");
}
