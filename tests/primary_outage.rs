//! Sessions survive a lost primary: while it is down, a unit that needs it
//! gets a non-FATAL `ERROR` (SQLSTATE 57P03) and the session stays open,
//! reads keep going to the replicas, and new clients can log in; when it is
//! back, writes work again on the same connections. On a cluster of its
//! own, since it stops the primary.

mod support;

use std::time::Duration;

use support::{wait_for, ClusterOptions, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio_postgres::Client;

async fn client(port: u16) -> Client {
    support::connect(port, APP_USER, APP_PASSWORD, APP_DB).await
}

async fn count_rows(client: &Client) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one("SELECT count(*) FROM outage_notes", &[])
        .await
        .map(|row| row.get(0))
}

fn wait_primary(proxy: &TestProxy, healthy: bool) {
    wait_for(
        "the proxy's monitor to see the primary's state change",
        Duration::from_secs(30),
        || {
            let seen = proxy.proxy.monitor.positions().primary_healthy;
            if seen == healthy {
                Ok(())
            } else {
                Err(format!("primary_healthy = {seen}"))
            }
        },
    );
}

/// The message tags of an answer, and the status it ends in.
fn tags(answer: &[support::raw::RawMessage]) -> (String, u8) {
    let tags = answer.iter().map(|m| m.tag as char).collect();
    (tags, answer.last().map_or(0, |m| m.body[0]))
}

/// The SQLSTATEs of an answer's errors.
fn codes(answer: &[support::raw::RawMessage]) -> Vec<String> {
    answer
        .iter()
        .filter(|m| m.tag == b'E')
        .filter_map(|m| m.field(b'C'))
        .collect()
}

/// pgjdbc's BEGIN without a primary: a prepared statement bound and
/// executed with no Sync, then the block's first statement (with
/// `autosave=always`, a simple-Query SAVEPOINT). On a server BEGIN cannot
/// fail: it is answered and held back, and the statement after it fails in
/// the block, which ROLLBACK ends. Refusing the BEGIN instead left pgjdbc
/// reading one statement's answers as another's.
async fn extended_begin_without_a_primary(port: u16, quiet: &mut support::raw::RawClient) {
    use support::raw::{message, query, RawClient};
    let mut raw = RawClient::login_trusted(port, "trusted", APP_DB).await;
    let mut bind = b"\0jdbc_begin\0".to_vec();
    bind.extend([0; 6]);
    let bind = message(b'B', &bind);
    let execute = message(b'E', &[0; 5]);
    let mut batch = message(b'P', b"jdbc_begin\0BEGIN\0\0\0");
    batch.extend(&bind);
    batch.extend(&execute);
    batch.extend(query("SAVEPOINT PGJDBC_AUTOSAVE"));
    raw.send(&batch).await;
    let answer = raw.read_until_ready().await;
    assert_eq!(tags(&answer), ("12CEZ".to_string(), b'E'), "{answer:?}");
    assert_eq!(codes(&answer), ["57P03"]);
    raw.send(&query("SELECT 1")).await;
    assert_eq!(codes(&raw.read_until_ready().await), ["25P02"]);
    raw.send(&query("ROLLBACK")).await;
    assert_eq!(
        tags(&raw.read_until_ready().await),
        ("CZ".to_string(), b'I')
    );

    // The prepared BEGIN was kept: bound again, with its Sync.
    let mut batch = bind;
    batch.extend(&execute);
    batch.extend(message(b'S', b""));
    raw.send(&batch).await;
    let answer = raw.read_until_ready().await;
    assert_eq!(tags(&answer), ("2CZ".to_string(), b'T'), "{answer:?}");
    raw.send(&query("INSERT INTO outage_notes (body) VALUES ('during')"))
        .await;
    let answer = raw.read_until_ready().await;
    assert_eq!(
        (codes(&answer), tags(&answer).1),
        (vec!["57P03".to_string()], b'E')
    );
    raw.send(&query("ROLLBACK")).await;
    assert_eq!(
        tags(&raw.read_until_ready().await),
        ("CZ".to_string(), b'I')
    );

    // COMMIT or ROLLBACK outside any block needs no primary: Postgres's
    // warning that no transaction is in progress, and the tag.
    for end in ["ROLLBACK", "commit"] {
        raw.send(&query(end)).await;
        let answer = raw.read_until_ready().await;
        assert_eq!(tags(&answer), ("NCZ".to_string(), b'I'), "{answer:?}");
        assert_eq!(answer[0].field(b'C').as_deref(), Some("25P01"));
        assert!(answer[1].body.starts_with(end.to_uppercase().as_bytes()));
    }
    // Without the warning for a session that asked for errors only.
    quiet.send(&query("ROLLBACK")).await;
    assert_eq!(
        tags(&quiet.read_until_ready().await),
        ("CZ".to_string(), b'I')
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_primary_fails_writes_not_sessions() {
    let cluster = TestCluster::start(ClusterOptions::default());
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE outage_notes (id bigserial PRIMARY KEY, body text NOT NULL); \
         INSERT INTO outage_notes (body) VALUES ('before');",
    );
    cluster.wait_replicas_caught_up();
    let proxy = TestProxy::start(&cluster);
    let session = client(proxy.port).await;
    assert_eq!(count_rows(&session).await.expect("read"), 1);
    let mut quiet = support::raw::RawClient::login_trusted(proxy.port, "trusted", APP_DB).await;
    quiet
        .send(&support::raw::query("SET client_min_messages = error"))
        .await;
    assert_eq!(codes(&quiet.read_until_ready().await), Vec::<String>::new());

    cluster.stop_server("primary");
    wait_primary(&proxy, false);

    // Reads go on, on the same session and on the replicas.
    for _ in 0..5 {
        assert_eq!(
            count_rows(&session).await.expect("read without a primary"),
            1
        );
    }
    // A write gets an ERROR, not a FATAL, and the session goes on.
    for sql in [
        "INSERT INTO outage_notes (body) VALUES ('during')",
        "BEGIN; INSERT INTO outage_notes (body) VALUES ('during'); COMMIT",
    ] {
        let err = session
            .batch_execute(sql)
            .await
            .expect_err("a write without a primary");
        let db = err
            .as_db_error()
            .expect("a server error, not a lost connection");
        assert_eq!(db.code().code(), "57P03", "{db:?}");
        assert_eq!(db.severity(), "ERROR");
        assert!(!session.is_closed());
    }
    // A setting needs no primary: a replica checks it (a bad value gets
    // Postgres's own error, not 57P03), and the session keeps it.
    session
        .batch_execute("SET application_name = 'during the outage'; SET TIME ZONE 'UTC'")
        .await
        .expect("SET without a primary");
    let err = session
        .batch_execute("SET work_mem = 'plenty'")
        .await
        .expect_err("a bad setting");
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");
    let shown = session
        .query_one("SHOW application_name", &[])
        .await
        .expect("SHOW");
    assert_eq!(shown.get::<_, String>(0), "during the outage");
    session
        .batch_execute("PREPARE during_outage AS SELECT count(*) FROM outage_notes")
        .await
        .expect("PREPARE without a primary");
    let prepared = session
        .query_one("EXECUTE during_outage", &[])
        .await
        .expect("EXECUTE");
    assert_eq!(prepared.get::<_, i64>(0), 1);
    // A held-back BEGIN whose first statement writes: the same, and the
    // client is in an aborted block, as after any error in a block; its
    // ROLLBACK needs no primary.
    session
        .batch_execute("BEGIN")
        .await
        .expect("begin is answered by the proxy");
    let err = session
        .execute("INSERT INTO outage_notes (body) VALUES ($1)", &[&"during"])
        .await
        .expect_err("a write in a block without a primary");
    assert_eq!(err.code().map(|c| c.code()), Some("57P03"));
    let aborted = count_rows(&session)
        .await
        .expect_err("a read in the aborted block");
    assert_eq!(aborted.code().map(|c| c.code()), Some("25P02"));
    session
        .batch_execute("ROLLBACK")
        .await
        .expect("ROLLBACK ends the aborted block without a primary");
    assert_eq!(count_rows(&session).await.expect("read after"), 1);
    // A BEGIN with modes that needs the primary (here by a hint) is not
    // refused: on a server, BEGIN cannot fail. Its block's first statement
    // fails instead, as above.
    session
        .batch_execute("/* causeway: primary */ BEGIN READ ONLY")
        .await
        .expect("BEGIN READ ONLY without a primary");
    let err = count_rows(&session)
        .await
        .expect_err("the block's first statement needs the primary");
    assert_eq!(err.code().map(|c| c.code()), Some("57P03"), "{err:?}");
    session.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    assert_eq!(count_rows(&session).await.expect("read after"), 1);
    extended_begin_without_a_primary(proxy.port, &mut quiet).await;
    // A new client logs in and reads.
    let newcomer = client(proxy.port).await;
    assert_eq!(count_rows(&newcomer).await.expect("read by a newcomer"), 1);

    cluster.start_server("primary");
    wait_primary(&proxy, true);
    // Writes work again, on the same connections, and are read back.
    for c in [&session, &newcomer] {
        c.execute("INSERT INTO outage_notes (body) VALUES ('after')", &[])
            .await
            .expect("a write once the primary is back");
    }
    assert_eq!(count_rows(&session).await.expect("read"), 3);
    assert_eq!(count_rows(&newcomer).await.expect("read"), 3);
    let shown = session
        .query_one(
            "/* causeway: primary */ SELECT current_setting('application_name'), \
             pg_is_in_recovery()",
            &[],
        )
        .await
        .expect("the setting, read on the primary");
    assert_eq!(
        (shown.get::<_, String>(0), shown.get::<_, bool>(1)),
        ("during the outage".to_string(), false),
        "the setting made on a replica, carried to the primary"
    );
    let prepared = session
        .query_one("/* causeway: primary */ EXECUTE during_outage", &[])
        .await
        .expect("EXECUTE on the primary");
    assert_eq!(prepared.get::<_, i64>(0), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_restart_the_primary_resume_without_a_failed_transaction() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let proxy = TestProxy::start(&cluster);
    support::pgbench(proxy.port, &["-i", "-s", "1", "-q"]);
    cluster.wait_replicas_caught_up();
    let port = proxy.port;
    let load = std::thread::spawn(move || {
        support::pgbench(port, &["-c", "8", "-j", "2", "-T", "8", "-n"])
    });
    // Let it run, then: PAUSE, restart the primary, RESUME.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let console = support::connect(proxy.port, APP_USER, APP_PASSWORD, "causeway").await;
    console.simple_query("PAUSE").await.expect("PAUSE");
    assert!(proxy.proxy.pause.is_paused());
    assert_eq!(
        proxy.proxy.pause.busy_sessions(),
        0,
        "PAUSE answered with sessions busy"
    );
    cluster.stop_server("primary");
    cluster.start_server("primary");
    wait_primary(&proxy, true);
    console.simple_query("RESUME").await.expect("RESUME");
    let text = support::finish_load(load, &console).await;
    assert!(
        text.contains("number of failed transactions: 0 (0.000%)"),
        "transactions failed across the restart:\n{text}"
    );
    let processed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(processed > 0, "no transaction ran:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_seconds_without_a_primary_under_load_close_no_session() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let cluster = TestCluster::start(ClusterOptions::default());
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE outage_load (id bigserial PRIMARY KEY, session int NOT NULL)",
    );
    cluster.wait_replicas_caught_up();
    let proxy = TestProxy::start(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let mut sessions = Vec::new();
    for n in 0..8i32 {
        let port = proxy.port;
        let stop = stop.clone();
        sessions.push(tokio::spawn(async move {
            let c = client(port).await;
            let (mut writes, mut write_errors, mut reads, mut stale, mut refused) =
                (0u32, 0u32, 0u32, 0u32, 0u32);
            let mut last: Option<i64> = None;
            let mut turn = 0u32;
            while !stop.load(Ordering::Relaxed) {
                turn += 1;
                if turn.is_multiple_of(3) {
                    match c
                        .query_one(
                            "INSERT INTO outage_load (session) VALUES ($1) RETURNING id",
                            &[&n],
                        )
                        .await
                    {
                        Ok(row) => {
                            writes += 1;
                            last = Some(row.get(0));
                        }
                        Err(e) => {
                            let db = e.as_db_error().unwrap_or_else(|| {
                                panic!("session {n}: a write failed without a server error: {e}")
                            });
                            assert_eq!(db.severity(), "ERROR", "session {n}: {db:?}");
                            write_errors += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                } else if let Some(id) = last {
                    match c
                        .query_one("SELECT count(*) FROM outage_load WHERE id = $1", &[&id])
                        .await
                    {
                        Ok(row) => {
                            reads += 1;
                            if row.get::<_, i64>(0) != 1 {
                                stale += 1;
                            }
                        }
                        // Only when the session's last commit lost its LSN
                        // with the primary: no replica can be shown to
                        // have it, so the read waits for the primary.
                        Err(e) => {
                            let db = e.as_db_error().unwrap_or_else(|| {
                                panic!("session {n}: a read failed without a server error: {e}")
                            });
                            assert_eq!(db.severity(), "ERROR", "session {n}: {db:?}");
                            assert_eq!(db.code().code(), "57P03", "session {n}: {db:?}");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            assert!(!c.is_closed(), "session {n} was closed");
            (writes, write_errors, reads, stale, refused)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.stop_server("primary");
    wait_primary(&proxy, false);
    // The outage lasts ten seconds: the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.start_server("primary");
    wait_primary(&proxy, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut writes, mut errors, mut reads, mut stale, mut refused) = (0, 0, 0, 0, 0);
    for session in sessions {
        let (w, e, r, s, f) = session.await.expect("a session panicked");
        writes += w;
        errors += e;
        reads += r;
        stale += s;
        refused += f;
    }
    eprintln!(
        "outage: {writes} writes, {errors} write errors (all ERROR), {reads} reads, \
         {refused} reads refused (57P03), {stale} stale"
    );
    assert_eq!(stale, 0, "stale reads");
    assert!(errors > 0, "the outage refused no write: it did not happen");
    assert!(writes > 0 && reads > 0);
}

/// A transaction block open on the primary when it goes: the client gets
/// an ERROR and an aborted block, as if the block had failed, rolls back
/// and goes on with the same session; nothing of the block was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_a_lost_primary_is_aborted_not_closed() {
    let cluster = TestCluster::start(ClusterOptions::default());
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE outage_notes (id bigserial PRIMARY KEY, body text NOT NULL); \
         INSERT INTO outage_notes (body) VALUES ('before');",
    );
    cluster.wait_replicas_caught_up();
    let proxy = TestProxy::start(&cluster);
    let idle = client(proxy.port).await;
    let busy = client(proxy.port).await;
    let extended = client(proxy.port).await;
    for c in [&idle, &busy, &extended] {
        c.batch_execute("BEGIN; INSERT INTO outage_notes (body) VALUES ('in block')")
            .await
            .expect("a block with a write");
    }
    // `busy` is inside a statement when the primary stops.
    let running = {
        let port = proxy.port;
        tokio::spawn(async move {
            let c = client(port).await;
            c.batch_execute("BEGIN; INSERT INTO outage_notes (body) VALUES ('in block')")
                .await
                .expect("block");
            let result = c.batch_execute("SELECT pg_sleep(30)").await;
            (c, result)
        })
    };
    wait_for("the sleep to run", Duration::from_secs(30), || {
        let out = cluster.psql(
            cluster.primary_port(),
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
        );
        (out.trim() == "1").then_some(()).ok_or(out)
    });
    cluster.stop_server("primary");
    wait_primary(&proxy, false);

    let (sleeper, slept) = running.await.expect("task");
    let err = slept.expect_err("the statement running on the lost primary");
    let db = err.as_db_error().expect("an ERROR, not a closed session");
    assert_eq!(
        (db.severity(), db.code().code()),
        ("ERROR", "08006"),
        "{db:?}"
    );
    // Every client is now in an aborted block, whatever it sends.
    for c in [&sleeper, &idle, &busy] {
        let err = c
            .batch_execute("SELECT count(*) FROM outage_notes")
            .await
            .expect_err("a statement in the lost block");
        let db = err.as_db_error().expect("an ERROR");
        assert!(["08006", "25P02"].contains(&db.code().code()), "{db:?}");
        let again = c
            .batch_execute("SELECT 1")
            .await
            .expect_err("still aborted");
        assert_eq!(again.code().map(|c| c.code()), Some("25P02"));
        c.batch_execute("ROLLBACK").await.expect("ROLLBACK ends it");
        assert_eq!(count_rows(c).await.expect("read after the block"), 1);
        assert!(!c.is_closed());
    }
    // The extended protocol: a prepared statement in the lost block fails,
    // COMMIT ends it as ROLLBACK, the session reads on.
    let err = extended
        .query("SELECT count(*) FROM outage_notes WHERE body = $1", &[&"x"])
        .await
        .expect_err("a prepared read in the lost block");
    assert!(
        err.as_db_error().is_some(),
        "{}",
        support::describe_error(&err)
    );
    let commit = extended.simple_query("COMMIT").await.expect("COMMIT");
    assert!(
        commit
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(_))),
        "{commit:?}"
    );
    assert_eq!(count_rows(&extended).await.expect("read"), 1);

    cluster.start_server("primary");
    wait_primary(&proxy, true);
    for c in [&sleeper, &idle, &busy, &extended] {
        c.execute("INSERT INTO outage_notes (body) VALUES ('after')", &[])
            .await
            .expect("a write once the primary is back");
    }
    assert_eq!(
        count_rows(&idle).await.expect("read"),
        5,
        "no block was committed"
    );
}

/// Runs `sql` on `client` in a task of its own: the one row it finds and
/// the port of the server that ran it, or the error described.
fn spawn_read(
    client: &std::sync::Arc<Client>,
    sql: &'static str,
) -> tokio::task::JoinHandle<Result<(i64, i32), String>> {
    let client = client.clone();
    tokio::spawn(async move {
        let row = client
            .query_one(sql, &[])
            .await
            .map_err(|e| support::describe_error(&e))?;
        Ok((row.get(0), row.get(1)))
    })
}

/// A read no replica can serve (replay paused: none has the session's
/// write) runs on the primary. When the primary goes away under it, or is
/// gone when it comes, the read waits for the primary to answer again, as
/// PgBouncer queues a client while its server is down, and runs there; it
/// does not fail with 08006 or 57P03 (a failover and a restart look so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_falls_back_to_a_lost_primary_waits_for_it() {
    let cluster = TestCluster::start(ClusterOptions::default());
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE fallback_notes (id bigserial PRIMARY KEY, body text NOT NULL)",
    );
    cluster.wait_replicas_caught_up();
    let proxy = TestProxy::start_with(&cluster, |c| c.pool.query_wait_timeout_ms = 60_000);
    let session = std::sync::Arc::new(client(proxy.port).await);
    // Paused replicas do not stream again from a restarted primary until
    // they resume: the primary is started alone.
    let _paused = cluster.pause_all_replay();
    session
        .batch_execute("INSERT INTO fallback_notes (body) VALUES ('first')")
        .await
        .expect("write");
    let primary = i32::from(cluster.primary_port());

    // In flight on the primary when it stops.
    let sleeping = "SELECT count(*), inet_server_port() FROM fallback_notes, pg_sleep(2) \
                    WHERE body = 'first'";
    let running = spawn_read(&session, sleeping);
    wait_for(
        "the read to run on the primary",
        Duration::from_secs(30),
        || {
            let out = cluster.psql(
                cluster.primary_port(),
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{}'",
                    sleeping.replace('\'', "''")
                ),
            );
            (out.trim() == "1").then_some(()).ok_or(out)
        },
    );
    cluster.stop_server("primary");
    cluster.start_server_alone("primary");
    assert_eq!(
        running.await.expect("task"),
        Ok((1, primary)),
        "the read lost with the primary, run again when it is back"
    );

    // Sent while the primary is down: it waits.
    cluster.stop_server("primary");
    wait_primary(&proxy, false);
    let waiting = spawn_read(
        &session,
        "SELECT count(*), inet_server_port() FROM fallback_notes WHERE body = 'first'",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "the read was answered while no server had the session's write: {:?}",
        waiting.await
    );
    cluster.start_server_alone("primary");
    assert_eq!(
        waiting.await.expect("task"),
        Ok((1, primary)),
        "the read sent while the primary was down, run once it is back"
    );
}
