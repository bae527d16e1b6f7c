//! `demo-app migrate`: the schema and the seed users, applied through
//! causeway (DDL is a write, so it runs on the primary): 1 the rides,
//! idempotency keys and jobs; 2 the seed users; 3 the unified log's staged
//! records and consumer checkpoints, and the table CDC keeps up to date.
//!
//! Each migration runs in its own transaction under an advisory lock and is
//! recorded in `demo_schema_migrations`, so running `migrate` again, or from
//! several processes at once, changes nothing.

use deadpool_postgres::Pool;

use crate::error::Result;

/// The customer id of the seed user whose card the payment service always declines.
pub const DECLINED_CUSTOMER: &str = "cus_card_declined";

/// The seeded users: `(email, payment customer id)`.
pub const SEED_USERS: &[(&str, &str)] = &[
    ("user@example.com", "cus_user"),
    ("alice@example.com", "cus_alice"),
    ("bob@example.com", "cus_bob"),
    ("carol@example.com", "cus_carol"),
    ("declined@example.com", DECLINED_CUSTOMER),
];

/// Arbitrary, fixed: the advisory lock migrations take.
const MIGRATION_LOCK: i64 = 0x6361_7573_6577_6179; // "causeway"

const SCHEMA: &str = r#"
CREATE TABLE users (
    id                 bigserial PRIMARY KEY,
    email              text NOT NULL UNIQUE CHECK (char_length(email) <= 255),
    stripe_customer_id text NOT NULL CHECK (char_length(stripe_customer_id) <= 50),
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    id              bigserial PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    idempotency_key text NOT NULL CHECK (char_length(idempotency_key) <= 100),
    last_run_at     timestamptz NOT NULL DEFAULT now(),
    locked_at       timestamptz DEFAULT now(),
    request_method  text NOT NULL CHECK (char_length(request_method) <= 10),
    request_params  jsonb NOT NULL,
    request_path    text NOT NULL CHECK (char_length(request_path) <= 100),
    response_code   integer,
    response_body   jsonb,
    recovery_point  text NOT NULL CHECK (recovery_point IN
                        ('started', 'ride_created', 'charge_created', 'finished')),
    user_id         bigint NOT NULL REFERENCES users ON DELETE RESTRICT,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE rides (
    id                 bigserial PRIMARY KEY,
    created_at         timestamptz NOT NULL DEFAULT now(),
    idempotency_key_id bigint UNIQUE REFERENCES idempotency_keys ON DELETE SET NULL,
    distance           numeric(13, 3) NOT NULL CHECK (distance >= 0),
    origin_lat         numeric(13, 10) NOT NULL,
    origin_lon         numeric(13, 10) NOT NULL,
    target_lat         numeric(13, 10) NOT NULL,
    target_lon         numeric(13, 10) NOT NULL,
    charge_id          text UNIQUE CHECK (char_length(charge_id) <= 50),
    user_id            bigint NOT NULL REFERENCES users ON DELETE RESTRICT
);
CREATE INDEX rides_user_id ON rides (user_id);

CREATE TABLE audit_records (
    id            bigserial PRIMARY KEY,
    action        text NOT NULL CHECK (char_length(action) <= 50),
    created_at    timestamptz NOT NULL DEFAULT now(),
    data          jsonb NOT NULL,
    origin_ip     inet NOT NULL,
    resource_id   bigint NOT NULL,
    resource_type text NOT NULL CHECK (char_length(resource_type) <= 50),
    user_id       bigint NOT NULL REFERENCES users ON DELETE RESTRICT
);

CREATE TABLE staged_jobs (
    id       bigserial PRIMARY KEY,
    job_name text NOT NULL,
    job_args jsonb NOT NULL
);

CREATE TABLE things (
    id         bigint PRIMARY KEY,
    color      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"#;

/// The unified log and change-data capture (issue "Demo app II").
const LOG_AND_CDC: &str = r#"
CREATE TABLE staged_log_records (
    id     bigserial PRIMARY KEY,
    action text NOT NULL CHECK (char_length(action) <= 50),
    object text NOT NULL CHECK (char_length(object) <= 50),
    data   jsonb NOT NULL
);

CREATE TABLE consumer_checkpoints (
    stream         text NOT NULL CHECK (char_length(stream) <= 100),
    name           text NOT NULL CHECK (char_length(name) <= 100),
    total_distance numeric(20, 3) NOT NULL DEFAULT 0,
    stream_id      text NOT NULL DEFAULT '0-0',
    last_ride_id   bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, name)
);

CREATE TABLE ride_stats (
    user_id         bigint PRIMARY KEY,
    rides           bigint NOT NULL,
    total_distance  numeric(20, 3) NOT NULL,
    last_commit_lsn pg_lsn NOT NULL,
    last_change_lsn pg_lsn NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
"#;

const SEED_THINGS: &str = "INSERT INTO things (id, color) \
     SELECT i, 'grey' FROM generate_series(1, 10) AS i ON CONFLICT DO NOTHING";

/// Applies every migration not applied yet; returns how many it applied.
pub async fn migrate(pool: &Pool) -> Result<usize> {
    let mut client = pool.get().await?;
    // Checked first so a second run logs no "already exists" notice.
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('demo_schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS demo_schema_migrations (
                     version    integer PRIMARY KEY,
                     name       text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
    }
    let mut applied = 0;
    let migrations = [
        (1, "schema"),
        (2, "seed users and things"),
        (3, "unified log and change-data capture"),
    ];
    for (version, name) in migrations {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM demo_schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        match version {
            1 => tx.batch_execute(SCHEMA).await?,
            3 => tx.batch_execute(LOG_AND_CDC).await?,
            _ => {
                for (email, customer) in SEED_USERS {
                    tx.execute(
                        "INSERT INTO users (email, stripe_customer_id) VALUES ($1, $2) \
                         ON CONFLICT (email) DO NOTHING",
                        &[email, customer],
                    )
                    .await?;
                }
                tx.batch_execute(SEED_THINGS).await?;
            }
        }
        tx.execute(
            "INSERT INTO demo_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!("applied migration {version}: {name}");
        applied += 1;
    }
    Ok(applied)
}
