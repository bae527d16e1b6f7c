//! The unified log end to end, each test in a database of its own (so
//! `sum(distance) FROM rides` is its rides alone) and a stream of its own:
//! a rolled-back ride stages nothing; the streamer moves records to Redis in
//! ride order and deletes them; a double send leaves duplicates consumers
//! skip; with crashes and double sends injected, two consumers converge on
//! exactly the sum; a restarted consumer resumes from its checkpoint.

use std::time::Duration;

use demo_app::db::Causality;
use demo_app::error::Error;
use demo_app::log::consumer::Consumer;
use demo_app::log::stream::{LogStream, DEFAULT_MAXLEN};
use demo_app::log::streamer::{self, StreamerConfig};
use futures_util::future::join_all;
use tokio_postgres::Client;

use crate::harness::{
    db_at, fresh_database, new_key, primary_of, redis_url, ride_params, run, App, Paused, SERIAL,
    USER,
};

/// A stream of the test's own.
fn stream(prefix: &str) -> LogStream {
    LogStream::new(
        &redis_url(),
        &format!("{prefix}-{}", new_key()),
        DEFAULT_MAXLEN,
    )
}

fn streamer_config(failure_rate: f64) -> StreamerConfig {
    StreamerConfig {
        batch: 1000,
        failure_rate,
    }
}

fn consumer(name: &str, database_url: &str, stream: &LogStream, crash_rate: f64) -> Consumer {
    Consumer {
        name: name.to_string(),
        pool: db_at(database_url).shared().clone(),
        stream: LogStream::new(&redis_url(), &stream.name, DEFAULT_MAXLEN),
        batch: 5,
        crash_rate,
    }
}

/// Creates `n` rides as the seed user, `concurrency` at a time; their ids.
async fn create_rides(app: &App, n: usize, concurrency: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency.max(1)) {
        let creates = chunk.iter().map(|_| async {
            let (status, body) = app.create_ride(USER, &new_key(), &ride_params()).await;
            assert_eq!(status, 201, "{body}");
            body["ride"]["id"].as_i64().expect("ride id")
        });
        ids.extend(join_all(creates).await);
    }
    ids
}

async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

/// `sum(distance)` as text, and the highest ride id.
async fn truth(db: &Client) -> (String, i64) {
    let row = db
        .query_one(
            "SELECT coalesce(sum(distance), 0)::numeric(20, 3)::text, coalesce(max(id), 0) FROM rides",
            &[],
        )
        .await
        .expect("sum of distances");
    (row.get(0), row.get(1))
}

/// The ride ids the stream holds, in stream order.
async fn streamed_ride_ids(stream: &LogStream) -> Vec<i64> {
    stream
        .all()
        .await
        .expect("read the stream")
        .iter()
        .map(|e| {
            let record = e.record.as_ref().expect("a log record");
            assert_eq!(
                (record.action.as_str(), record.object.as_str()),
                ("create", "ride")
            );
            record.data["id"].as_i64().expect("ride id")
        })
        .collect()
}

/// Runs `consumer` until a pass finds nothing new; how many passes crashed.
async fn consume_to_the_end(consumer: &Consumer) -> usize {
    let mut crashes = 0;
    for _ in 0..1000 {
        match consumer.run_once().await {
            Ok(pass) if pass.entries() == 0 => return crashes,
            Ok(_) => {}
            Err(Error::Injected(_)) => crashes += 1,
            Err(e) => panic!("consumer {}: {e}", consumer.name),
        }
    }
    panic!(
        "consumer {} never reached the end of the stream",
        consumer.name
    );
}

/// `rounds` times: consume to the end, pause; how many passes crashed.
async fn keep_consuming(consumer: &Consumer, rounds: usize) -> usize {
    let mut crashes = 0;
    for _ in 0..rounds {
        crashes += consume_to_the_end(consumer).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crashes
}

#[test]
fn a_rolled_back_ride_stages_nothing() {
    run(async {
        let url = fresh_database("log_rollback").await;
        let db = primary_of(&url).await;
        // Every audit insert fails: the ride phase rolls back after the
        // ride and its log record were inserted.
        db.batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'audit refused by the test'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON audit_records
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("trigger");
        let app = App::start_with(&url, Causality::default(), 0.0);
        let (key, params) = (new_key(), ride_params());
        let (status, body) = app.post_ride(Some(USER), Some(&key), &params, None).await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(count(&db, "SELECT count(*) FROM rides").await, 0);
        assert_eq!(
            count(&db, "SELECT count(*) FROM staged_log_records").await,
            0
        );
        let log = stream("rollback");
        let pool = db_at(&url).shared().clone();
        let moved = streamer::run_once(&pool, &log, &streamer_config(0.0)).await;
        assert_eq!(moved.expect("streamer pass"), 0);
        assert!(log.all().await.expect("stream").is_empty());

        // Without the trigger the same key makes the ride, and stages it.
        db.batch_execute("DROP TRIGGER refuse ON audit_records")
            .await
            .expect("drop");
        let (status, body) = app.create_ride(USER, &key, &params).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            count(&db, "SELECT count(*) FROM staged_log_records").await,
            1
        );
    })
}

#[test]
fn the_streamer_moves_records_in_ride_order_and_deletes_them() {
    run(async {
        let url = fresh_database("log_streamer").await;
        let app = App::start_with(&url, Causality::default(), 0.0);
        let mut ids = create_rides(&app, 24, 8).await;
        ids.sort_unstable();
        let db = primary_of(&url).await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM staged_log_records").await,
            24
        );

        let log = stream("streamer");
        let pool = db_at(&url).shared().clone();
        let moved = streamer::run_once(&pool, &log, &streamer_config(0.0))
            .await
            .expect("streamer pass");
        assert_eq!(moved, 24);
        assert_eq!(
            count(&db, "SELECT count(*) FROM staged_log_records").await,
            0
        );
        assert_eq!(
            streamed_ride_ids(&log).await,
            ids,
            "each ride once, in increasing id order, though created 8 at a time"
        );
        let entries = log.all().await.expect("stream");
        let first = entries[0].record.as_ref().expect("record");
        let distance: String = db
            .query_one("SELECT distance::text FROM rides WHERE id = $1", &[&ids[0]])
            .await
            .expect("distance")
            .get(0);
        assert_eq!(first.data["distance"], serde_json::json!(distance));
        let again = streamer::run_once(&pool, &log, &streamer_config(0.0)).await;
        assert_eq!(again.expect("empty pass"), 0);
    })
}

#[test]
fn a_double_send_leaves_duplicates_that_consumers_skip() {
    run(async {
        let url = fresh_database("log_double").await;
        let app = App::start_with(&url, Causality::default(), 0.0);
        let ids = create_rides(&app, 3, 1).await;
        let log = stream("double");
        let pool = db_at(&url).shared().clone();
        let db = primary_of(&url).await;

        let failed = streamer::run_once(&pool, &log, &streamer_config(1.0)).await;
        assert!(matches!(failed, Err(Error::Injected(_))), "{failed:?}");
        assert_eq!(
            count(&db, "SELECT count(*) FROM staged_log_records").await,
            3
        );
        let moved = streamer::run_once(&pool, &log, &streamer_config(0.0)).await;
        assert_eq!(moved.expect("second pass"), 3);
        assert_eq!(streamed_ride_ids(&log).await, [&ids[..], &ids[..]].concat());

        let reader = consumer("dedupe", &url, &log, 0.0);
        let mut counted = 0;
        let mut duplicates = 0;
        loop {
            let pass = reader.run_once().await.expect("consumer pass");
            if pass.entries() == 0 {
                break;
            }
            counted += pass.counted;
            duplicates += pass.duplicates;
        }
        assert_eq!((counted, duplicates), (3, 3));
        let checkpoint = reader
            .checkpoint()
            .await
            .expect("checkpoint")
            .expect("saved");
        let (sum, max_id) = truth(&db).await;
        assert_eq!(checkpoint.total.to_string(), sum);
        assert_eq!(checkpoint.last_ride_id, max_id);
    })
}

#[test]
fn two_consumers_converge_exactly_despite_crashes_and_double_sends() {
    run(async {
        let url = fresh_database("log_converge").await;
        let app = App::start_with(&url, Causality::default(), 0.0);
        let log = stream("converge");
        let pool = db_at(&url).shared().clone();
        let (a, b) = (
            consumer("a", &url, &log, 0.3),
            consumer("b", &url, &log, 0.3),
        );

        // A crash before the commit changes nothing.
        create_rides(&app, 2, 1).await;
        streamer::run_once(&pool, &log, &streamer_config(0.0))
            .await
            .expect("streamer pass");
        let crashing = consumer("a", &url, &log, 1.0);
        assert!(matches!(crashing.run_once().await, Err(Error::Injected(_))));
        assert_eq!(
            crashing.checkpoint().await.expect("read"),
            None,
            "nothing committed"
        );

        // Rides, streaming and consuming all at once, failures injected.
        let rides = 40;
        let creating = create_rides(&app, rides, 4);
        let streaming = async {
            let config = StreamerConfig {
                batch: 7,
                failure_rate: 0.3,
            };
            let mut double_sends = 0;
            for _ in 0..200 {
                match streamer::run_once(&pool, &log, &config).await {
                    Err(Error::Injected(_)) => double_sends += 1,
                    Err(e) => panic!("streamer: {e}"),
                    Ok(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            double_sends
        };
        let (_, double_sends, crashes_a, crashes_b) = tokio::join!(
            creating,
            streaming,
            keep_consuming(&a, 60),
            keep_consuming(&b, 60)
        );
        // Whatever is still staged, and still unread, once everything stopped.
        loop {
            match streamer::run_once(&pool, &log, &streamer_config(0.0)).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => panic!("final streamer pass: {e}"),
            }
        }
        let crashes =
            crashes_a + crashes_b + consume_to_the_end(&a).await + consume_to_the_end(&b).await;

        let db = primary_of(&url).await;
        let (sum, max_id) = truth(&db).await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM rides").await,
            rides as i64 + 2
        );
        for c in [&a, &b] {
            let checkpoint = c.checkpoint().await.expect("read").expect("committed");
            assert_eq!(
                (checkpoint.total.to_string(), checkpoint.last_ride_id),
                (sum.clone(), max_id),
                "consumer {} must equal SELECT sum(distance) FROM rides \
                 ({double_sends} double sends, {crashes} crashes injected)",
                c.name
            );
        }
        eprintln!("converged on {sum} km: {double_sends} double sends, {crashes} crashes injected");
    })
}

#[test]
fn a_restarted_consumer_resumes_from_its_checkpoint() {
    run(async {
        let url = fresh_database("log_resume").await;
        let app = App::start_with(&url, Causality::default(), 0.0);
        create_rides(&app, 12, 2).await;
        let log = stream("resume");
        let pool = db_at(&url).shared().clone();
        streamer::run_once(&pool, &log, &streamer_config(0.0))
            .await
            .expect("streamer pass");

        let first = consumer("resumer", &url, &log, 0.0);
        first.run_once().await.expect("pass 1");
        // The second pass commits while the replicas replay nothing, so
        // only the primary has its checkpoint.
        let _serial = SERIAL.lock().await;
        let paused = Paused::both();
        let second_pass = first.run_once().await.expect("pass 2");
        assert_eq!(second_pass.counted, 5);
        let saved = second_pass.checkpoint;
        drop(first);

        // A new process, with new connections: it knows only what was
        // committed, and its consumer's name makes causeway send the read
        // where that commit is.
        let restarted = consumer("resumer", &url, &log, 0.0);
        assert_eq!(
            restarted.checkpoint().await.expect("read"),
            Some(saved.clone()),
            "the restarted consumer read its checkpoint from before its last commit"
        );
        drop(paused);
        let pass = restarted.run_once().await.expect("pass after restart");
        assert_eq!(pass.from, saved.stream_id, "resumes where it stopped");
        assert_eq!(
            (pass.counted, pass.duplicates),
            (2, 0),
            "12 rides, 10 read before the restart: the last 2, none again"
        );
        let db = primary_of(&url).await;
        let (sum, max_id) = truth(&db).await;
        let done = restarted.checkpoint().await.expect("read").expect("saved");
        assert_eq!((done.total.to_string(), done.last_ride_id), (sum, max_id));
    })
}
