//! Session state never crosses clients, and frameworks' connection set-up
//! never pins a session: against a real primary and two streaming replicas,
//! with transaction pooling and a pool small enough that every server
//! connection is reused by the next client.

mod support;

use std::sync::OnceLock;

use support::raw::{self, RawClient, RawMessage};
use support::{TestCluster, TestProxy, APP_DB, APP_USER};
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The leak test counts on which connections exist: one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

/// Two server connections per server: a client's leftovers are on the
/// connections the next clients get.
fn proxy() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let proxy = TestProxy::start_with(cluster(), |c| {
            c.pool.max_server_connections = 2;
            // Functions created without the proxy are learned this fast.
            c.routing.function_catalog_refresh_ms = 300;
        });
        cluster().psql_db(
            cluster().primary_port(),
            APP_DB,
            "CREATE TABLE IF NOT EXISTS state_notes (id bigserial PRIMARY KEY, body text); \
             CREATE SCHEMA IF NOT EXISTS leak_schema;",
        );
        cluster().wait_replicas_caught_up();
        proxy
    })
}

async fn client_on(port: u16, options: Option<&str>) -> Client {
    support::connect_app(port, APP_DB, options).await
}

async fn values(client: &Client, sql: &str) -> Vec<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", support::describe_error(&e)));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .expect("a row")
}

/// Everything a client can change about its session, as a fresh session
/// sees it.
const STATE: &str = "SELECT current_setting('default_transaction_isolation'), \
     current_setting('default_transaction_read_only'), \
     current_setting('default_transaction_deferrable'), \
     current_setting('TimeZone'), current_setting('search_path'), \
     current_setting('xmloption'), current_setting('client_encoding'), \
     current_setting('statement_timeout'), current_setting('work_mem'), \
     current_setting('application_name'), \
     coalesce(current_setting('app.tenant', true), ''), \
     current_user::text, session_user::text";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_settings_never_reach_the_next_clients() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let direct = client_on(cluster().primary_port(), None).await;
    let defaults = values(&direct, STATE).await;

    // Several clients at once change everything they can, on primary and
    // replica connections alike, and leave.
    let mut leavers = Vec::new();
    for n in 0..3 {
        leavers.push(tokio::spawn(async move {
            let client =
                client_on(port, Some("-c statement_timeout=12345 -c work_mem=7777kB")).await;
            let statements = [
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, DEFERRABLE",
                "SET TIME ZONE 'America/New_York'",
                "SET SCHEMA 'leak_schema'",
                "SET XML OPTION DOCUMENT",
                "SET NAMES 'LATIN1'",
                "SET application_name = 'leaker'",
                "SELECT set_config('app.tenant', 'leaked', false)",
                "SET default_transaction_read_only = on",
                "SET SESSION AUTHORIZATION md5user",
                "SET ROLE app",
            ];
            for sql in statements {
                client
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {}", support::describe_error(&e)));
            }
            // Extended protocol, the value as a parameter (Django, psycopg).
            client
                .query("SELECT set_config('TimeZone', $1, false)", &[&"Asia/Tokyo"])
                .await
                .expect("set_config with a parameter");
            for _ in 0..4 {
                let state = values(&client, STATE).await;
                assert_eq!(state[3], "Asia/Tokyo", "client {n}: {state:?}");
                assert_eq!(state[10], "leaked");
            }
            drop(client);
        }));
    }
    for leaver in leavers {
        leaver.await.expect("leaver");
    }

    // Fresh clients, on every server connection the pool has, see
    // Postgres's defaults: no leak, no error.
    let mut seen = 0;
    for _ in 0..8 {
        let client = client_on(port, None).await;
        for _ in 0..4 {
            let state = values(&client, STATE).await;
            assert_eq!(state, defaults, "a fresh client saw another's settings");
            seen += 1;
        }
    }
    assert_eq!(seen, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_at_connect_does_not_pin_reads_to_the_primary() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    // What Django sends on connect, in both spellings it may use.
    let simple = client_on(port, None).await;
    simple
        .batch_execute("SELECT set_config('TimeZone', 'Etc/GMT+3', false)")
        .await
        .expect("simple set_config");
    let extended = client_on(port, None).await;
    extended
        .query("SELECT set_config('TimeZone', $1, false)", &[&"Etc/GMT+3"])
        .await
        .expect("extended set_config");
    for client in [&simple, &extended] {
        let mut on_replicas = 0;
        for _ in 0..6 {
            let row = values(
                client,
                "SELECT pg_is_in_recovery()::text, current_setting('TimeZone')",
            )
            .await;
            assert_eq!(row[1], "Etc/GMT+3", "the setting follows the session");
            if row[0] == "true" {
                on_replicas += 1;
            }
        }
        assert_eq!(on_replicas, 6, "reads after set_config stay on replicas");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_read_only_sessions_run_their_blocks_on_replicas() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let spellings: [(&str, Option<&str>); 4] = [
        ("SET default_transaction_read_only = on", None),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", None),
        (
            "SELECT set_config('default_transaction_read_only', 'on', false)",
            None,
        ),
        ("SELECT 1", Some("-c default_transaction_read_only=on")),
    ];
    for (setup, options) in spellings {
        let client = client_on(port, options).await;
        client.batch_execute(setup).await.expect(setup);
        for begin in ["BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ"] {
            client.batch_execute(begin).await.expect(begin);
            let row = values(&client, "SELECT pg_is_in_recovery()::text").await;
            client.batch_execute("COMMIT").await.expect("commit");
            assert_eq!(
                row[0], "true",
                "{setup} / {begin}: the block ran on the primary"
            );
        }
        // A write in such a block is refused as Postgres refuses it.
        client.batch_execute("BEGIN").await.expect("begin");
        let err = client
            .batch_execute("INSERT INTO state_notes (body) VALUES ('x')")
            .await
            .expect_err("a write in a read-only block");
        assert_eq!(err.code().map(|c| c.code()), Some("25006"));
        client.batch_execute("ROLLBACK").await.expect("rollback");
        // BEGIN READ WRITE still opens a writable block, on the primary.
        client
            .batch_execute("BEGIN READ WRITE; INSERT INTO state_notes (body) VALUES ('rw'); COMMIT")
            .await
            .expect("read write block");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_keeps_the_role_as_postgres_does() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let client = client_on(port, None).await;
    client
        .batch_execute("SET ROLE md5user; SET search_path = leak_schema")
        .await
        .expect("set");
    client.batch_execute("RESET ALL").await.expect("reset all");
    for _ in 0..4 {
        let row = values(
            &client,
            "SELECT current_user::text, current_setting('search_path')",
        )
        .await;
        assert_eq!(row[0], "md5user", "RESET ALL does not reset the role");
        assert_eq!(row[1], "\"$user\", public");
    }
    drop(client);
    for _ in 0..4 {
        let client = client_on(port, None).await;
        for _ in 0..3 {
            let row = values(&client, "SELECT current_user::text").await;
            assert_eq!(row[0], APP_USER, "a fresh client got another's role");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_default_of_read_only_runs_blocks_on_replicas() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let c = cluster();
    c.psql_db(
        c.primary_port(),
        APP_DB,
        "DROP DATABASE IF EXISTS ro_default_db",
    );
    c.psql_db(
        c.primary_port(),
        APP_DB,
        "CREATE DATABASE ro_default_db OWNER app",
    );
    c.psql_db(
        c.primary_port(),
        APP_DB,
        "ALTER DATABASE ro_default_db SET default_transaction_read_only = on",
    );
    c.wait_replicas_caught_up();
    let client = support::connect_app(port, "ro_default_db", None).await;
    for _ in 0..3 {
        client.batch_execute("BEGIN").await.expect("begin");
        let row = values(&client, "SELECT pg_is_in_recovery()::text").await;
        client.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(
            row[0], "true",
            "a block of a read-only database ran on the primary"
        );
    }
}

/// Runs one simple-protocol statement on a raw client; returns its answer.
async fn run_raw(client: &mut RawClient, sql: &[u8]) -> Vec<RawMessage> {
    let mut body = sql.to_vec();
    body.push(0);
    client.send(&raw::message(b'Q', &body)).await;
    let answer = client.read_until_ready().await;
    assert_no_error(&answer, &String::from_utf8_lossy(sql));
    answer
}

/// The SQLSTATE of the first error in an answer.
fn error_code(answer: &[RawMessage]) -> Option<String> {
    answer
        .iter()
        .find(|m| m.tag == b'E')
        .and_then(|e| e.field(b'C'))
}

fn assert_no_error(answer: &[RawMessage], what: &str) {
    let errors: Vec<_> = answer
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| m.field(b'M'))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}");
}

/// A raw client of the `trusted` user with these startup parameters.
async fn raw_client(port: u16, params: &[(&str, &str)]) -> RawClient {
    let mut client = RawClient::connect(port).await;
    let mut startup = vec![("user", "trusted"), ("database", APP_DB)];
    startup.extend_from_slice(params);
    client.send(&raw::startup_packet(&startup)).await;
    let greeting = client.read_until_ready().await;
    assert_no_error(&greeting, &format!("startup with {params:?}"));
    client
}

/// A raw client of the `trusted` user with client_encoding LATIN1.
async fn latin1_client(port: u16) -> RawClient {
    raw_client(port, &[("client_encoding", "LATIN1")]).await
}

/// `other`, a client of the pool, sees a fresh session's state both on a
/// replica and on the primary.
async fn assert_sees_defaults(other: &Client, defaults: &[String], what: &str) {
    assert_eq!(
        values(other, STATE).await,
        defaults,
        "{what}: another client saw the setting (replica)"
    );
    let on_primary = format!("/* causeway: primary */ {STATE}");
    assert_eq!(
        values(other, &on_primary).await,
        defaults,
        "{what}: another client saw the setting (primary)"
    );
}

/// Four rounds of: another client of the pool sees a fresh session, and
/// `client` still has its own `app.tenant`.
async fn assert_tenant_stays(
    client: &Client,
    port: u16,
    defaults: &[String],
    tenant: &str,
    what: &str,
) {
    for round in 0..4 {
        let other = client_on(port, None).await;
        assert_sees_defaults(&other, defaults, &format!("{what}, round {round}")).await;
        assert_eq!(
            values(client, "SELECT current_setting('app.tenant', true)").await,
            vec![tenant],
            "{what}, round {round}: the session lost its own setting"
        );
    }
}

/// The first column of the first DataRow, as bytes.
fn first_value(answer: &[RawMessage]) -> Vec<u8> {
    let row = answer.iter().find(|m| m.tag == b'D').expect("a row");
    let len = i32::from_be_bytes([row.body[2], row.body[3], row.body[4], row.body[5]]);
    row.body[6..6 + len as usize].to_vec()
}

/// A client whose client_encoding is LATIN1 sends texts that are not
/// UTF-8. Its SET stays with it while other clients use the connections,
/// no other client of its pool sees it, and it leaves with the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_setting_stays_with_its_session_and_leaves_with_it() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    // The LATIN1 client logs in as `trusted` (no password exchange on a
    // raw socket), so the others do too: they share its pool.
    let trusted = || support::connect(port, "trusted", "", APP_DB);
    let defaults = values(&trusted().await, STATE).await;
    let mut latin1 = latin1_client(port).await;
    // 'café' with LATIN1's single byte for é (0xE9): not UTF-8.
    run_raw(&mut latin1, b"SET app.tenant = 'caf\xe9'").await;
    for round in 0..6 {
        // Another client takes a connection in between, and must not see
        // the setting.
        let other = trusted().await;
        assert_eq!(
            values(&other, STATE).await,
            defaults,
            "round {round}: another client saw the LATIN1 client's setting"
        );
        let answer = run_raw(&mut latin1, b"SELECT current_setting('app.tenant')").await;
        assert_eq!(
            first_value(&answer),
            b"caf\xe9",
            "round {round}: the setting left its session"
        );
    }
    latin1.send(&raw::message(b'X', &[])).await;
    drop(latin1);
    for _ in 0..8 {
        let client = trusted().await;
        for _ in 0..4 {
            assert_eq!(
                values(&client, STATE).await,
                defaults,
                "a fresh client saw the LATIN1 client's setting"
            );
        }
    }
}

/// A LATIN1 client that names a prepared statement in LATIN1 runs it again
/// and again while other clients use the connections: the session keeps
/// the primary connection that holds the statement (a replica could serve
/// the read, but the proxy could not prepare a name it cannot file there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_named_in_latin1_stays_usable() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let mut latin1 = latin1_client(port).await;
    // The name 'sté' (é = 0xE9): not UTF-8.
    let name: &[u8] = b"st\xe9\0";
    let mut parse = name.to_vec();
    parse.extend_from_slice(b"SELECT pg_is_in_recovery()::text || 41 + $1::int\0\0\0");
    let mut batch = raw::message(b'P', &parse);
    batch.extend(raw::message(b'S', &[]));
    latin1.send(&batch).await;
    let answer = latin1.read_until_ready().await;
    assert!(answer.iter().any(|m| m.tag == b'1'), "{answer:?}");
    for round in 0..6 {
        // Other clients of the same pool take connections in between.
        let other = support::connect(port, "trusted", "", APP_DB).await;
        values(&other, "SELECT 1").await;
        // Bind the named statement with $1 = 1 (text), execute, sync.
        let mut bind = b"\0".to_vec();
        bind.extend_from_slice(name);
        bind.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'1', 0, 0]);
        let mut batch = raw::message(b'B', &bind);
        batch.extend(raw::message(b'E', b"\0\0\0\0\0"));
        batch.extend(raw::message(b'S', &[]));
        latin1.send(&batch).await;
        let answer = latin1.read_until_ready().await;
        assert_no_error(&answer, &format!("round {round}"));
        assert_eq!(
            String::from_utf8_lossy(&first_value(&answer)),
            "false42",
            "round {round}: the statement ran on its own primary connection"
        );
    }
}

/// Texts the server reads otherwise than the proxy's scanner. With
/// standard_conforming_strings off, `'a\''` is one string to the server
/// (the quote is escaped) and, to a scanner with the defaults, a string
/// followed by the start of another, which swallows the `SET` after it. In
/// SJIS, `ソ` is the bytes 0x83 0x5C, the second a backslash to a scanner
/// that does not know the encoding: `E'ソ'` seems not to end. The server
/// runs the `SET` either way. It must stay with its client, as Postgres
/// keeps it, and never reach another client of the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_behind_a_backslash_stays_with_its_session() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let trusted = || support::connect(port, "trusted", "", APP_DB);
    let defaults = values(&trusted().await, STATE).await;
    let hidden_set: &[u8] = b"SELECT 'a\\'' ; SET app.tenant = 'hidden' ; --'";
    let sjis_set: &[u8] = b"SELECT E'\x83\\' ; SET app.tenant = 'hidden' ; --'";
    // What the case is, the client's startup parameters, its statements.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<&'a [u8]>);
    let cases: [Case; 3] = [
        (
            "standard_conforming_strings off at startup",
            &[("options", "-c standard_conforming_strings=off")],
            vec![hidden_set],
        ),
        (
            "client_encoding SJIS",
            &[("client_encoding", "SJIS")],
            vec![sjis_set],
        ),
        (
            "standard_conforming_strings turned off in the same write",
            &[],
            vec![b"SET standard_conforming_strings = off", hidden_set],
        ),
    ];
    for (case, params, texts) in cases {
        let mut client = raw_client(port, params).await;
        // All of the case's statements in one write: the proxy reads the
        // second before the server has answered the first.
        let mut write = Vec::new();
        for text in &texts {
            let mut body = text.to_vec();
            body.push(0);
            write.extend(raw::message(b'Q', &body));
        }
        client.send(&write).await;
        for _ in &texts {
            let answer = client.read_until_ready().await;
            assert_no_error(&answer, case);
        }
        for round in 0..4 {
            let other = trusted().await;
            assert_sees_defaults(&other, &defaults, &format!("{case}, round {round}")).await;
            let answer = run_raw(
                &mut client,
                b"SELECT coalesce(current_setting('app.tenant', true), '')",
            )
            .await;
            assert_eq!(
                String::from_utf8_lossy(&first_value(&answer)),
                "hidden",
                "{case}, round {round}: the session lost its own setting"
            );
        }
        client.send(&raw::message(b'X', &[])).await;
        drop(client);
        for _ in 0..6 {
            let other = trusted().await;
            assert_sees_defaults(&other, &defaults, &format!("{case}, after it left")).await;
        }
    }
}

/// A text the proxy's lexer refuses, though it differs from a good one
/// only in a literal (`E'\777'`, a byte this UTF-8 database refuses too),
/// must not lend its verdict to the good one: the good one's SET would run
/// unseen, stay on its connection and reach the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_the_proxy_cannot_read_lends_no_verdict() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let defaults = values(&client_on(port, None).await, STATE).await;
    let refused = client_on(port, None).await;
    let error = refused
        .simple_query("SELECT E'\\777' ; SET app.tenant = ''")
        .await
        .expect_err("the server refuses byte 0xFF in UTF-8");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE),
        "{}",
        support::describe_error(&error)
    );
    let client = client_on(port, None).await;
    client
        .simple_query("SELECT E'\\x41' ; SET app.tenant = 'mine'")
        .await
        .unwrap_or_else(|e| panic!("{}", support::describe_error(&e)));
    assert_tenant_stays(&client, port, &defaults, "mine", "after the refused text").await;
}

/// A function can change settings where the proxy cannot see them, and
/// Postgres 15 reports no custom setting. A call of such a function (from
/// a read or through another function), a procedure that does it with
/// `EXECUTE`, and a `DO` block that sets one or calls a setter pin their
/// session: the setting stays with it, as in Postgres, and reaches no other
/// client. A VOLATILE function that changes no setting pins nothing, nor
/// does a `DO` block that only calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_inside_functions_stay_with_their_session() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let setup = client_on(port, None).await;
    setup
        .batch_execute(
            "CREATE OR REPLACE FUNCTION state_set_tenant(t text) RETURNS text \
               LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('app.tenant', t, false); \
               RETURN t; END $$; \
             CREATE OR REPLACE FUNCTION state_login(t text) RETURNS text \
               LANGUAGE sql AS $$ SELECT state_set_tenant(t) $$; \
             CREATE OR REPLACE PROCEDURE state_tenant_procedure(t text) \
               LANGUAGE plpgsql AS $$ BEGIN EXECUTE format('SET app.tenant = %L', t); END $$; \
             CREATE OR REPLACE FUNCTION state_note(b text) RETURNS bigint \
               LANGUAGE sql AS $$ INSERT INTO state_notes (body) VALUES (b) RETURNING id $$;",
        )
        .await
        .unwrap_or_else(|e| panic!("{}", support::describe_error(&e)));
    // The catalog is read again behind the DDL, on the same connection:
    // once this answers, it is in.
    values(&setup, "SELECT 1").await;
    let defaults = values(&client_on(port, None).await, STATE).await;
    let cases = [
        (
            "a setter called from a SELECT",
            "SELECT state_set_tenant('fn')",
            "fn",
        ),
        (
            "a setter called through another function",
            "SELECT state_login('login')",
            "login",
        ),
        ("a procedure", "CALL state_tenant_procedure('call')", "call"),
        (
            "a DO block",
            "DO $$ BEGIN PERFORM set_config('app.tenant', 'do', false); END $$",
            "do",
        ),
        (
            "a DO block calling a setter",
            "DO $$ BEGIN PERFORM state_set_tenant('do-call'); END $$",
            "do-call",
        ),
    ];
    for (case, sql, tenant) in cases {
        let client = client_on(port, None).await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{case}: {}", support::describe_error(&e)));
        assert_tenant_stays(&client, port, &defaults, tenant, case).await;
    }
    let client = client_on(port, None).await;
    values(&client, "SELECT state_note('no setting')::text").await;
    client
        .batch_execute("DO $$ BEGIN PERFORM state_note('from a DO block'); END $$")
        .await
        .unwrap_or_else(|e| panic!("{}", support::describe_error(&e)));
    cluster().wait_replicas_caught_up();
    for round in 0..6 {
        assert_eq!(
            values(&client, "SELECT pg_is_in_recovery()::text").await,
            vec!["true"],
            "round {round}: a function (or DO block) that changes no setting pinned its session"
        );
    }
}

/// Functions created on the server without the proxy (a migration run
/// directly on the primary) are learned when the function catalog is read
/// again: a VOLATILE one then sends the statement calling it to the
/// primary, and a setter pins its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_created_without_the_proxy_are_learned() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let client = client_on(port, None).await;
    // The catalog is read by now; names new to this run are not in it.
    let run = std::process::id();
    let (probe, setter) = (format!("direct_where_{run}"), format!("direct_set_{run}"));
    cluster().psql_db(
        cluster().primary_port(),
        APP_DB,
        &format!(
            "CREATE FUNCTION {probe}() RETURNS text LANGUAGE sql VOLATILE \
               AS $$ SELECT pg_is_in_recovery()::text $$; \
             CREATE FUNCTION {setter}(t text) RETURNS text LANGUAGE plpgsql \
               AS $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END $$;"
        ),
    );
    cluster().wait_replicas_caught_up();
    let call_probe = format!("SELECT {probe}()");
    assert_eq!(
        values(&client, &call_probe).await,
        vec!["true"],
        "unknown, the function is taken for a read and runs on a replica"
    );
    let mut learned = false;
    for _ in 0..50 {
        // A unit that ends work on the primary carries the re-read.
        client
            .batch_execute("INSERT INTO state_notes (body) VALUES ('carries the catalog')")
            .await
            .unwrap_or_else(|e| panic!("{}", support::describe_error(&e)));
        if values(&client, &call_probe).await == vec!["false"] {
            learned = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(learned, "{probe}, created on the server, was never learned");
    let defaults = values(&client_on(port, None).await, STATE).await;
    let session = client_on(port, None).await;
    session
        .batch_execute(&format!("SELECT {setter}('direct')"))
        .await
        .unwrap_or_else(|e| panic!("{}", support::describe_error(&e)));
    assert_tenant_stays(
        &session,
        port,
        &defaults,
        "direct",
        "a setter made without the proxy",
    )
    .await;
    // With no write to carry it, a new client's greeting reads the catalog
    // again once it is due.
    let later = format!("direct_later_{run}");
    cluster().psql_db(
        cluster().primary_port(),
        APP_DB,
        &format!(
            "CREATE FUNCTION {later}() RETURNS text LANGUAGE sql VOLATILE \
               AS $$ SELECT pg_is_in_recovery()::text $$;"
        ),
    );
    cluster().wait_replicas_caught_up();
    // Past a refresh period after the function was made.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let newcomer = client_on(port, None).await;
    assert_eq!(
        values(&newcomer, &format!("SELECT {later}()")).await,
        vec!["false"],
        "the new client's greeting did not read the catalog again"
    );
}

/// A client that names a statement it never prepared hears that it does
/// not exist (26000), as from its own server, even where another client
/// left a statement of that name on the server connection it gets: it must
/// never run the other client's statement or see its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_another_client_left_is_not_found() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    // Two clients at once leave a writing statement named `leftover` on
    // both of the primary's connections, run once.
    let mut left = Vec::new();
    for _ in 0..2 {
        let mut x = raw_client(port, &[]).await;
        let mut batch = raw::message(
            b'P',
            b"leftover\0INSERT INTO state_notes (body) VALUES ('x-secret') RETURNING body\0\0\0",
        );
        batch.extend(raw::message(b'B', b"\0leftover\0\0\0\0\0\0\0"));
        batch.extend(raw::message(b'E', b"\0\0\0\0\0"));
        x.send(&batch).await;
        left.push(x);
    }
    for x in &mut left {
        x.send(&raw::message(b'S', &[])).await;
        let answer = x.read_until_ready().await;
        assert_no_error(&answer, "the other client's statement");
    }
    drop(left);
    for round in 0..4 {
        let mut y = raw_client(port, &[]).await;
        let mut batch = raw::message(b'B', b"\0leftover\0\0\0\0\0\0\0");
        batch.extend(raw::message(b'E', b"\0\0\0\0\0"));
        batch.extend(raw::message(b'S', &[]));
        y.send(&batch).await;
        let answer = y.read_until_ready().await;
        assert_eq!(
            error_code(&answer).as_deref(),
            Some("26000"),
            "round {round}: {answer:?}"
        );
        assert!(
            answer.iter().all(|m| m.tag != b'D'),
            "round {round}: ran another client's statement: {answer:?}"
        );
    }
}

/// Preparing a name the session already has fails with 42P05 and keeps
/// the first statement, by the protocol's Parse and by SQL `PREPARE`, also
/// when the session's connection changed in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preparing_a_name_twice_fails_and_keeps_the_first() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let mut client = raw_client(port, &[]).await;
    let parse = |sql: &str| {
        let mut body = b"dup\0".to_vec();
        body.extend_from_slice(sql.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        let mut batch = raw::message(b'P', &body);
        batch.extend(raw::message(b'S', &[]));
        batch
    };
    client.send(&parse("SELECT 'first'")).await;
    assert_no_error(&client.read_until_ready().await, "the first Parse");
    run_raw(&mut client, b"PREPARE sdup AS SELECT 'first'").await;
    for round in 0..3 {
        // Other clients of the pool take the connections in between.
        let other = support::connect(port, "trusted", "", APP_DB).await;
        values(&other, "SELECT 1").await;
        client.send(&parse("SELECT 'second'")).await;
        let answer = client.read_until_ready().await;
        assert_eq!(
            error_code(&answer).as_deref(),
            Some("42P05"),
            "round {round}: {answer:?}"
        );
        client
            .send(&raw::query("PREPARE sdup AS SELECT 'second'"))
            .await;
        let answer = client.read_until_ready().await;
        assert_eq!(
            error_code(&answer).as_deref(),
            Some("42P05"),
            "round {round}: {answer:?}"
        );
        let mut run = raw::message(b'B', b"\0dup\0\0\0\0\0\0\0");
        run.extend(raw::message(b'E', b"\0\0\0\0\0"));
        run.extend(raw::message(b'S', &[]));
        client.send(&run).await;
        let answer = client.read_until_ready().await;
        assert_no_error(&answer, &format!("round {round}: Bind dup"));
        assert_eq!(first_value(&answer), b"first", "round {round}: Parse");
        let answer = run_raw(&mut client, b"EXECUTE sdup").await;
        assert_eq!(first_value(&answer), b"first", "round {round}: PREPARE");
    }
}

/// A setting changed after a savepoint and rolled back to it is undone, on
/// every server the session uses afterwards, as Postgres undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_rolled_back_to_a_savepoint_is_undone() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let client = client_on(port, None).await;
    for sql in [
        "BEGIN",
        "SET work_mem = '14MB'",
        "SAVEPOINT a",
        "SET work_mem = '15MB'",
        "SET statement_timeout = '1s'",
        "ROLLBACK TO SAVEPOINT a",
        "SAVEPOINT b",
        "SET application_name = 'kept'",
        "RELEASE b",
        "COMMIT",
    ] {
        client.batch_execute(sql).await.expect(sql);
    }
    settings_stay(
        port,
        &client,
        "SELECT current_setting('work_mem'), current_setting('statement_timeout'), \
         current_setting('application_name')",
        &["14MB", "0", "kept"],
    )
    .await;
}

/// Reads `sql` three times on `client`, each after another client took a
/// connection (reads go to replicas, where the session's settings are
/// replayed), and expects `expected` each time.
async fn settings_stay(port: u16, client: &Client, sql: &str, expected: &[&str]) {
    for round in 0..3 {
        let other = client_on(port, None).await;
        values(&other, "SELECT 1").await;
        assert_eq!(values(client, sql).await, expected, "round {round}");
    }
}

/// The same, with the block in one query: the answer to ROLLBACK TO
/// SAVEPOINT carries the command tag ROLLBACK, which ends no transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_rolled_back_in_one_query_keeps_the_settings_before_it() {
    let _serial = SERIAL.lock().await;
    let port = proxy().port;
    let client = client_on(port, None).await;
    client
        .batch_execute(
            "BEGIN; SET work_mem = '7MB'; SAVEPOINT a; SET work_mem = '9MB'; \
             ROLLBACK TO a; SET statement_timeout = '3s'; COMMIT",
        )
        .await
        .expect("the block");
    settings_stay(
        port,
        &client,
        "SELECT current_setting('work_mem'), current_setting('statement_timeout')",
        &["7MB", "3s"],
    )
    .await;
}

/// A write in a block that also rolled back to a savepoint, all in one
/// query, is a committed write: the read after it sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_committed_after_a_rollback_to_savepoint_is_read_back() {
    let _serial = SERIAL.lock().await;
    let client = client_on(proxy().port, None).await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS savepoint_writes; CREATE TABLE savepoint_writes (n int)",
        )
        .await
        .expect("table");
    cluster().wait_replicas_caught_up();
    let _paused = cluster().pause_all_replay();
    client
        .batch_execute(
            "BEGIN; INSERT INTO savepoint_writes VALUES (1); SAVEPOINT a; \
             INSERT INTO savepoint_writes VALUES (2); ROLLBACK TO a; COMMIT",
        )
        .await
        .expect("the block");
    assert_eq!(
        values(
            &client,
            "SELECT count(*) FILTER (WHERE n = 1)::text || '/' || count(*) FROM savepoint_writes"
        )
        .await
        .first()
        .map(String::as_str),
        Some("1/1")
    );
}

/// `currval` and `lastval` never answer with another client's sequence
/// state, which stays on the server connection they shared: a client that
/// called no nextval there gets Postgres's "not yet defined" (55000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_never_answers_with_another_clients_nextval() {
    let proxy = TestProxy::start_with(cluster(), |c| {
        c.pool.max_server_connections = 1;
    });
    let a = client_on(proxy.port, None).await;
    let b = client_on(proxy.port, None).await;
    a.batch_execute("DROP SEQUENCE IF EXISTS shared_seq; CREATE SEQUENCE shared_seq START 100")
        .await
        .expect("sequence");
    let code = |result: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>| match result {
        Ok(messages) => format!("{messages:?}"),
        Err(e) => e
            .code()
            .map_or_else(|| e.to_string(), |c| c.code().to_string()),
    };
    assert_eq!(values(&a, "SELECT nextval('shared_seq')").await, ["100"]);
    // The same client, on the same connection: its own value.
    assert_eq!(values(&a, "SELECT currval('shared_seq')").await, ["100"]);
    assert_eq!(
        code(b.simple_query("SELECT currval('shared_seq')").await),
        "55000"
    );
    assert_eq!(code(b.simple_query("SELECT lastval()").await), "55000");
    assert_eq!(values(&b, "SELECT nextval('shared_seq')").await, ["101"]);
    assert_eq!(values(&b, "SELECT currval('shared_seq')").await, ["101"]);
    // A's own value went with the connection to B: an error, never 101.
    assert_eq!(
        code(a.simple_query("SELECT currval('shared_seq')").await),
        "55000"
    );
    assert_eq!(values(&b, "SELECT nextval('shared_seq')").await, ["102"]);
    assert_eq!(values(&b, "SELECT lastval()").await, ["102"]);
}

/// In session pooling, with a reset query that leaves settings and
/// statements (`SELECT 1`), the next client of the connection still finds
/// neither: the proxy undoes and closes them as it does between clients
/// in transaction pooling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_query_that_resets_nothing_leaks_nothing() {
    let proxy = TestProxy::start_with(cluster(), |c| {
        c.pool.max_server_connections = 1;
        c.pool.mode = causeway::config::PoolMode::Session;
        c.pool.reset_query = "SELECT 1".into();
    });
    let _ = self::proxy();
    let first = client_on(proxy.port, None).await;
    first
        .batch_execute(
            "SET work_mem = '77MB'; PREPARE leftover AS SELECT 'secret'; \
             INSERT INTO state_notes (body) VALUES ('reset query')",
        )
        .await
        .expect("settings, a statement and a write, on the primary");
    drop(first);
    let next = client_on(proxy.port, None).await;
    for round in 0..3 {
        let shown = values(
            &next,
            "/* causeway: primary */ SELECT current_setting('work_mem')",
        )
        .await;
        assert_eq!(shown, ["4MB"], "round {round}");
        let err = next
            .batch_execute("/* causeway: primary */ EXECUTE leftover")
            .await
            .expect_err("another client's statement");
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("26000"),
            "round {round}: {err}"
        );
    }
}

/// A server connection keeps at most `max_prepared_statements` prepared
/// statements, whichever clients made them: past it the least recently
/// used are closed, and a client whose statement went gets it back,
/// unseen, when it next runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_at_most_max_prepared_statements() {
    let proxy = TestProxy::start_with(cluster(), |c| {
        c.replicas.clear();
        c.pool.max_server_connections = 1;
        c.pool.max_prepared_statements = 10;
    });
    let (first, second) = (
        client_on(proxy.port, None).await,
        client_on(proxy.port, None).await,
    );
    let mut statements = Vec::new();
    for i in 0..25 {
        let client = if i % 2 == 0 { &first } else { &second };
        let statement = client
            .prepare(&format!("SELECT {i}::int + $1"))
            .await
            .expect("prepare");
        statements.push((client, statement, i));
    }
    for round in 0..2 {
        for (client, statement, i) in &statements {
            let n: i32 = client
                .query_one(statement, &[&round])
                .await
                .unwrap_or_else(|e| panic!("statement {i}: {}", support::describe_error(&e)))
                .get(0);
            assert_eq!(n, i + round, "statement {i}, round {round}");
        }
    }
    let held: i64 = first
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .expect("count")
        .get(0);
    assert!(
        (1..=10).contains(&held),
        "{held} statements on the one server connection"
    );
    proxy.stop();
}

/// A statement prepared where reads go (a replica), used in a block that
/// an error aborted on the primary, which never had it: Postgres says the
/// block is aborted (25P02), not that the statement does not exist
/// (26000, which would make a driver forget it); ROLLBACK ends the block
/// and the statement runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_used_in_an_aborted_block_on_a_server_without_it_fails_as_aborted() {
    let _serial = SERIAL.lock().await;
    let client = client_on(proxy().port, None).await;
    let read = client
        .prepare("SELECT $1::int + 0, pg_is_in_recovery()")
        .await
        .expect("prepare");
    let row = client.query_one(&read, &[&1]).await.expect("read");
    assert!(row.get::<_, bool>(1), "prepared and run on a replica");
    client
        .batch_execute("BEGIN; INSERT INTO state_notes (body) VALUES ('aborted')")
        .await
        .expect("a block on the primary");
    let err = client
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    let err = client
        .query_one(&read, &[&2])
        .await
        .expect_err("a statement in the aborted block");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("25P02"),
        "{}",
        support::describe_error(&err)
    );
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    let row = client.query_one(&read, &[&3]).await.expect("read after");
    assert_eq!(row.get::<_, i32>(0), 3);
}
