//! Idempotency keys: a finished key replays its stored answer, a key reused
//! with other parameters or still in use is refused, a declined card is a
//! stored 402, a serialization failure is a 409 to retry, and a request
//! that failed at any recovery point is finished by a retry with one ride
//! and one charge.

use std::time::Duration;

use demo_app::payments::FailureMode;
use serde_json::json;

use crate::harness::{
    charges_for, key_state, new_key, primary, ride_params, run, App, DECLINED_USER, USER,
};

#[test]
fn a_finished_key_replays_the_same_answer() {
    run(async {
        let app = App::shared();
        let (key, params) = (new_key(), ride_params());
        let first = app.create_ride(USER, &key, &params).await;
        assert_eq!(first.0, 201, "{}", first.1);
        assert!(first.1["ride"]["charge_id"].is_string(), "{}", first.1);
        let second = app.create_ride(USER, &key, &params).await;
        assert_eq!(second, first, "the replay is the stored answer");
        let state = key_state(USER, &key).await.expect("key stored");
        assert_eq!(state.recovery_point, "finished");
        assert!(!state.locked);
        assert_eq!(state.rides, 1);
        assert_eq!(charges_for(&app.ledger, state.id), 1);
    })
}

#[test]
fn a_form_body_works_like_json() {
    run(async {
        let app = App::shared();
        let response = reqwest::Client::new()
            .post(format!("{}/rides", app.api_url))
            .header("Authorization", USER)
            .header("Idempotency-Key", new_key())
            .form(&[
                ("origin_lat", "1.25"),
                ("origin_lon", "2.5"),
                ("target_lat", "1.3"),
                ("target_lon", "2.6"),
            ])
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 201);
    })
}

#[test]
fn the_same_key_with_other_params_is_409() {
    run(async {
        let app = App::shared();
        let key = new_key();
        let (status, _) = app.create_ride(USER, &key, &ride_params()).await;
        assert_eq!(status, 201);
        let (status, body) = app
            .post_ride_past_conflicts(USER, &key, &ride_params(), None)
            .await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("mismatch"),
            "{body}"
        );
        // Another user may use the same key: keys are per user.
        let (status, _) = app
            .create_ride("alice@example.com", &key, &ride_params())
            .await;
        assert_eq!(status, 201);
    })
}

#[test]
fn a_locked_key_is_409_until_its_lock_expires() {
    run(async {
        let app = App::shared();
        let (key, params) = (new_key(), ride_params());
        let (status, body) = app.fail_at(USER, &key, &params, "ride_created").await;
        assert_eq!(status, 500, "{body}");
        assert!(body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("retry with the same key"));
        let state = key_state(USER, &key).await.expect("key");
        assert_eq!(
            (state.recovery_point.as_str(), state.locked),
            ("ride_created", false)
        );

        // As if another request were running it right now.
        let db = primary().await;
        db.execute(
            "UPDATE idempotency_keys SET locked_at = now() WHERE id = $1",
            &[&state.id],
        )
        .await
        .expect("lock");
        let (status, body) = app
            .post_ride_past_conflicts(USER, &key, &params, None)
            .await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("in progress"),
            "{body}"
        );

        // That request died 91 s ago: its lock has expired.
        db.execute(
            "UPDATE idempotency_keys SET locked_at = now() - interval '91 seconds' WHERE id = $1",
            &[&state.id],
        )
        .await
        .expect("age the lock");
        let (status, body) = app.create_ride(USER, &key, &params).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(charges_for(&app.ledger, state.id), 1);
    })
}

#[test]
fn a_declined_card_is_a_stored_402() {
    run(async {
        let app = App::shared();
        let (key, params) = (new_key(), ride_params());
        let first = app.create_ride(DECLINED_USER, &key, &params).await;
        assert_eq!(first.0, 402, "{}", first.1);
        assert_eq!(first.1["error"], "Your card was declined.");
        let replay = app.create_ride(DECLINED_USER, &key, &params).await;
        assert_eq!(replay, first);
        let state = key_state(DECLINED_USER, &key).await.expect("key");
        assert_eq!(state.recovery_point, "finished");
        assert_eq!(state.response_code, Some(402));
        assert_eq!(state.charge_id, None);
        assert_eq!(charges_for(&app.ledger, state.id), 0);
    })
}

#[test]
fn a_retry_resumes_from_every_recovery_point() {
    run(async {
        let app = App::shared();
        for point in ["started", "ride_created", "charge_created"] {
            let (key, params) = (new_key(), ride_params());
            let (status, body) = app.fail_at(USER, &key, &params, point).await;
            assert_eq!(status, 500, "{point}: {body}");
            let state = key_state(USER, &key).await.expect("key");
            assert_eq!(state.recovery_point, point);
            assert!(!state.locked, "{point}: a failed request unlocks its key");

            let (status, body) = app.create_ride(USER, &key, &params).await;
            assert_eq!(status, 201, "{point}: {body}");
            let state = key_state(USER, &key).await.expect("key");
            assert_eq!(state.recovery_point, "finished", "{point}");
            assert_eq!(state.rides, 1, "{point}");
            assert!(state.charge_id.is_some(), "{point}");
            assert_eq!(charges_for(&app.ledger, state.id), 1, "{point}");
        }
    })
}

#[test]
fn payment_failures_before_and_after_recording_charge_once() {
    run(async {
        let app = App::start(0.0);
        for mode in [FailureMode::BeforeRecording, FailureMode::AfterRecording] {
            let (key, params) = (new_key(), ride_params());
            app.ledger.set_failures(1.0, mode);
            for _ in 0..2 {
                let (status, body) = app
                    .post_ride_past_conflicts(USER, &key, &params, None)
                    .await;
                assert_eq!(status, 503, "{mode:?}: {body}");
                assert!(body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("retry with the same key"));
            }
            let state = key_state(USER, &key).await.expect("key");
            assert_eq!(state.recovery_point, "ride_created", "{mode:?}: not stored");
            let expected = usize::from(mode == FailureMode::AfterRecording);
            assert_eq!(charges_for(&app.ledger, state.id), expected, "{mode:?}");

            app.ledger.set_failures(0.0, FailureMode::Random);
            let (status, body) = app.create_ride(USER, &key, &params).await;
            assert_eq!(status, 201, "{mode:?}: {body}");
            assert_eq!(
                charges_for(&app.ledger, state.id),
                1,
                "{mode:?}: one charge"
            );
            let charge = app.ledger.charges().into_iter().find(|c| {
                c.idempotency_key.as_deref()
                    == Some(demo_app::atomic::charge::payment_key(state.id).as_str())
            });
            assert_eq!(body["ride"]["charge_id"], json!(charge.map(|c| c.id)));
        }
    })
}

#[test]
fn a_serialization_failure_is_409_and_the_key_is_unlocked() {
    run(async {
        let app = App::shared();
        let (key, params) = (new_key(), ride_params());
        let (status, _) = app.fail_at(USER, &key, &params, "ride_created").await;
        assert_eq!(status, 500);
        let state = key_state(USER, &key).await.expect("key");

        // A concurrent transaction updates the key while the request's
        // SERIALIZABLE phase 1 waits for the row: when it commits, phase 1
        // cannot serialize (SQLSTATE 40001).
        let mut blocker = primary().await;
        let tx = blocker.transaction().await.expect("begin");
        let pid: i32 = tx
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        tx.execute(
            "UPDATE idempotency_keys SET last_run_at = now() WHERE id = $1",
            &[&state.id],
        )
        .await
        .expect("update");
        let request = {
            let (api, key, params) = (app.api_url.clone(), key.clone(), params.clone());
            tokio::spawn(async move {
                let response = reqwest::Client::new()
                    .post(format!("{api}/rides"))
                    .header("Authorization", USER)
                    .header("Idempotency-Key", key)
                    .json(&params)
                    .send()
                    .await
                    .expect("answer");
                let status = response.status().as_u16();
                (
                    status,
                    response
                        .json::<serde_json::Value>()
                        .await
                        .unwrap_or_default(),
                )
            })
        };
        let observer = primary().await;
        let mut waited = Duration::ZERO;
        loop {
            let blocked: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    &[&pid],
                )
                .await
                .expect("blocked")
                .get(0);
            if blocked > 0 {
                break;
            }
            assert!(
                waited < Duration::from_secs(20),
                "the request never waited for the row"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        tx.commit().await.expect("commit");
        let (status, body) = request.await.expect("request task");
        assert_eq!(status, 409, "{body}");
        assert!(body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("retry with the same key"));
        assert!(!key_state(USER, &key).await.expect("key").locked);

        let (status, body) = app.create_ride(USER, &key, &params).await;
        assert_eq!(status, 201, "{body}");
    })
}

#[test]
fn concurrent_requests_with_one_key_make_one_ride_and_one_charge() {
    run(async {
        let app = App::shared();
        let (key, params) = (new_key(), ride_params());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (key, params) = (key.clone(), params.clone());
                tokio::spawn(async move {
                    App::shared()
                        .post_ride_until_final(USER, &key, &params)
                        .await
                })
            })
            .collect();
        let mut finals = Vec::new();
        for task in tasks {
            let answers = task.await.expect("task");
            finals.push(answers.last().cloned().expect("an answer"));
        }
        assert!(finals.iter().all(|f| f.0 == 201), "{finals:?}");
        assert!(
            finals.windows(2).all(|w| w[0] == w[1]),
            "every client sees the same ride"
        );
        let state = key_state(USER, &key).await.expect("key");
        assert_eq!(state.rides, 1);
        assert_eq!(charges_for(&app.ledger, state.id), 1);
    })
}
