//! The background processes, one pass each: the completer finishes abandoned
//! keys (and leaves young or freshly locked ones alone), the reaper deletes
//! only old keys, the enqueuer moves staged jobs to Redis.

use std::time::Duration;

use demo_app::atomic::DEFAULT_LOCK_TIMEOUT;
use demo_app::jobs::completer::{self, Completer, CompleterConfig};
use demo_app::jobs::queue::{JobQueue, JOB_LIST};
use demo_app::jobs::{enqueuer, reaper};
use serde_json::{json, Value};

use crate::harness::{
    charges_for, db, env, key_state, new_key, primary, ride_params, run, App, USER,
};

/// A key abandoned at `ride_created`.
async fn abandoned_key(app: &App) -> (String, i64) {
    let key = new_key();
    let (status, _) = app
        .fail_at(USER, &key, &ride_params(), "ride_created")
        .await;
    assert_eq!(status, 500);
    let id = key_state(USER, &key).await.expect("key").id;
    (key, id)
}

#[test]
fn completer_finishes_abandoned_keys_only() {
    run(async {
        let app = App::shared();
        let (old, old_id) = abandoned_key(app).await;
        let (young, _) = abandoned_key(app).await;
        let (locked, locked_id) = abandoned_key(app).await;
        let db_primary = primary().await;
        db_primary
            .execute(
                "UPDATE idempotency_keys
                    SET created_at = now() - interval '10 minutes',
                        last_run_at = now() - interval '2 minutes'
                  WHERE id = ANY($1)",
                &[&vec![old_id, locked_id]],
            )
            .await
            .expect("age keys");
        db_primary
            .execute(
                "UPDATE idempotency_keys SET locked_at = now() WHERE id = $1",
                &[&locked_id],
            )
            .await
            .expect("lock");

        // Passes until the old key is done (a pass may lose a race with the
        // other tests' transactions: a 409 it leaves for the next pass).
        let completer = Completer {
            db: db(),
            payments: app.payments_client(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            config: CompleterConfig {
                rerun_after: Duration::ZERO,
                ..CompleterConfig::default()
            },
        };
        let pass_until_finished = |key: String| {
            let completer = &completer;
            async move {
                for _ in 0..20 {
                    completer::run_once(completer)
                        .await
                        .expect("completer pass");
                    if key_state(USER, &key).await.expect("key").recovery_point == "finished" {
                        return;
                    }
                }
                panic!("the completer never finished key {key}");
            }
        };
        pass_until_finished(old.clone()).await;
        let state = key_state(USER, &old).await.expect("old key");
        assert_eq!(
            (state.recovery_point.as_str(), state.response_code),
            ("finished", Some(201))
        );
        assert!(state.charge_id.is_some());
        assert_eq!(charges_for(&app.ledger, old_id), 1);
        assert_eq!(
            key_state(USER, &young).await.expect("young").recovery_point,
            "ride_created"
        );
        assert_eq!(
            key_state(USER, &locked)
                .await
                .expect("locked")
                .recovery_point,
            "ride_created"
        );

        // The request holding the lock died 100 s ago.
        db_primary
            .execute(
                "UPDATE idempotency_keys SET locked_at = now() - interval '100 seconds' WHERE id = $1",
                &[&locked_id],
            )
            .await
            .expect("age the lock");
        pass_until_finished(locked.clone()).await;
        assert_eq!(
            key_state(USER, &locked)
                .await
                .expect("locked")
                .recovery_point,
            "finished"
        );
        // Run once: not again within a minute, and finished keys are left alone.
        assert_eq!(charges_for(&app.ledger, locked_id), 1);
    })
}

#[test]
fn reaper_deletes_only_old_keys() {
    run(async {
        let app = App::shared();
        let (old, new) = (new_key(), new_key());
        for key in [&old, &new] {
            let (status, _) = app.create_ride(USER, key, &ride_params()).await;
            assert_eq!(status, 201);
        }
        let old_id = key_state(USER, &old).await.expect("old").id;
        let db_primary = primary().await;
        db_primary
            .execute(
                "UPDATE idempotency_keys SET created_at = now() - interval '73 hours' WHERE id = $1",
                &[&old_id],
            )
            .await
            .expect("age");
        let deleted = reaper::run_once(db().shared(), reaper::DEFAULT_MAX_AGE, 1000)
            .await
            .expect("reaper pass");
        assert!(deleted >= 1);
        assert!(key_state(USER, &old).await.is_none(), "the old key is gone");
        assert!(key_state(USER, &new).await.is_some(), "the new key stays");
        let orphans: i64 = db_primary
            .query_one(
                "SELECT count(*) FROM audit_records a JOIN rides r ON r.id = a.resource_id
                  WHERE a.data->>'idempotency_key_id' = $1 AND r.idempotency_key_id IS NULL",
                &[&old_id.to_string()],
            )
            .await
            .expect("ride")
            .get(0);
        assert_eq!(orphans, 1, "the ride stays, without its key");
    })
}

async fn staged(marker: &str, n: usize) -> Vec<i64> {
    let db = primary().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let args = json!({ "marker": marker, "i": i });
        let row = db
            .query_one(
                "INSERT INTO staged_jobs (job_name, job_args) VALUES ('test_job', $1) RETURNING id",
                &[&args],
            )
            .await
            .expect("stage");
        ids.push(row.get(0));
    }
    ids
}

async fn still_staged(ids: &[i64]) -> i64 {
    primary()
        .await
        .query_one(
            "SELECT count(*) FROM staged_jobs WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("count")
        .get(0)
}

#[test]
fn enqueuer_moves_staged_jobs_to_redis_and_keeps_them_when_it_cannot() {
    run(async {
        let marker = new_key();
        let ids = staged(&marker, 3).await;
        // A created ride stages its receipt job in the same transaction.
        let (status, body) = App::shared()
            .create_ride(USER, &new_key(), &ride_params())
            .await;
        assert_eq!(status, 201);
        let ride_id = body["ride"]["id"].clone();

        // Redis unreachable: the pass fails and the jobs stay staged.
        let dead = JobQueue::new(Some("redis://127.0.0.1:1"));
        assert!(enqueuer::run_once(db().shared(), &dead, 1000)
            .await
            .is_err());
        assert_eq!(still_staged(&ids).await, 3);

        let redis_port = env()
            .cluster
            .redis_port()
            .expect("the shared cluster has Redis");
        let url = format!("redis://127.0.0.1:{redis_port}");
        let moved = enqueuer::run_once(db().shared(), &JobQueue::new(Some(&url)), 1000)
            .await
            .expect("enqueuer pass");
        assert!(moved >= 3);
        assert_eq!(still_staged(&ids).await, 0);

        let mut redis = demo_app::redis_client::connect(&url).await.expect("redis");
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(JOB_LIST)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await
            .expect("lrange");
        let jobs: Vec<Value> = items
            .iter()
            .filter_map(|item| serde_json::from_str::<Value>(item).ok())
            .collect();
        let receipts = jobs
            .iter()
            .filter(|j| j["job_name"] == "send_ride_receipt" && j["job_args"]["ride_id"] == ride_id)
            .count();
        assert_eq!(receipts, 1, "the ride's receipt job reached the queue once");
        let mine: Vec<&Value> = jobs
            .iter()
            .filter(|job| job["job_args"]["marker"] == json!(marker))
            .collect();
        let order: Vec<i64> = mine
            .iter()
            .filter_map(|j| j["job_args"]["i"].as_i64())
            .collect();
        assert_eq!(order, vec![0, 1, 2], "each job once, in order: {mine:?}");
        assert!(mine.iter().all(|j| j["job_name"] == "test_job"));
    })
}
