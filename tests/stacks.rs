//! What popular stacks send when they open a connection, statement for
//! statement (read from their sources: Django 5.2 with psycopg 3,
//! SQLAlchemy 2.0, Rails 8.1, pgjdbc 42.7, node-postgres, Prisma's engine,
//! asyncpg), and then their ordinary autocommit reads: none of it may pin
//! the session, so the reads land on replicas, and each session still reads
//! its own writes. Against a real primary and two streaming replicas.

mod support;

use std::sync::OnceLock;

use support::{TestCluster, TestProxy, APP_DB};
use tokio_postgres::{Client, SimpleQueryMessage};

fn cluster() -> &'static TestCluster {
    TestCluster::shared()
}

fn proxy() -> &'static TestProxy {
    static PROXY: OnceLock<TestProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        cluster().psql_db(
            cluster().primary_port(),
            APP_DB,
            "CREATE TABLE IF NOT EXISTS stack_items (id bigserial PRIMARY KEY, name text NOT NULL)",
        );
        cluster().wait_replicas_caught_up();
        TestProxy::start(cluster())
    })
}

/// Connects like the stack's driver: startup `options` stand for the
/// startup parameters it sends (pgjdbc's DateStyle and TimeZone...).
async fn connect(options: Option<&str>) -> Client {
    support::connect_app(proxy().port, APP_DB, options).await
}

async fn simple(client: &Client, sql: &str) {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", support::describe_error(&e)));
}

/// Ordinary reads, simple and extended, then a write read back at once:
/// returns how many of the plain reads ran on a replica.
async fn ordinary_reads(client: &Client, stack: &str) -> usize {
    let mut on_replicas = 0;
    for _ in 0..3 {
        let messages = client
            .simple_query("SELECT pg_is_in_recovery()::text, count(*) FROM stack_items")
            .await
            .unwrap_or_else(|e| panic!("{stack}: {}", support::describe_error(&e)));
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        });
        on_replicas += usize::from(row.as_deref() == Some("true"));
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), count(*) FROM stack_items WHERE name = $1",
                &[&stack],
            )
            .await
            .unwrap_or_else(|e| panic!("{stack}: {}", support::describe_error(&e)));
        on_replicas += usize::from(row.get::<_, bool>(0));
    }
    let id: i64 = client
        .query_one(
            "INSERT INTO stack_items (name) VALUES ($1) RETURNING id",
            &[&stack],
        )
        .await
        .expect("insert")
        .get(0);
    let seen: i64 = client
        .query_one("SELECT count(*) FROM stack_items WHERE id = $1", &[&id])
        .await
        .expect("read back")
        .get(0);
    assert_eq!(seen, 1, "{stack}: read its own write stale");
    on_replicas
}

async fn assert_reads_on_replicas(client: &Client, stack: &str) {
    let on_replicas = ordinary_reads(client, stack).await;
    assert_eq!(on_replicas, 6, "{stack}: reads left the replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_with_psycopg3() {
    // base.py: client_encoding=UTF8 at startup; then, when the server's
    // TimeZone differs from Django's (Etc/UTC against UTC), on every new
    // connection, sent by ClientCursor as a simple query.
    let client = connect(Some("-c client_encoding=UTF8")).await;
    simple(&client, "SELECT set_config('TimeZone', 'UTC', false)").await;
    assert_reads_on_replicas(&client, "django").await;
    // With server_side_binding = True the value is a parameter.
    let client = connect(None).await;
    client
        .query("SELECT set_config('TimeZone', $1, false)", &[&"UTC"])
        .await
        .expect("set_config");
    assert_reads_on_replicas(&client, "django-server-side-binding").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_first_connect() {
    // engine/create.py first_connect -> dialect.initialize, in psycopg's
    // implicit transaction, ending in ROLLBACK.
    let client = connect(None).await;
    for sql in [
        "BEGIN",
        "select pg_catalog.version()",
        "select current_schema()",
        "show transaction isolation level",
        "show standard_conforming_strings",
        "SAVEPOINT \"_pg3_1\"",
    ] {
        simple(&client, sql).await;
    }
    client
        .query(
            "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, \
             typdelim AS delimiter FROM pg_type t WHERE t.oid = to_regtype($1)",
            &[&"hstore"],
        )
        .await
        .expect("hstore lookup");
    simple(&client, "RELEASE \"_pg3_1\"").await;
    simple(&client, "ROLLBACK").await;
    // isolation_level="AUTOCOMMIT": plain autocommit reads.
    assert_reads_on_replicas(&client, "sqlalchemy").await;
    // postgresql_readonly=True: psycopg's BEGIN READ ONLY.
    simple(&client, "BEGIN READ ONLY").await;
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("read-only block");
    simple(&client, "COMMIT").await;
    assert!(row.get::<_, bool>(0), "BEGIN READ ONLY ran on the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_postgresql_adapter() {
    // configure_connection, all simple queries.
    let client = connect(None).await;
    for sql in [
        "SET client_min_messages TO 'warning'",
        "SET standard_conforming_strings = on",
        "SET intervalstyle = iso_8601",
        "SET SESSION timezone TO 'UTC'",
        "SHOW search_path",
    ] {
        simple(&client, sql).await;
    }
    // Queries with binds are named prepared statements (a1, a2...).
    let statement = client
        .prepare("SELECT pg_is_in_recovery(), count(*) FROM stack_items WHERE name = $1")
        .await
        .expect("prepare");
    for _ in 0..3 {
        let row = client
            .query_one(&statement, &[&"rails"])
            .await
            .expect("prepared read");
        assert!(row.get::<_, bool>(0), "rails: prepared read on the primary");
    }
    assert_reads_on_replicas(&client, "rails").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_and_hibernate() {
    // Startup parameters DateStyle, TimeZone (the JVM's), then
    // runInitialQueries as a simple query; setTransactionIsolation sends
    // SET SESSION CHARACTERISTICS (extended protocol, unnamed).
    let client = connect(Some("-c DateStyle=ISO -c TimeZone=Europe/Paris")).await;
    simple(&client, "SET application_name = 'PostgreSQL JDBC Driver'").await;
    client
        .execute(
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
            &[],
        )
        .await
        .expect("setTransactionIsolation");
    assert_reads_on_replicas(&client, "pgjdbc").await;
    // autoCommit=false + setReadOnly(true): BEGIN READ ONLY as a simple
    // query, in front of the statement.
    simple(&client, "BEGIN READ ONLY").await;
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("read-only transaction");
    simple(&client, "COMMIT").await;
    assert!(row.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_and_prisma() {
    // node-postgres: client_encoding=UTF8 and application_name at startup,
    // no SQL.
    let client = connect(Some("-c client_encoding=UTF8 -c application_name=node")).await;
    assert_reads_on_replicas(&client, "node-postgres").await;
    // Prisma (pgbouncer mode): SET search_path, then named statements s0...
    let client = connect(None).await;
    simple(&client, "SET search_path = \"public\";").await;
    assert_reads_on_replicas(&client, "prisma").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_reset_and_transactions() {
    let client = connect(None).await;
    // transaction(isolation='serializable', readonly=True): on the primary,
    // where it works.
    simple(&client, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY;").await;
    simple(&client, "SELECT count(*) FROM stack_items").await;
    simple(&client, "COMMIT;").await;
    // transaction(isolation='repeatable_read', readonly=True): a replica.
    simple(&client, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;").await;
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("read");
    simple(&client, "COMMIT;").await;
    assert!(row.get::<_, bool>(0));
    // Type introspection (custom types): jit off around the lookup, then
    // back; session settings, not pins.
    let row = client
        .query_one(
            "SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new",
            &[],
        )
        .await
        .expect("jit off");
    let previous: String = row.get(0);
    assert_reads_on_replicas(&client, "asyncpg-introspection").await;
    let jit: String = client
        .query_one("SELECT current_setting('jit')", &[])
        .await
        .expect("jit on replicas")
        .get(0);
    assert_eq!(jit, "off", "the setting follows the session");
    client
        .query("SELECT set_config('jit', $1, false)", &[&previous])
        .await
        .expect("jit back");
    // The pool's reset query on release.
    simple(
        &client,
        "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    )
    .await;
    assert_reads_on_replicas(&client, "asyncpg").await;
}
