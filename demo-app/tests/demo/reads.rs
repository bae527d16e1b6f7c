//! Read-your-writes through causeway, which the app gets without keeping
//! any LSN: with replay paused on both replicas a ride just created is still
//! found (the primary serves it), even on a connection other than the
//! write's, because every connection names its user with
//! `causeway.client_id`; another user's read may meanwhile use the stale
//! replica, and without a client id so would the writer's; once the
//! replicas catch up a replica serves; the things demo sees its own write
//! within one request; and the simulator counts no stale read.

use deadpool_postgres::{Object, Pool};
use demo_app::db::Causality;
use demo_app::simulate::{self, SimulatorConfig};
use serde_json::json;

use crate::harness::{
    env, new_key, new_user, ride_params, run, url_through, App, Paused, SERIAL, USER,
};
use crate::support::{connect, TestProxy, APP_DB, APP_PASSWORD, APP_USER};

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

/// Takes every idle connection of `pool` and keeps it, so that the next
/// checkout must open a new one.
async fn hold_idle(pool: &Pool) -> Vec<Object> {
    let mut held = Vec::new();
    while pool.status().available > 0 {
        held.push(pool.get().await.expect("an idle connection"));
    }
    held
}

/// Whether replica `server` (`replica0`, ...) has ride `id`, asked directly.
async fn replica_has_ride(server: &str, id: i64) -> bool {
    let port = env().cluster.port_of(server);
    let client = connect(port, APP_USER, APP_PASSWORD, APP_DB).await;
    let row = client
        .query_one("SELECT count(*) FROM rides WHERE id = $1", &[&id])
        .await
        .expect("count on the replica");
    row.get::<_, i64>(0) == 1
}

#[test]
fn client_id_carries_a_write_to_the_users_other_connections() {
    run(async {
        let _serial = SERIAL.lock().await;
        let app = App::start_with(&env().database_url, Causality::ClientId, 0.0);
        let (writer, reader) = (new_user("writer").await, new_user("reader").await);
        // The reader wrote once, long replayed by the time replay pauses.
        let (status, _) = app.create_ride(&reader, &new_key(), &ride_params()).await;
        assert_eq!(status, 201);
        env().cluster.wait_replicas_caught_up();

        let _paused = Paused::both();
        let (status, body) = app.create_ride(&writer, &new_key(), &ride_params()).await;
        assert_eq!(status, 201, "{body}");
        let id = body["ride"]["id"].as_i64().expect("ride id");
        let pool = app.context.db.shared();
        let held = hold_idle(pool).await;
        let opened = pool.status().size;

        let ((status, read), server) = app.get(Some(&writer), &format!("/rides/{id}")).await;
        assert_eq!(
            pool.status().size,
            opened + 1,
            "the read ran on a connection opened after the write"
        );
        assert_eq!(status, 200, "the writer must find the ride: {read}");
        assert_eq!(read["ride"]["id"], json!(id));
        assert_eq!(
            server.as_deref(),
            Some("primary"),
            "no replica has replayed it"
        );

        // The reader's causal LSN is old: a replica serves them, stale as it is.
        let ((status, _), server) = app.get(Some(&reader), &format!("/rides/{id}")).await;
        assert_eq!(status, 404, "not the reader's ride");
        let server = server.unwrap_or_default();
        assert!(
            server.starts_with("replica"),
            "the reader may read a replica: {server}"
        );
        assert!(
            !replica_has_ride(&server, id).await,
            "{server} is behind: it has not replayed ride {id}"
        );
        drop(held);
    })
}

#[test]
fn without_a_client_id_a_read_on_another_connection_is_stale() {
    run(async {
        let _serial = SERIAL.lock().await;
        // Its own causeway, whose lag limit cannot expire during the test:
        // a session with no causal LSN then reads any healthy replica.
        let proxy = TestProxy::start_with(env().cluster, |config| {
            config.routing.max_lag_ms = 600_000;
            config.routing.max_lag_bytes = u64::MAX;
            config.routing.causal_scope = causeway::config::CausalScope::ClientId;
        });
        let url = url_through(proxy.port);
        let app = App::start_with(&url, Causality::None, 0.0);
        let writer = new_user("stale").await;
        env().cluster.wait_replicas_caught_up();

        let _paused = Paused::both();
        let (status, body) = app.create_ride(&writer, &new_key(), &ride_params()).await;
        assert_eq!(status, 201, "{body}");
        let id = body["ride"]["id"].as_i64().expect("ride id");
        let held = hold_idle(app.context.db.shared()).await;

        let ((status, _), server) = app.get(Some(&writer), &format!("/rides/{id}")).await;
        let server = server.unwrap_or_default();
        assert_eq!(
            (status, server.starts_with("replica")),
            (404, true),
            "a new connection knows nothing of the write: a stale replica answers ({server})"
        );
        drop(held);
        proxy.stop();
    })
}
