//! Change-data capture through causeway, on a slot of each test's own:
//! inserts, updates (the key too) and deletes arrive typed, with the values
//! written; a failing handler loses no later change; a crash in the middle
//! of a batch delivers the batch again (at least once); `ride_stats`
//! follows ride inserts exactly, even when changes come twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use demo_app::cdc::datum::Datum;
use demo_app::cdc::handler::{Handler, HandlerFuture};
use demo_app::cdc::ride_stats::RideStats;
use demo_app::cdc::{slot, Cdc, CdcConfig, Change, Dispatcher, Kind};
use demo_app::db::Causality;
use demo_app::error::Error;
use tokio_postgres::Client;

use crate::harness::{
    db, db_at, fresh_database, new_key, primary, primary_of, ride_params, run, App, USER,
};

/// Keeps the changes of one table.
struct Recorder {
    table: String,
    changes: Mutex<Vec<Change>>,
}

impl Recorder {
    fn of(table: &str) -> Arc<Recorder> {
        Arc::new(Recorder {
            table: table.to_string(),
            changes: Mutex::new(Vec::new()),
        })
    }

    fn changes(&self) -> Vec<Change> {
        self.changes.lock().unwrap().clone()
    }

    fn names(&self) -> Vec<String> {
        self.changes()
            .iter()
            .filter_map(|c| c.get("name").and_then(Datum::as_str).map(str::to_string))
            .collect()
    }
}

impl Handler for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn handle<'a>(&'a self, change: &'a Change) -> HandlerFuture<'a> {
        if change.table == self.table {
            self.changes.lock().unwrap().push(change.clone());
        }
        Box::pin(async { Ok(()) })
    }
}

/// Fails on a row named `boom`; never finishes on one named `stall`.
struct Troublemaker;

impl Handler for Troublemaker {
    fn name(&self) -> &str {
        "troublemaker"
    }

    fn handle<'a>(&'a self, change: &'a Change) -> HandlerFuture<'a> {
        let name = change.get("name").and_then(Datum::as_str).unwrap_or("");
        match name {
            "boom" => Box::pin(async { Err(Error::Other("boom".into())) }),
            "stall" => Box::pin(std::future::pending()),
            _ => Box::pin(async { Ok(()) }),
        }
    }
}

fn config(slot: &str) -> CdcConfig {
    CdcConfig {
        slot: slot.to_string(),
        batch: 10_000,
        idle: Duration::from_millis(20),
    }
}

/// A table and a slot name of the test's own.
async fn probe() -> (String, String) {
    let suffix = &new_key()[..10];
    let table = format!("cdc_probe_{suffix}");
    primary()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, name text, tags text[],
                                   price numeric(10, 2), note text, flag boolean)"
        ))
        .await
        .expect("create the probe table");
    (table, format!("test_{suffix}"))
}

/// Passes until `done`; the handler failures seen.
async fn passes_until(cdc: &Cdc, done: impl Fn() -> bool) -> usize {
    let mut failures = 0;
    for _ in 0..200 {
        failures += cdc.run_once().await.expect("cdc pass").handler_failures;
        if done() {
            return failures;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("cdc never delivered what the test waited for");
}

async fn drop_slot(db: &Client, slot: &str) {
    db.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .expect("drop the slot");
}

#[test]
fn inserts_updates_and_deletes_arrive_typed_with_their_values() {
    run(async {
        let (table, slot_name) = probe().await;
        let recorder = Recorder::of(&table);
        let dispatcher = Dispatcher::new().on_table("public", &table, recorder.clone());
        let cdc = Cdc::new(db().shared().clone(), config(&slot_name), dispatcher);
        cdc.run_once()
            .await
            .expect("the first pass creates the slot");

        // Written through causeway, as the app writes.
        let conn = db().shared().get().await.expect("connection");
        let tags = vec![Some("a"), Some("b c"), None];
        conn.execute(
            &format!("INSERT INTO {table} VALUES (1, $1, $2, 12.50, NULL, true)"),
            &[&"it's", &tags],
        )
        .await
        .expect("insert");
        conn.batch_execute(&format!(
            "UPDATE {table} SET name = 'renamed' WHERE id = 1;
             UPDATE {table} SET id = 2 WHERE id = 1"
        ))
        .await
        .expect("updates in one transaction");
        conn.batch_execute(&format!("DELETE FROM {table} WHERE id = 2"))
            .await
            .expect("delete");
        passes_until(&cdc, || recorder.changes().len() >= 4).await;

        let changes = recorder.changes();
        let kinds: Vec<Kind> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Insert, Kind::Update, Kind::Update, Kind::Delete]
        );
        let insert = &changes[0];
        assert_eq!(
            (insert.schema.as_str(), insert.table.as_str()),
            ("public", table.as_str())
        );
        assert_eq!(
            insert.columns,
            ["id", "name", "tags", "price", "note", "flag"]
        );
        assert_eq!(
            insert.types,
            ["integer", "text", "text[]", "numeric", "text", "boolean"]
        );
        assert_eq!(
            insert.values,
            [
                Datum::Int(1),
                Datum::Text("it's".into()),
                Datum::Array(vec![
                    Datum::Text("a".into()),
                    Datum::Text("b c".into()),
                    Datum::Null
                ]),
                Datum::Numeric("12.50".into()),
                Datum::Null,
                Datum::Bool(true),
            ]
        );
        let id = |i| vec![("id".to_string(), Datum::Int(i))];
        assert_eq!(insert.keys, id(1));
        assert_eq!(changes[1].get("name"), Some(&Datum::Text("renamed".into())));
        assert_eq!(changes[1].keys, id(1));
        assert_eq!(changes[2].get("id"), Some(&Datum::Int(2)));
        assert_eq!(changes[2].keys, id(1), "the key before the update");
        assert_eq!(changes[3].keys, id(2));
        assert_eq!(
            changes[1].commit_lsn, changes[2].commit_lsn,
            "one transaction"
        );
        let order: Vec<_> = changes.iter().map(|c| (c.commit_lsn, c.lsn)).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "(commit, lsn) increases: {order:?}"
        );
        drop_slot(&primary().await, &slot_name).await;
    })
}

#[test]
fn a_failing_handler_loses_no_later_change() {
    run(async {
        let (table, slot_name) = probe().await;
        let recorder = Recorder::of(&table);
        let dispatcher = Dispatcher::new()
            .on_table("public", &table, Arc::new(Troublemaker))
            .on_every(recorder.clone());
        let cdc = Cdc::new(db().shared().clone(), config(&slot_name), dispatcher);
        cdc.run_once()
            .await
            .expect("the first pass creates the slot");
        let conn = db().shared().get().await.expect("connection");
        for (id, name) in [(1, "a"), (2, "boom"), (3, "c")] {
            conn.execute(
                &format!("INSERT INTO {table} (id, name) VALUES ($1, $2)"),
                &[&id, &name],
            )
            .await
            .expect("insert");
        }
        let failures = passes_until(&cdc, || recorder.changes().len() >= 3).await;
        assert_eq!(failures, 1, "boom failed, once");
        assert_eq!(recorder.names(), ["a", "boom", "c"]);
        let left = slot::peek(&conn, &slot_name, 100_000).await.expect("peek");
        assert!(
            left.iter().all(|row| !row.data.contains(&table)),
            "the batch was consumed after its handlers ran"
        );
        drop_slot(&primary().await, &slot_name).await;
    })
}

#[test]
fn a_crash_in_the_middle_of_a_batch_delivers_it_again() {
    run(async {
        let (table, slot_name) = probe().await;
        let first_recorder = Recorder::of(&table);
        let crashing = Cdc::new(
            db().shared().clone(),
            config(&slot_name),
            Dispatcher::new().on_every(first_recorder.clone()).on_table(
                "public",
                &table,
                Arc::new(Troublemaker),
            ),
        );
        crashing
            .run_once()
            .await
            .expect("the first pass creates the slot");
        db().shared()
            .get()
            .await
            .expect("connection")
            .batch_execute(&format!(
                "INSERT INTO {table} (id, name) VALUES (1, 'x'), (2, 'stall'), (3, 'y')"
            ))
            .await
            .expect("insert");
        // The pass hangs in a handler; giving up on it is the crash.
        let pass = tokio::time::timeout(Duration::from_secs(3), crashing.run_once()).await;
        assert!(pass.is_err(), "the stalled pass never finished");
        assert_eq!(
            first_recorder.names(),
            ["x"],
            "x was handled; the crash came in the table handler of the next"
        );
        drop(crashing);

        let recorder = Recorder::of(&table);
        let restarted = Cdc::new(
            db().shared().clone(),
            config(&slot_name),
            Dispatcher::new().on_every(recorder.clone()),
        );
        passes_until(&restarted, || recorder.changes().len() >= 3).await;
        assert_eq!(
            recorder.names(),
            ["x", "stall", "y"],
            "nothing lost, x seen twice in all"
        );
        drop_slot(&primary().await, &slot_name).await;
    })
}

#[test]
fn ride_stats_follow_ride_inserts_exactly_once() {
    run(async {
        let url = fresh_database("cdc_stats").await;
        let slot_name = format!("test_stats_{}", &new_key()[..10]);
        let pool = db_at(&url).shared().clone();
        let recorder = Recorder::of("rides");
        let stats = Arc::new(RideStats::new(pool.clone()));
        let dispatcher = Dispatcher::new()
            .on_table("public", "rides", stats.clone())
            .on_every(recorder.clone());
        let cdc = Cdc::new(pool.clone(), config(&slot_name), dispatcher);
        cdc.run_once()
            .await
            .expect("the first pass creates the slot");

        let app = App::start_with(&url, Causality::default(), 0.0);
        for (i, user) in [USER, "alice@example.com"]
            .iter()
            .cycle()
            .take(6)
            .enumerate()
        {
            let (status, body) = app.create_ride(user, &new_key(), &ride_params()).await;
            assert_eq!(status, 201, "ride {i}: {body}");
        }
        let inserts = || {
            recorder
                .changes()
                .iter()
                .filter(|c| c.kind == Kind::Insert)
                .count()
        };
        passes_until(&cdc, || inserts() >= 6).await;

        let db = primary_of(&url).await;
        let expected = "SELECT user_id, count(*), sum(distance)::text FROM rides
                         GROUP BY user_id ORDER BY user_id";
        let kept = "SELECT user_id, rides, total_distance::text FROM ride_stats ORDER BY user_id";
        let rows = |sql: &'static str| {
            let db = &db;
            async move {
                db.query(sql, &[])
                    .await
                    .expect(sql)
                    .iter()
                    .map(|r| {
                        (
                            r.get::<_, i64>(0),
                            r.get::<_, i64>(1),
                            r.get::<_, String>(2),
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        let truth = rows(expected).await;
        assert_eq!(truth.len(), 2);
        assert_eq!(rows(kept).await, truth);

        // Delivered again (as after a crash before the slot was consumed):
        // every change is older than what its row has applied, so nothing moves.
        for change in recorder.changes() {
            stats.handle(&change).await.expect("handled again");
        }
        assert_eq!(rows(kept).await, truth, "a change seen twice counts once");
        drop_slot(&db, &slot_name).await;
    })
}
