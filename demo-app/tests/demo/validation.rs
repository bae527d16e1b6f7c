//! Every refusal of the API: 401 without or with unknown credentials, 400
//! for a missing or short key or a bad body, 422 naming the bad parameter,
//! 404 for a ride that is not there or not yours.

use serde_json::json;

use crate::harness::{new_key, ride_params, run, App, USER};

#[test]
fn credentials_are_required() {
    run(async {
        let app = App::shared();
        let (status, body) = app
            .post_ride(None, Some(&new_key()), &ride_params(), None)
            .await;
        assert_eq!(status, 401);
        assert_eq!(
            body["error"],
            "Please specify credentials in the Authorization header."
        );
        let (status, _) = app
            .post_ride(
                Some("nobody@example.com"),
                Some(&new_key()),
                &ride_params(),
                None,
            )
            .await;
        assert_eq!(status, 401);
        let ((status, _), _) = app.get(None, "/rides/1").await;
        assert_eq!(status, 401);
        let ((status, _), _) = app.get(Some("nobody@example.com"), "/rides/1").await;
        assert_eq!(status, 401);
        let ((status, _), _) = app.get(None, "/things/1").await;
        assert_eq!(status, 401);
    })
}

#[test]
fn idempotency_key_is_required_and_long_enough() {
    run(async {
        let app = App::shared();
        let (status, body) = app.post_ride(Some(USER), None, &ride_params(), None).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "Please specify an Idempotency-Key header.");
        let (status, body) = app
            .post_ride(
                Some(USER),
                Some("0123456789012345678"),
                &ride_params(),
                None,
            )
            .await;
        assert_eq!(status, 400, "19 characters: {body}");
        let long = "k".repeat(101);
        let (status, _) = app
            .post_ride(Some(USER), Some(&long), &ride_params(), None)
            .await;
        assert_eq!(status, 400);
        // Credentials are checked first.
        let (status, _) = app.post_ride(None, None, &ride_params(), None).await;
        assert_eq!(status, 401);
    })
}

#[test]
fn bad_parameters_are_422_and_name_the_parameter() {
    run(async {
        let app = App::shared();
        let cases = [
            (json!({}), "origin_lat"),
            (
                json!({"origin_lat": 1, "origin_lon": 2, "target_lat": 3}),
                "target_lon",
            ),
            (
                json!({"origin_lat": "north", "origin_lon": 2, "target_lat": 3, "target_lon": 4}),
                "origin_lat",
            ),
            (
                json!({"origin_lat": 1, "origin_lon": 2, "target_lat": 90.5, "target_lon": 4}),
                "target_lat",
            ),
            (
                json!({"origin_lat": 1, "origin_lon": 181, "target_lat": 3, "target_lon": 4}),
                "origin_lon",
            ),
        ];
        for (params, name) in cases {
            let key = new_key();
            let (status, body) = app.post_ride(Some(USER), Some(&key), &params, None).await;
            assert_eq!(status, 422, "{params}: {body}");
            let message = body["error"].as_str().unwrap_or_default();
            assert!(
                message.contains(name),
                "{params}: {message:?} should name {name}"
            );
        }
    })
}

#[test]
fn a_body_that_is_not_an_object_is_400() {
    run(async {
        let app = App::shared();
        let (status, _) = app
            .post_ride(Some(USER), Some(&new_key()), &json!([1, 2]), None)
            .await;
        assert_eq!(status, 400);
        let (status, _) = app
            .post_ride(
                Some(USER),
                Some(&new_key()),
                &ride_params(),
                Some("nowhere"),
            )
            .await;
        assert_eq!(status, 400, "an unknown X-Inject-Failure point");
    })
}

#[test]
fn rides_of_others_and_missing_rides_are_404() {
    run(async {
        let app = App::shared();
        let (status, body) = app.create_ride(USER, &new_key(), &ride_params()).await;
        assert_eq!(status, 201, "{body}");
        let id = body["ride"]["id"].as_i64().expect("ride id");
        let ((status, _), _) = app.get(Some(USER), &format!("/rides/{id}")).await;
        assert_eq!(status, 200);
        let ((status, _), _) = app
            .get(Some("alice@example.com"), &format!("/rides/{id}"))
            .await;
        assert_eq!(status, 404, "another user's ride");
        let ((status, _), _) = app.get(Some(USER), "/rides/999999999").await;
        assert_eq!(status, 404);
        let ((status, _), _) = app.get(Some(USER), "/rides/not-a-number").await;
        assert_eq!(status, 404);
    })
}
