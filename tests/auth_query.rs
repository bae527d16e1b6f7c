//! Users known only to Postgres: `auth_query` reads their secret from the
//! servers (PgBouncer's SECURITY DEFINER lookup function over pg_shadow),
//! causeway checks the client's password against it and logs in to the
//! servers by SCRAM pass-through (the keys the client's proof revealed),
//! on the primary and on the replicas. A wrong password gets Postgres's
//! 28P01; a lookup that fails lets nobody in. A listed user with only a
//! SCRAM verifier logs in to the servers the same way.

mod support;

use causeway::config::UserSection;
use support::{TestCluster, TestProxy, APP_DB};

const LOOKUP: &str = "SELECT usename, passwd FROM pgbouncer.get_auth($1)";

fn setup(cluster: &TestCluster) {
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE ROLE aq_user LOGIN PASSWORD 'aq-pass'; \
         CREATE ROLE aq_listed LOGIN PASSWORD 'listed-pass'; \
         CREATE SCHEMA pgbouncer; \
         CREATE FUNCTION pgbouncer.get_auth(p_usename text) \
           RETURNS TABLE(usename name, passwd text) LANGUAGE sql SECURITY DEFINER \
           SET search_path = pg_catalog AS \
           $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_usename $$; \
         REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC; \
         GRANT USAGE ON SCHEMA pgbouncer TO app; \
         GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO app; \
         CREATE TABLE aq_notes (id serial PRIMARY KEY, who text DEFAULT current_user); \
         GRANT SELECT, INSERT ON aq_notes TO aq_user, aq_listed; \
         GRANT USAGE ON SEQUENCE aq_notes_id_seq TO aq_user, aq_listed;",
    );
    cluster.wait_replicas_caught_up();
}

/// Who the server says we are, and whether the statement ran on a replica.
async fn whoami(client: &tokio_postgres::Client) -> (String, bool) {
    let row = client
        .query_one("SELECT current_user::text, pg_is_in_recovery()", &[])
        .await
        .unwrap_or_else(|e| panic!("{}", support::describe_error(&e)));
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_known_only_to_postgres_log_in_through_auth_query() {
    let cluster = TestCluster::shared();
    setup(cluster);
    let verifier = cluster.psql(
        cluster.primary_port(),
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'aq_listed'",
    );
    let proxy = TestProxy::start_with(cluster, |c| {
        c.auth.auth_query = Some(LOOKUP.to_string());
        c.auth.auth_user = Some("app".to_string());
        c.users.push(UserSection {
            name: "aq_listed".to_string(),
            password: None,
            scram_verifier: Some(verifier.trim().to_string()),
            md5_hash: None,
            auth: None,
            server_user: None,
            server_password: None,
        });
    });

    // Known only to Postgres: logs in, reads on a replica and writes on
    // the primary, each server logged in to without its password.
    let client = support::try_connect(proxy.port, "aq_user", "aq-pass", APP_DB)
        .await
        .unwrap_or_else(|e| panic!("auth_query login: {}", support::describe_error(&e)));
    assert_eq!(whoami(&client).await, ("aq_user".to_string(), true));
    let who: String = client
        .query_one("INSERT INTO aq_notes DEFAULT VALUES RETURNING who", &[])
        .await
        .expect("write on the primary")
        .get(0);
    assert_eq!(who, "aq_user");

    // Listed with only a SCRAM verifier: the same pass-through.
    let listed = support::try_connect(proxy.port, "aq_listed", "listed-pass", APP_DB)
        .await
        .unwrap_or_else(|e| panic!("verifier-only login: {}", support::describe_error(&e)));
    assert_eq!(whoami(&listed).await, ("aq_listed".to_string(), true));
    listed
        .execute("INSERT INTO aq_notes DEFAULT VALUES", &[])
        .await
        .expect("write");

    // A wrong password, and a role that does not exist: Postgres's words.
    for (user, password) in [("aq_user", "wrong"), ("aq_nobody", "aq-pass")] {
        let err = support::try_connect(proxy.port, user, password, APP_DB)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} with {password:?} got in"));
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "28P01", "{db:?}");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }
    proxy.stop();

    // A lookup that fails is a refusal, never an open door.
    let broken = TestProxy::start_with(cluster, |c| {
        c.auth.auth_query = Some("SELECT usename, passwd FROM no_such_function($1)".into());
        c.auth.auth_user = Some("app".to_string());
    });
    let err = support::try_connect(broken.port, "aq_user", "aq-pass", APP_DB)
        .await
        .expect_err("no login when the lookup fails");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert!(db.message().contains("auth_query"), "{db:?}");
    broken.stop();
}
