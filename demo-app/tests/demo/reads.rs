//! Read-your-writes through causeway, which the app gets without keeping
//! any LSN: with replay paused on both replicas a ride just created is still
//! found (the primary serves it); once they catch up a replica does; the
//! things demo sees its own write within one request; and the simulator
//! counts no stale read.

use demo_app::simulate::{self, SimulatorConfig};
use serde_json::json;

use crate::harness::{env, new_key, ride_params, run, App, SERIAL, USER};

/// Pauses replay on both replicas until dropped.
struct Paused;

impl Paused {
    fn both() -> Paused {
        let cluster = env().cluster;
        cluster.pause_replay(0);
        cluster.pause_replay(1);
        Paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let cluster = env().cluster;
        cluster.resume_replay(0);
        cluster.resume_replay(1);
    }
}

#[test]
fn create_then_get_with_replay_paused_is_served_by_the_primary() {
    run(async {
        let _serial = SERIAL.lock().await;
        let app = App::shared();
        let id = {
            let _paused = Paused::both();
            let (status, body) = app.create_ride(USER, &new_key(), &ride_params()).await;
            assert_eq!(status, 201, "{body}");
            let id = body["ride"]["id"].as_i64().expect("id");
            let ((status, read), server) = app.get(Some(USER), &format!("/rides/{id}")).await;
            assert_eq!(status, 200, "the ride just created must be found: {read}");
            assert_eq!(read["ride"], body["ride"]);
            assert_eq!(
                server.as_deref(),
                Some("primary"),
                "no replica has replayed it"
            );
            id
        };
        env().cluster.wait_replicas_caught_up();
        let ((status, _), server) = app.get(Some(USER), &format!("/rides/{id}")).await;
        assert_eq!(status, 200);
        let server = server.unwrap_or_default();
        assert!(
            server.starts_with("replica"),
            "a caught-up replica should serve: {server}"
        );
    })
}

#[test]
fn things_reads_after_the_write_in_one_request_see_it() {
    run(async {
        let _serial = SERIAL.lock().await;
        let app = App::shared();
        let color = format!("color-{}", &new_key()[..8]);
        let (status, body) = {
            let _paused = Paused::both();
            app.post(USER, "/things/3", &json!({ "color": color }))
                .await
        };
        assert_eq!(status, 200, "{body}");
        let reads = body["reads"].as_array().cloned().unwrap_or_default();
        assert_eq!(reads.len(), 4, "{body}");
        let last = &reads[3];
        assert_eq!(
            last["color"],
            json!(color),
            "the read after the write sees it"
        );
        assert_eq!(
            last["server"], "primary",
            "replay is paused: only the primary has it"
        );
        for read in &reads[..3] {
            assert_ne!(
                read["color"],
                json!(color),
                "reads before the write: {read}"
            );
        }
        let ((status, _), _) = app.get(Some(USER), "/things/999").await;
        assert_eq!(status, 404);
        let (status, _) = app.post(USER, "/things/3", &json!({})).await;
        assert_eq!(status, 422);
    })
}

#[test]
fn simulator_counts_no_stale_read() {
    run(async {
        let _serial = SERIAL.lock().await;
        let app = App::shared();
        let config = SimulatorConfig {
            api_url: app.api_url.clone(),
            iterations: Some(60),
            report_every: 0,
            ..SimulatorConfig::default()
        };
        let (_, never) = tokio::sync::watch::channel(false);
        let summary = simulate::run(&config, never).await;
        assert_eq!(summary.rides, 60);
        assert_eq!(summary.stale_reads, 0, "{summary}");
        assert_eq!(summary.read_errors, 0, "{summary}");
        assert_eq!(summary.created + summary.declined, 60, "{summary}");
        assert_eq!(summary.reads(), summary.created, "{summary}");
        assert!(
            summary.requests() > 60,
            "injected failures were retried: {summary}"
        );
    })
}
