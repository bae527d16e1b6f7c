//! The proxy speaks Postgres: every test talks to a real primary (and
//! replicas) through causeway and checks what a client sees.

mod support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::future::poll_fn;
use support::raw::{self, RawClient};
use support::{connect, try_connect, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

fn proxy() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| TestProxy::start(TestCluster::shared()))
}

async fn app_client() -> tokio_postgres::Client {
    connect(proxy().port, APP_USER, APP_PASSWORD, APP_DB).await
}

fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Runs psql against the proxy as `app`; returns stdout, panics on failure.
fn psql(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        APP_USER,
        "-d",
        APP_DB,
    ])
    .arg("-p")
    .arg(proxy().port.to_string())
    .args(args)
    .env("PGPASSWORD", APP_PASSWORD)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("psql runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("psql finishes");
    assert!(
        out.status.success(),
        "psql {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_and_multi_statement_strings() {
    let client = app_client().await;
    let messages = client
        .simple_query("SELECT 1 AS a, 'x' AS b; SELECT generate_series(1, 3)")
        .await
        .expect("multi-statement query");
    assert_eq!(
        simple_rows(&messages),
        vec![
            vec![Some("1".into()), Some("x".into())],
            vec![Some("1".into())],
            vec![Some("2".into())],
            vec![Some("3".into())],
        ]
    );
    let completes = messages
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completes, 2);
    let out = psql(
        &["-c", "SELECT 40 + 2; SELECT upper('through causeway')"],
        None,
    );
    assert_eq!(out, "42\nTHROUGH CAUSEWAY\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_parameters_and_binary_results() {
    let client = app_client().await;
    let row = client
        .query_one(
            "SELECT $1::int4 + 1, $2::text || '!', $3::float8 * 2, $4::bytea",
            &[&41i32, &"hi", &1.25f64, &vec![0u8, 1, 255]],
        )
        .await
        .expect("parameterised query");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, f64>(2), 2.5);
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 1, 255]);
    let rows = client
        .query(
            "SELECT g, g * g FROM generate_series(1, $1::int) g",
            &[&1000i32],
        )
        .await
        .expect("many rows");
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[999].get::<_, i32>(1), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_reused() {
    let client = app_client().await;
    let statement = client
        .prepare("SELECT $1::int8 * 2")
        .await
        .expect("prepare");
    for n in [1i64, 21, -5, 1 << 40] {
        let row = client
            .query_one(&statement, &[&n])
            .await
            .expect("execute prepared");
        assert_eq!(row.get::<_, i64>(0), n * 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_a_transaction_then_rollback() {
    let client = app_client().await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS proto_tx (id int)")
        .await
        .expect("create table");
    client
        .batch_execute("BEGIN; INSERT INTO proto_tx VALUES (7)")
        .await
        .expect("begin + insert");
    let err = client
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("aborted transaction");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let row = client
        .query_one("SELECT count(*) FROM proto_tx WHERE id = 7", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_and_to_stdout() {
    psql(
        &[
            "-c",
            "DROP TABLE IF EXISTS proto_copy; CREATE TABLE proto_copy (id int, name text)",
        ],
        None,
    );
    let input: String = (1..=1000).map(|i| format!("{i}\tname {i}\n")).collect();
    let out = psql(&["-c", "\\copy proto_copy FROM STDIN"], Some(&input));
    assert_eq!(out.trim(), "COPY 1000");
    let out = psql(
        &[
            "-c",
            "\\copy (SELECT * FROM proto_copy ORDER BY id) TO STDOUT",
        ],
        None,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1000);
    assert_eq!(lines[0], "1\tname 1");
    assert_eq!(lines[999], "1000\tname 1000");
    let out = psql(&["-c", "SELECT count(*), sum(id) FROM proto_copy"], None);
    assert_eq!(out.trim(), "1000|500500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_notify() {
    let (listener, mut connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy().port)
        .user(APP_USER)
        .password(APP_PASSWORD)
        .dbname(APP_DB)
        .connect(NoTls)
        .await
        .expect("listener connects");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(n)) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("LISTEN proto_events")
        .await
        .expect("listen");
    let notifier = app_client().await;
    notifier
        .batch_execute("NOTIFY proto_events, 'ride 42 created'")
        .await
        .expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification within 5 s")
        .expect("channel open");
    assert_eq!(
        got,
        ("proto_events".to_string(), "ride 42 created".to_string())
    );
}

/// A client's own NOTIFY comes back with the process ID its
/// BackendKeyData gave it, as from Postgres: drivers tell their own
/// notifications by it (psycopg's own tests check `be_pid`). Another
/// client's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_notification_carries_its_own_process_id() {
    let mut client = RawClient::connect(proxy().port).await;
    client
        .send(&raw::startup_packet(&[
            ("user", "trusted"),
            ("database", APP_DB),
        ]))
        .await;
    let greeting = client.read_until_ready().await;
    let key = greeting
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    let own = i32::from_be_bytes([key.body[0], key.body[1], key.body[2], key.body[3]]);
    let pids = |answer: &[raw::RawMessage]| -> Vec<i32> {
        answer
            .iter()
            .filter(|m| m.tag == b'A')
            .map(|m| i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]))
            .collect()
    };
    client
        .send(&raw::query("LISTEN own_events; NOTIFY own_events, 'mine'"))
        .await;
    assert_eq!(pids(&client.read_until_ready().await), vec![own]);
    let other = app_client().await;
    other
        .batch_execute("NOTIFY own_events, 'theirs'")
        .await
        .expect("notify");
    let notification = client
        .read_message()
        .await
        .expect("the other's notification");
    assert_eq!(notification.tag, b'A');
    let theirs = pids(&[notification]);
    assert_ne!(theirs, vec![own], "another client's notification");
    client.send(&raw::query("UNLISTEN *")).await;
    client.read_until_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let client = app_client().await;
    let token = client.cancel_token();
    let started = Instant::now();
    let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token
        .cancel_query(NoTls)
        .await
        .expect("cancel request sent");
    let result = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("query ended")
        .expect("task");
    let err = result.expect_err("query was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_28p01() {
    for (user, password) in [(APP_USER, "wrong"), ("nobody", "x")] {
        let err = try_connect(proxy().port, user, password, APP_DB)
            .await
            .map(|_| ())
            .expect_err("login must fail");
        let db = err.as_db_error().expect("a server-shaped error");
        assert_eq!(db.code().code(), "28P01");
        assert_eq!(db.severity(), "FATAL");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_gets_the_servers_error() {
    let err = try_connect(proxy().port, APP_USER, APP_PASSWORD, "no_such_db")
        .await
        .map(|_| ())
        .expect_err("unknown database");
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "3D000");
    assert_eq!(db.message(), "database \"no_such_db\" does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_trust_users_log_in() {
    let md5 = connect(
        proxy().port,
        support::MD5_USER,
        support::MD5_PASSWORD,
        APP_DB,
    )
    .await;
    let row = md5
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "md5user");
    let mut trusted = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    trusted.send(&raw::query("SELECT current_user")).await;
    let messages = trusted.read_until_ready().await;
    let data = messages.iter().find(|m| m.tag == b'D').expect("a row");
    assert!(
        data.body.ends_with(b"postgres"),
        "{:?}",
        String::from_utf8_lossy(&data.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_request_is_declined_then_login_works() {
    let mut client = RawClient::connect(proxy().port).await;
    client.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut client.stream, &mut answer)
        .await
        .expect("one byte answer");
    assert_eq!(&answer, b"N");
    client
        .send(&raw::startup_packet(&[
            ("user", "trusted"),
            ("database", APP_DB),
        ]))
        .await;
    let messages = client.read_until_ready().await;
    assert!(
        messages.iter().any(|m| m.tag == b'K'),
        "BackendKeyData expected"
    );
    assert!(messages
        .iter()
        .any(|m| m.tag == b'S' && m.body.starts_with(b"server_version\0")));
}

/// After each kind of bad input, the proxy still serves everybody else.
async fn proxy_still_works() {
    let client = app_client().await;
    let row = client
        .query_one("SELECT 'still here'::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_startup_packet() {
    let mut client = RawClient::connect(proxy().port).await;
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let messages = client.read_until_closed().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].tag, b'E');
    assert_eq!(messages[0].field(b'C').as_deref(), Some("08P01"));
    assert_eq!(
        messages[0].field(b'M').as_deref(),
        Some("invalid length of startup packet")
    );
    proxy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_length_of_two_to_the_31() {
    let mut client = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    client.send(&[b'Q', 0x80, 0, 0, 0, b'S', b'E']).await;
    let messages = client.read_until_closed().await;
    let error = messages.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(error.field(b'C').as_deref(), Some("08P01"));
    assert_eq!(error.field(b'M').as_deref(), Some("invalid message length"));
    proxy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type() {
    let mut client = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    client.send(&raw::message(b'x', b"")).await;
    let messages = client.read_until_closed().await;
    let error = messages.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.field(b'C').as_deref(), Some("08P01"));
    assert_eq!(
        error.field(b'M').as_deref(),
        Some("invalid frontend message type 120")
    );
    proxy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_message_then_close() {
    let mut client = RawClient::login_trusted(proxy().port, "trusted", APP_DB).await;
    let full = raw::query("SELECT 'this message never ends'");
    client.send(&full[..12]).await;
    tokio::io::AsyncWriteExt::shutdown(&mut client.stream)
        .await
        .expect("half close");
    let messages = client.read_until_closed().await;
    assert!(
        messages.iter().all(|m| m.tag != b'D'),
        "no query may run: {messages:?}"
    );
    proxy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_option_is_a_fatal_error() {
    let err = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy().port)
        .user(APP_USER)
        .password(APP_PASSWORD)
        .dbname(APP_DB)
        .options("-c no_such_setting=1")
        .connect(NoTls)
        .await
        .map(|_| ())
        .expect_err("unknown setting");
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "42704");
    assert_eq!(
        db.message(),
        "unrecognized configuration parameter \"no_such_setting\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_reach_the_server() {
    // The same startup through the proxy and straight to the primary must
    // give the same settings.
    let mut seen = Vec::new();
    for port in [proxy().port, TestCluster::shared().primary_port()] {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user(APP_USER)
            .password(APP_PASSWORD)
            .dbname(APP_DB)
            .options("-c search_path=pg_catalog,public -c statement_timeout=1234")
            .application_name("proto-test")
            .connect(NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT current_setting('search_path'), current_setting('statement_timeout'), \
                 current_setting('application_name')",
                &[],
            )
            .await
            .expect("settings");
        seen.push((
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
        ));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].1, "1234ms");
    assert_eq!(seen[0].2, "proto-test");
}

fn pgbench(args: &[&str]) -> String {
    support::pgbench(proxy().port, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_protocol_mode() {
    pgbench(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&["-M", mode, "-t", "200", "-c", "4"]);
        assert!(
            out.contains("number of transactions actually processed: 800/800"),
            "{mode}:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "{mode}:\n{out}"
        );
    }
}

#[test]
fn check_flag_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:6432\"\nmax_clients = 5\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .expect("causeway runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_clients"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[proxy]\nlisten = \"127.0.0.1:6432\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["--check", "--config"])
        .arg(&good)
        .output()
        .expect("causeway runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_is_not_blocked_by_pooled_connections() {
    let admin = app_client().await;
    admin
        .batch_execute("DROP DATABASE IF EXISTS proto_dropme")
        .await
        .expect("clean slate");
    admin
        .batch_execute("CREATE DATABASE proto_dropme")
        .await
        .expect("create");
    {
        // A client uses the new database and leaves; its server
        // connections stay idle in the proxy's pools.
        let user = connect(proxy().port, APP_USER, APP_PASSWORD, "proto_dropme").await;
        user.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
            .await
            .expect("write");
        user.simple_query("SELECT count(*) FROM t")
            .await
            .expect("read");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin
        .batch_execute("DROP DATABASE proto_dropme")
        .await
        .expect("DROP DATABASE must not see the proxy's idle connections");
}
