//! `demo-app diagnose` against real servers: with everything in place it
//! passes; a missing slot and a `wal_level` other than `logical` are failures
//! that say what to fix; the binary exits 1 when a check fails.

use std::process::Command;

use demo_app::cdc::{Cdc, CdcConfig, Dispatcher};
use demo_app::diagnose::{self, Check, DiagnoseConfig, Outcome};

use crate::harness::{db, env, new_key, primary, redis_url, run};
use crate::support::{ClusterOptions, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};

fn primary_url(port: u16) -> String {
    format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DB}")
}

fn config(database_url: &str, primary_port: u16, slot: &str) -> DiagnoseConfig {
    DiagnoseConfig {
        database_url: database_url.to_string(),
        primary_url: Some(primary_url(primary_port)),
        redis_url: redis_url(),
        slot: slot.to_string(),
    }
}

fn outcome<'a>(checks: &'a [Check], name: &str) -> &'a Outcome {
    &checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
        .outcome
}

fn ok(checks: &[Check], name: &str) -> String {
    match outcome(checks, name) {
        Outcome::Ok(detail) => detail.clone(),
        other => panic!(
            "{name} should pass: {other:?}\n{}",
            diagnose::report(checks)
        ),
    }
}

fn fail(checks: &[Check], name: &str) -> (String, String) {
    match outcome(checks, name) {
        Outcome::Fail { problem, fix } => (problem.clone(), fix.clone()),
        other => panic!(
            "{name} should fail: {other:?}\n{}",
            diagnose::report(checks)
        ),
    }
}

#[test]
fn a_missing_slot_fails_with_what_to_do_and_a_created_one_passes() {
    run(async {
        let env = env();
        let slot = format!("test_diag_{}", &new_key()[..10]);
        let config = config(&env.database_url, env.cluster.primary_port(), &slot);
        let checks = diagnose::diagnose(&config).await;
        assert!(ok(&checks, "causeway").contains("causeway answers"));
        ok(&checks, "primary");
        assert_eq!(ok(&checks, "wal_level"), "logical");
        let (problem, fix) = fail(&checks, "slot");
        assert_eq!(problem, format!("replication slot '{slot}' does not exist"));
        assert!(
            fix.contains("demo-app cdc") && fix.contains("pg_create_logical_replication_slot"),
            "{fix}"
        );
        assert!(matches!(outcome(&checks, "slot access"), Outcome::Skip(_)));
        assert!(ok(&checks, "redis").contains("PONG"));
        let replicas = ok(&checks, "replicas");
        assert!(
            replicas.contains("replica0 streaming") && replicas.contains("replica1 streaming"),
            "{replicas}"
        );
        let report = diagnose::report(&checks);
        assert!(
            report.contains(&format!(
                "FAIL  slot         replication slot '{slot}' does not exist"
            )),
            "{report}"
        );

        // The binary says the same, and exits 1.
        let port = env.cluster.primary_port();
        let (database_url, slot_name, redis) =
            (env.database_url.clone(), slot.clone(), redis_url());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_demo-app"))
                .arg("diagnose")
                .env("DATABASE_URL", database_url)
                .env("PRIMARY_URL", primary_url(port))
                .env("REDIS_URL", redis)
                .env("CDC_SLOT", slot_name)
                .output()
                .expect("run demo-app diagnose")
        })
        .await
        .expect("diagnose binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("FAIL  slot") && stdout.contains("1 check(s) failed"),
            "{stdout}"
        );

        let cdc = Cdc::new(
            db().shared().clone(),
            CdcConfig {
                slot: slot.clone(),
                ..CdcConfig::default()
            },
            Dispatcher::new(),
        );
        cdc.run_once().await.expect("create the slot");
        let checks = diagnose::diagnose(&config).await;
        assert!(
            checks.iter().all(|c| matches!(c.outcome, Outcome::Ok(_))),
            "{}",
            diagnose::report(&checks)
        );
        assert!(ok(&checks, "slot access").contains("change rows pending"));
        primary()
            .await
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .expect("drop the slot");
    })
}

#[test]
fn wal_level_replica_fails_with_what_to_do() {
    let cluster = TestCluster::start(ClusterOptions {
        replicas: 1,
        with_redis: false,
        extra_config: vec!["wal_level = replica".into()],
        ..ClusterOptions::default()
    });
    let proxy = TestProxy::start(&cluster);
    let database_url = format!(
        "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{APP_DB}",
        proxy.port
    );
    run(async {
        let checks = diagnose::diagnose(&config(
            &database_url,
            cluster.primary_port(),
            "demo_app_cdc",
        ))
        .await;
        ok(&checks, "causeway");
        let (problem, fix) = fail(&checks, "wal_level");
        assert_eq!(
            problem,
            "wal_level is 'replica', and logical decoding needs 'logical'"
        );
        assert!(
            fix.contains("ALTER SYSTEM SET wal_level = logical") && fix.contains("restart"),
            "{fix}"
        );
        fail(&checks, "slot");
        assert!(ok(&checks, "replicas").contains("replica0 streaming"));
    });
    proxy.stop();
}
