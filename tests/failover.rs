//! Roles are found, not configured: the primary is whichever server says it
//! is not in recovery. When the primary is gone and a replica is promoted,
//! writes follow it with no restart and no reload; while two servers claim
//! the role, writes are refused rather than sent to both. On clusters of
//! their own, since they promote replicas.

mod support;

use std::time::{Duration, Instant};

use causeway::replicas::WriteTarget;
use support::{wait_for, ClusterOptions, TestCluster, TestProxy, APP_DB};
use tokio_postgres::Client;

/// Waits until the proxy's monitor sends writes to `target`.
fn wait_write_target(proxy: &TestProxy, what: &str, target: WriteTarget) {
    wait_for(what, Duration::from_secs(30), || {
        match proxy.proxy.monitor.positions().write_target() {
            seen if seen == target => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

fn setup(cluster: &TestCluster) {
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE failover_notes (id bigserial PRIMARY KEY, body text NOT NULL)",
    );
    cluster.wait_replicas_caught_up();
}

/// Inserts a note; the port of the server that took it.
async fn write(client: &Client, body: &str) -> Result<i32, tokio_postgres::Error> {
    client
        .query_one(
            "INSERT INTO failover_notes (body) VALUES ($1) RETURNING inet_server_port()",
            &[&body],
        )
        .await
        .map(|row| row.get(0))
}

async fn count(client: &Client, body: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM failover_notes WHERE body = $1",
            &[&body],
        )
        .await
        .unwrap_or_else(|e| panic!("read of {body:?}: {}", support::describe_error(&e)))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica() {
    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    let session = support::connect_app(proxy.port, APP_DB, None).await;
    assert_eq!(
        write(&session, "before").await.expect("write"),
        i32::from(cluster.primary_port())
    );

    // The primary dies; replica0 is promoted.
    cluster.stop_server("primary");
    cluster.promote("replica0");
    let promoted = Instant::now();
    let new_primary = i32::from(cluster.replica_port(0));
    let mut attempts = 0;
    let port = loop {
        attempts += 1;
        match write(&session, "after").await {
            Ok(port) => break port,
            Err(e) => {
                assert_eq!(
                    e.code().map(|c| c.code()),
                    Some("57P03"),
                    "{}",
                    support::describe_error(&e)
                );
                assert!(
                    promoted.elapsed() < Duration::from_secs(30),
                    "writes never reached the promoted replica"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!(
        "failover: first write on the promoted replica {:?} after the promotion ({attempts} attempts)",
        promoted.elapsed()
    );
    assert_eq!(port, new_primary, "the write went to the promoted replica");
    // The session reads its write (the other replica follows the old
    // timeline and never replays it: the read goes where it is).
    assert_eq!(count(&session, "after").await, 1);
    assert_eq!(count(&session, "before").await, 1);
    // A new client writes there too.
    let newcomer = support::connect_app(proxy.port, APP_DB, None).await;
    assert_eq!(
        write(&newcomer, "newcomer").await.expect("write"),
        new_primary
    );
    assert_eq!(count(&newcomer, "newcomer").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_get_no_writes_until_one_is_gone() {
    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    let session = support::connect_app(proxy.port, APP_DB, None).await;
    write(&session, "before").await.expect("write");
    // A block open on the old primary when the split happens.
    let in_block = support::connect_app(proxy.port, APP_DB, None).await;
    in_block
        .batch_execute("BEGIN; INSERT INTO failover_notes (body) VALUES ('in block')")
        .await
        .expect("block");

    // Split brain: replica0 promoted while the primary is still up.
    cluster.promote("replica0");
    wait_write_target(
        &proxy,
        "the monitor to see replica0 promoted",
        WriteTarget::SplitBrain,
    );
    let err = write(&session, "split")
        .await
        .expect_err("no write while two servers claim the primary");
    assert_eq!(err.code().map(|c| c.code()), Some("57P03"));
    assert!(
        support::describe_error(&err).contains("two servers claim to be the primary"),
        "{}",
        support::describe_error(&err)
    );
    // Nothing was written anywhere (read on a connection of its own).
    let reader = support::connect_app(proxy.port, APP_DB, None).await;
    assert_eq!(count(&reader, "split").await, 0);
    // The block's next statement: an ERROR and the block rolled back, not a
    // closed session; ROLLBACK ends it and the session reads on.
    let err = in_block
        .batch_execute("INSERT INTO failover_notes (body) VALUES ('in block, later')")
        .await
        .expect_err("no write in a split brain");
    let db = err.as_db_error().expect("an ERROR, not a closed session");
    assert_eq!(
        (db.severity(), db.code().code()),
        ("ERROR", "57P03"),
        "{db:?}"
    );
    let again = in_block
        .batch_execute("SELECT 1")
        .await
        .expect_err("aborted");
    assert_eq!(again.code().map(|c| c.code()), Some("25P02"));
    in_block.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&in_block, "in block").await, 0);

    // The old primary goes: replica0 takes the writes.
    cluster.stop_server("primary");
    wait_write_target(&proxy, "writes to go to replica0", WriteTarget::Promoted(0));
    assert_eq!(
        write(&session, "after").await.expect("write"),
        i32::from(cluster.replica_port(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_under_pgbench_fails_no_transaction() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let proxy = TestProxy::start(&cluster);
    support::pgbench(proxy.port, &["-i", "-s", "1", "-q"]);
    cluster.wait_replicas_caught_up();
    let port = proxy.port;
    let load = std::thread::spawn(move || {
        support::pgbench(port, &["-c", "8", "-j", "2", "-T", "8", "-n"])
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // PAUSE, let replica0 catch up, promote it, stop the old primary,
    // RESUME.
    let console = support::connect(
        proxy.port,
        support::APP_USER,
        support::APP_PASSWORD,
        "causeway",
    )
    .await;
    console.simple_query("PAUSE").await.expect("PAUSE");
    // A planned switchover promotes a replica that has every commit.
    cluster.wait_replica_caught_up(0);
    cluster.promote("replica0");
    cluster.stop_server("primary");
    wait_write_target(&proxy, "writes to go to replica0", WriteTarget::Promoted(0));
    console.simple_query("RESUME").await.expect("RESUME");
    let out = support::finish_load(load, &console).await;
    assert!(
        out.contains("number of failed transactions: 0 (0.000%)"),
        "transactions failed across the switchover:\n{out}"
    );
    // And the writes after it are on the new primary.
    let direct = support::connect(
        cluster.replica_port(0),
        support::APP_USER,
        support::APP_PASSWORD,
        APP_DB,
    )
    .await;
    let history: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("history")
        .get(0);
    let processed: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(processed > 0);
    assert_eq!(
        history, processed,
        "every committed transaction is on the new primary"
    );
}

/// Waits until the monitor follows `timeline` and replica `i` serves reads
/// on it (`serves`) or not.
fn wait_replica_serves(proxy: &TestProxy, i: usize, timeline: u32, serves: bool) {
    wait_for(
        &format!("timeline {timeline} with replica{i} serving: {serves}"),
        Duration::from_secs(30),
        || {
            let p = proxy.proxy.monitor.positions();
            let r = &p.replicas[i];
            match (p.history.timeline, p.serves(r)) {
                (Some(t), s) if t == timeline && s == serves => Ok(()),
                seen => Err(format!("{seen:?}, replica: {r:?}")),
            }
        },
    );
}

/// Where a read ran, and what it saw of `body`.
async fn read_where(client: &Client, body: &str) -> (bool, i64) {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), count(*) FROM failover_notes WHERE body = $1",
            &[&body],
        )
        .await
        .unwrap_or_else(|e| panic!("read of {body:?}: {}", support::describe_error(&e)));
    (row.get(0), row.get(1))
}

/// A replica left on the old timeline has replayed further than the new
/// primary's first writes, but it never will have them: it gets no reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_left_on_the_old_timeline_gets_no_reads() {
    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    // replica0 stops early; replica1 replays a megabyte of WAL more.
    cluster.stop_server("replica0");
    let session = support::connect_app(proxy.port, APP_DB, None).await;
    session
        .batch_execute(
            "INSERT INTO failover_notes (body) SELECT repeat('x', 200) FROM generate_series(1, 5000)",
        )
        .await
        .expect("bulk write");
    cluster.wait_replica_caught_up(1);
    let old_end = cluster.replayed_lsn(1);
    // The primary dies; replica0, which never saw the bulk write, is
    // promoted: a new timeline forks before it.
    cluster.stop_server("primary");
    cluster.start_server_alone("replica0");
    cluster.promote("replica0");
    wait_write_target(&proxy, "writes to go to replica0", WriteTarget::Promoted(0));
    wait_replica_serves(&proxy, 1, 2, false);

    // A write on the new timeline lands below what replica1 replayed of
    // the old one; its read must not go there.
    assert_eq!(
        write(&session, "fresh").await.expect("write"),
        i32::from(cluster.replica_port(0))
    );
    let new_lsn = proxy.proxy.causal.newest().expect("a commit").lsn;
    assert!(
        new_lsn.0 < old_end.0,
        "the new write ({new_lsn}) is below replica1's old-timeline position ({old_end})"
    );
    assert_eq!(
        read_where(&session, "fresh").await,
        (false, 1),
        "read on the new primary, which has it"
    );
    let reader = support::connect_app(proxy.port, APP_DB, None).await;
    assert_eq!(read_where(&reader, "fresh").await, (false, 1));
    let replica1 = &proxy.proxy.monitor.positions().replicas[1];
    assert_eq!(replica1.timeline, Some(1), "{replica1:?}");
}

/// A write acknowledged on the old primary that the promoted replica never
/// received is lost (asynchronous replication); the session's causal LSN,
/// past the fork, must not hold its reads back on the new timeline, and
/// writes that survived stay visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lost_in_the_promotion_holds_no_read_back() {
    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    let session = support::connect_app(proxy.port, APP_DB, None).await;
    // replica0 stops first, replica1 after "kept": only the primary has
    // "lost".
    cluster.stop_server("replica0");
    write(&session, "kept").await.expect("write");
    cluster.wait_replica_caught_up(1);
    cluster.stop_server("replica1");
    session
        .batch_execute(
            "INSERT INTO failover_notes (body) SELECT 'lost' FROM generate_series(1, 5000)",
        )
        .await
        .expect("write that will be lost");
    let lost_at = proxy.proxy.causal.newest().expect("a commit");
    cluster.stop_server("primary");

    // replica1 is promoted; replica0 follows it onto the new timeline.
    cluster.start_server_alone("replica1");
    cluster.promote("replica1");
    cluster.repoint_replica("replica0", "replica1");
    cluster.start_server_alone("replica0");
    wait_write_target(&proxy, "writes to go to replica1", WriteTarget::Promoted(1));
    wait_replica_serves(&proxy, 0, 2, true);
    let carried = proxy.proxy.monitor.positions().carry(lost_at);
    assert!(
        carried < lost_at.lsn,
        "the lost write's LSN {} is carried to the fork {carried}",
        lost_at.lsn
    );

    // The session's reads go to replica0 on the new timeline: "kept" is
    // there, "lost" is nowhere.
    assert_eq!(read_where(&session, "kept").await, (true, 1));
    assert_eq!(read_where(&session, "lost").await, (true, 0));
    // And its next write is read back, wherever the read goes.
    assert_eq!(
        write(&session, "after").await.expect("write"),
        i32::from(cluster.replica_port(1))
    );
    assert_eq!(read_where(&session, "after").await.1, 1);
    let direct = support::connect(
        cluster.replica_port(1),
        support::APP_USER,
        support::APP_PASSWORD,
        APP_DB,
    )
    .await;
    let lost: i64 = direct
        .query_one(
            "SELECT count(*) FROM failover_notes WHERE body = 'lost'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(lost, 0, "the write past the fork is not on the new primary");
}

/// A promotion under load: eight sessions write and read their own
/// writes; the primary dies and replica0 is promoted. Writes reach the new
/// primary again on the same sessions, no session is closed, and no read
/// is stale (replica1, left on the old timeline, serves none of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_under_load_loses_no_session_and_reads_nothing_stale() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    // Microseconds since `epoch` of the first write that succeeded after
    // the promotion, or u64::MAX.
    let epoch = Instant::now();
    let first_after = Arc::new(AtomicU64::new(u64::MAX));
    let promoted_at = Arc::new(AtomicU64::new(u64::MAX));
    let mut sessions = Vec::new();
    for n in 0..8 {
        let (port, stop) = (proxy.port, stop.clone());
        let (first_after, promoted_at) = (first_after.clone(), promoted_at.clone());
        sessions.push(tokio::spawn(async move {
            let c = support::connect_app(port, APP_DB, None).await;
            let (mut writes, mut errors, mut reads, mut stale) = (0u32, 0u32, 0u32, 0u32);
            let mut turn = 0u64;
            while !stop.load(Ordering::Relaxed) {
                turn += 1;
                let body = format!("s{n}-{turn}");
                match write(&c, &body).await {
                    Ok(_) => {
                        writes += 1;
                        let now = epoch.elapsed().as_micros() as u64;
                        if now > promoted_at.load(Ordering::Acquire) {
                            first_after.fetch_min(now, Ordering::AcqRel);
                        }
                        reads += 1;
                        if count(&c, &body).await != 1 {
                            stale += 1;
                        }
                    }
                    Err(e) => {
                        let db = e.as_db_error().unwrap_or_else(|| {
                            panic!("session {n}: {}", support::describe_error(&e))
                        });
                        assert_eq!(db.severity(), "ERROR", "session {n}: {db:?}");
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            assert!(!c.is_closed(), "session {n} was closed");
            (writes, errors, reads, stale)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.stop_server("primary");
    cluster.promote("replica0");
    promoted_at.store(epoch.elapsed().as_micros() as u64, Ordering::Release);
    wait_for(
        "a write on the new primary",
        Duration::from_secs(30),
        || match first_after.load(Ordering::Acquire) {
            u64::MAX => Err("none yet".to_string()),
            _ => Ok(()),
        },
    );
    // Load goes on against the new primary for a while: the scenario.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut writes, mut errors, mut reads, mut stale) = (0, 0, 0, 0);
    for s in sessions {
        let (w, e, r, st) = s.await.expect("a session panicked");
        writes += w;
        errors += e;
        reads += r;
        stale += st;
    }
    let gap = Duration::from_micros(
        first_after.load(Ordering::Acquire) - promoted_at.load(Ordering::Acquire),
    );
    eprintln!(
        "promotion under load: {writes} writes, {errors} write errors (all ERROR), {reads} reads, \
         {stale} stale; first write on the new primary {gap:?} after pg_ctl promote returned"
    );
    assert_eq!(stale, 0, "stale reads");
    assert!(writes > 0 && reads > 0);
    let p = proxy.proxy.monitor.positions();
    assert_eq!(p.write_target(), WriteTarget::Promoted(0));
    assert!(!p.serves(&p.replicas[1]), "replica1 is on the old timeline");
}

/// The configured primary came back as a standby of the promoted replica
/// (as a cluster manager rebuilds an old primary), and then the promoted
/// replica went down: no server is the primary. Writes get 57P03, not the
/// standby's 25006, and no read falls back to the configured standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_primary_in_recovery_takes_no_writes() {
    let cluster = TestCluster::start(ClusterOptions::default());
    setup(&cluster);
    let proxy = TestProxy::start(&cluster);
    let session = support::connect_app(proxy.port, APP_DB, None).await;
    write(&session, "before").await.expect("write");
    cluster.stop_server("primary");
    cluster.promote("replica0");
    wait_write_target(&proxy, "writes to go to replica0", WriteTarget::Promoted(0));
    write(&session, "on replica0")
        .await
        .expect("write on the new primary");
    // The old primary returns as a standby of replica0; then replica0 goes.
    cluster.reclone_as_standby("primary", "replica0");
    wait_for(
        "the old primary to be in recovery",
        Duration::from_secs(30),
        || {
            let p = proxy.proxy.monitor.positions();
            p.primary_in_recovery.then_some(()).ok_or(format!("{p:?}"))
        },
    );
    cluster.stop_server("replica0");
    wait_write_target(&proxy, "no write target", WriteTarget::Nowhere);
    let err = write(&session, "nowhere").await.expect_err("no primary");
    let db = err.as_db_error().expect("an ERROR");
    assert_eq!(
        (db.severity(), db.code().code()),
        ("ERROR", "57P03"),
        "{db:?}"
    );
    assert!(db.message().contains("no server is the primary"), "{db:?}");
    assert!(!session.is_closed());
}
