//! Smoke test of the test-support cluster itself: if these fail, every
//! integration test of the proxy would fail for reasons that are not the
//! proxy's. Each check looks at real values on the real servers.

mod support;

use std::time::Duration;

use support::{
    connect, describe_error, redis_ping, try_connect, ClusterOptions, Lsn, TestCluster, APP_DB,
    APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER,
};

fn count(cluster: &TestCluster, port: u16, table: &str) -> i64 {
    let out = cluster.psql_db(port, APP_DB, &format!("SELECT count(*) FROM {table}"));
    out.parse()
        .unwrap_or_else(|e| panic!("count(*) of {table} on port {port} printed {out:?}: {e}"))
}

#[test]
fn primary_is_writable_and_replicas_are_in_recovery() {
    let cluster = TestCluster::shared();
    assert_eq!(
        cluster.psql(cluster.primary_port(), "SELECT pg_is_in_recovery()"),
        "f"
    );
    let replicas = cluster.replica_ports();
    assert_eq!(replicas.len(), 2);
    for port in replicas {
        assert_eq!(cluster.psql(port, "SELECT pg_is_in_recovery()"), "t");
    }
    assert_eq!(
        cluster.psql(cluster.primary_port(), "SHOW wal_level"),
        "logical"
    );
    let streaming = cluster.psql(
        cluster.primary_port(),
        "SELECT string_agg(application_name || '=' || state, ',' ORDER BY application_name) \
         FROM pg_stat_replication",
    );
    assert_eq!(streaming, "replica0=streaming,replica1=streaming");
}

#[test]
fn lsns_parse_print_and_order_like_postgres() {
    let lsn: Lsn = "16/B374D848".parse().expect("a valid LSN");
    assert_eq!(lsn, Lsn(0x16_B374_D848));
    assert_eq!(lsn.to_string(), "16/B374D848");
    assert!("0/3000148".parse::<Lsn>() < "1/0".parse::<Lsn>());
    assert!("3000148".parse::<Lsn>().is_err());
}

#[test]
fn rows_written_on_the_primary_reach_both_replicas() {
    let cluster = TestCluster::shared();
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE smoke_replicated (id int PRIMARY KEY, note text); \
         INSERT INTO smoke_replicated VALUES (1, 'hello replicas')",
    );
    let written = cluster.primary_lsn();
    cluster.wait_replicas_caught_up();
    for (i, port) in cluster.replica_ports().into_iter().enumerate() {
        assert!(cluster.replayed_lsn(i) >= written);
        assert_eq!(
            cluster.psql_db(port, APP_DB, "SELECT id, note FROM smoke_replicated"),
            "1|hello replicas"
        );
    }
}

#[test]
fn a_paused_replica_does_not_see_new_rows_until_resumed() {
    let cluster = TestCluster::shared();
    let [stale, fresh] = cluster.replica_ports()[..] else {
        panic!("expected 2 replicas");
    };
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE smoke_paused (id int); INSERT INTO smoke_paused VALUES (1)",
    );
    cluster.wait_replicas_caught_up();
    assert_eq!(count(cluster, stale, "smoke_paused"), 1);

    cluster.pause_replay(0);
    assert_eq!(cluster.replay_pause_state(0), "paused");
    let replayed_before = cluster.replayed_lsn(0);
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "INSERT INTO smoke_paused VALUES (2)",
    );
    let written = cluster.primary_lsn();
    assert!(written > replayed_before);
    cluster.wait_replica_caught_up(1);
    assert_eq!(count(cluster, fresh, "smoke_paused"), 2);
    // Replica 1 has replayed the insert, so replica 0 has surely received it:
    // only the pause keeps it invisible.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(cluster, stale, "smoke_paused"), 1);
    assert_eq!(cluster.replayed_lsn(0), replayed_before);

    cluster.resume_replay(0);
    cluster.wait_replica_caught_up(0);
    assert!(cluster.replayed_lsn(0) >= written);
    assert_eq!(count(cluster, stale, "smoke_paused"), 2);
}

#[test]
fn redis_answers_ping() {
    let cluster = TestCluster::shared();
    let port = cluster.redis_port().expect("the shared cluster runs Redis");
    assert_eq!(redis_ping(port).as_deref(), Ok("+PONG"));
}

#[tokio::test]
async fn roles_log_in_with_their_auth_methods() {
    let cluster = TestCluster::shared();
    let primary = cluster.primary_port();

    let app = connect(primary, APP_USER, APP_PASSWORD, APP_DB).await;
    let row = app
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("app".to_string(), "app".to_string())
    );

    let md5 = connect(primary, MD5_USER, MD5_PASSWORD, APP_DB).await;
    let row = md5
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    assert_eq!(row.get::<_, String>(0), "md5user");

    // How each password is stored decides how the server asks for it.
    let stored = cluster.psql(
        primary,
        "SELECT rolname, left(rolpassword, 14) FROM pg_authid \
         WHERE rolname IN ('app', 'md5user') ORDER BY rolname",
    );
    let lines: Vec<&str> = stored.lines().collect();
    assert_eq!(lines[0], "app|SCRAM-SHA-256$");
    assert!(lines[1].starts_with("md5user|md5"), "{stored}");

    let Err(refused) = try_connect(primary, APP_USER, "wrong", APP_DB).await else {
        panic!("a wrong password must be refused");
    };
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{}",
        describe_error(&refused)
    );

    // The superuser is trusted over the Unix socket: no password at all.
    let socket_dir = cluster.socket_dir().expect("socket dir path is short");
    let (postgres, connection) = tokio_postgres::Config::new()
        .host_path(socket_dir)
        .port(primary)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("unix socket login: {}", describe_error(&e)));
    tokio::spawn(connection);
    let row = postgres
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    assert_eq!(row.get::<_, String>(0), "postgres");
}

/// A cluster of one's own: restarting a replica works, and dropping the
/// cluster stops its servers and deletes its directory at once.
#[test]
fn own_cluster_restarts_a_replica_and_is_gone_after_drop() {
    let cluster = TestCluster::start(ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    });
    assert_eq!(cluster.redis_port(), None);
    let (primary, replica) = (cluster.primary_port(), cluster.replica_port(0));
    cluster.psql_db(primary, APP_DB, "CREATE TABLE t (id int)");

    cluster.stop_server("replica0");
    assert!(!cluster.is_running("replica0"));
    assert!(cluster.try_psql(replica, "postgres", "SELECT 1").is_err());
    cluster.psql_db(primary, APP_DB, "INSERT INTO t VALUES (1), (2), (3)");
    cluster.start_server("replica0");
    cluster.wait_replicas_caught_up();
    assert_eq!(count(&cluster, replica, "t"), 3);

    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    for port in [primary, replica] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a server still listens on port {port} after drop"
        );
    }
}
