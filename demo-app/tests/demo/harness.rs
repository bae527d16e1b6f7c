//! What every demo test stands on: the shared cluster, a causeway in front
//! of it, the migrated schema, and apps (API + payment service) serving on a
//! runtime that outlives every test.
//!
//! Tests are plain `#[test]`s that [`run`] their body on that one runtime,
//! so pools, servers and clients never straddle two runtimes.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use demo_app::api::{self, ApiContext};
use demo_app::atomic::DEFAULT_LOCK_TIMEOUT;
use demo_app::db::{Causality, Db};
use demo_app::payments::{self, Ledger, PaymentsClient};
use demo_app::servers::ServerNames;
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::support::{connect, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};

/// Tests that pause replay or count where reads went take this first.
pub static SERIAL: Mutex<()> = Mutex::const_new(());

/// Pauses replay on both replicas until dropped (hold [`SERIAL`]).
pub struct Paused;

impl Paused {
    pub fn both() -> Paused {
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

/// A seeded user whose card works, and the one whose card is declined.
pub const USER: &str = "user@example.com";
pub const DECLINED_USER: &str = "declined@example.com";

pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// Runs a test body on the shared runtime.
pub fn run<F: Future>(body: F) -> F::Output {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    env();
    runtime().block_on(body)
}

pub struct Env {
    pub cluster: &'static TestCluster,
    /// Kept here so it runs for the whole test process.
    _proxy: TestProxy,
    /// `DATABASE_URL` for the app: causeway.
    pub database_url: String,
    pub proxy_port: u16,
    pub servers: ServerNames,
}

/// The cluster, causeway, and the schema (migrated twice: it must be idempotent).
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let cluster = TestCluster::shared();
        // The demo shows what the app's client ids add: under the default
        // scope ("global") every connection already shares every write.
        let proxy = TestProxy::start_with(cluster, |config| {
            config.routing.causal_scope = causeway::config::CausalScope::ClientId;
        });
        let (proxy_port, database_url) = (proxy.port, url_through(proxy.port));
        let mut servers = vec![("primary".to_string(), cluster.primary_port())];
        for (i, port) in cluster.replica_ports().into_iter().enumerate() {
            servers.push((format!("replica{i}"), port));
        }
        let url = database_url.clone();
        let applied = std::thread::spawn(move || {
            runtime().block_on(async {
                let db = Db::new(&url, Causality::default()).expect("db");
                let first = demo_app::migrate::migrate(db.shared())
                    .await
                    .expect("migrate");
                let second = demo_app::migrate::migrate(db.shared())
                    .await
                    .expect("migrate again");
                (first, second)
            })
        })
        .join()
        .expect("migrate thread");
        assert_eq!(applied.1, 0, "a second migrate must change nothing");
        cluster.wait_replicas_caught_up();
        Env {
            cluster,
            _proxy: proxy,
            database_url,
            proxy_port,
            servers: ServerNames::new(servers),
        }
    })
}

/// `DATABASE_URL` for the app through the causeway listening on `port`.
pub fn url_through(port: u16) -> String {
    format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DB}")
}

/// An API and its own payment service.
pub struct App {
    pub api_url: String,
    pub payments_url: String,
    pub ledger: Arc<Ledger>,
    /// What the API serves with (tests reach into its pool).
    pub context: Arc<ApiContext>,
}

impl App {
    /// The app most tests share: payments never fail.
    pub fn shared() -> &'static App {
        static APP: OnceLock<App> = OnceLock::new();
        APP.get_or_init(|| App::start(0.0))
    }

    /// A new API and payment service on free ports, failing `failure_rate` of charges.
    pub fn start(failure_rate: f64) -> App {
        App::start_with(&env().database_url, Causality::default(), failure_rate)
    }

    /// [`App::start`] on another database, or with another causality.
    pub fn start_with(database_url: &str, causality: Causality, failure_rate: f64) -> App {
        let env = env();
        let ledger = Arc::new(Ledger::new(failure_rate));
        let payments_port = serve(payments::server::router(ledger.clone()));
        let payments_url = format!("http://127.0.0.1:{payments_port}");
        let context = Arc::new(ApiContext {
            db: Db::new(database_url, causality).expect("db"),
            payments: PaymentsClient::new(&payments_url),
            servers: env.servers.clone(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            allow_failure_injection: true,
        });
        let serving = context.clone();
        let listener = bind();
        let api_port = listener.local_addr().expect("api address").port();
        runtime().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("api listener");
            api::serve(listener, serving, std::future::pending())
                .await
                .expect("api serves");
        });
        App {
            api_url: format!("http://127.0.0.1:{api_port}"),
            payments_url,
            ledger,
            context,
        }
    }

    pub fn payments_client(&self) -> PaymentsClient {
        PaymentsClient::new(&self.payments_url)
    }

    /// `POST /rides` as `user` with `key` (either may be absent).
    pub async fn post_ride(
        &self,
        user: Option<&str>,
        key: Option<&str>,
        params: &Value,
        inject: Option<&str>,
    ) -> (u16, Value) {
        let mut request = http().post(format!("{}/rides", self.api_url)).json(params);
        if let Some(user) = user {
            request = request.header("Authorization", user);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(point) = inject {
            request = request.header("X-Inject-Failure", point);
        }
        answer(request).await.0
    }

    /// `POST /rides`, retried with the same key until the answer is final
    /// (not 409 or 5xx); the answers, in order.
    pub async fn post_ride_until_final(
        &self,
        user: &str,
        key: &str,
        params: &Value,
    ) -> Vec<(u16, Value)> {
        let mut answers = Vec::new();
        for attempt in 0..60u64 {
            let answer = self.post_ride(Some(user), Some(key), params, None).await;
            let retry = answer.0 == 409 || answer.0 >= 500;
            answers.push(answer);
            if !retry {
                return answers;
            }
            tokio::time::sleep(Duration::from_millis(5 * attempt.min(20))).await;
        }
        panic!("key {key} never got a final answer: {answers:?}");
    }

    /// The final answer to a create (see [`App::post_ride_until_final`]):
    /// under concurrent load SERIALIZABLE phases may fail with 409, and a
    /// client retries those with the same key.
    pub async fn create_ride(&self, user: &str, key: &str, params: &Value) -> (u16, Value) {
        let answers = self.post_ride_until_final(user, key, params).await;
        answers.last().cloned().unwrap_or((0, Value::Null))
    }

    /// `POST /rides`, sent again while the answer is a 409 for a
    /// serialization failure (another test's transaction got in the way), so
    /// a test sees the answer its own scenario causes.
    pub async fn post_ride_past_conflicts(
        &self,
        user: &str,
        key: &str,
        params: &Value,
        inject: Option<&str>,
    ) -> (u16, Value) {
        for _ in 0..60 {
            let answer = self.post_ride(Some(user), Some(key), params, inject).await;
            let conflict = answer.0 == 409
                && answer.1["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("conflicting request"));
            if !conflict {
                return answer;
            }
        }
        panic!("key {key}: only conflicts");
    }

    /// Sends the create asking it to fail after `point`: the key is then
    /// unlocked at `point`.
    pub async fn fail_at(
        &self,
        user: &str,
        key: &str,
        params: &Value,
        point: &str,
    ) -> (u16, Value) {
        self.post_ride_past_conflicts(user, key, params, Some(point))
            .await
    }

    /// `GET path` as `user`: status, body and the `Served-By` header.
    pub async fn get(&self, user: Option<&str>, path: &str) -> ((u16, Value), Option<String>) {
        let mut request = http().get(format!("{}{path}", self.api_url));
        if let Some(user) = user {
            request = request.header("Authorization", user);
        }
        answer(request).await
    }

    /// `POST path` with a JSON body as `user`.
    pub async fn post(&self, user: &str, path: &str, body: &Value) -> (u16, Value) {
        let request = http()
            .post(format!("{}{path}", self.api_url))
            .header("Authorization", user)
            .json(body);
        answer(request).await.0
    }
}

async fn answer(request: reqwest::RequestBuilder) -> ((u16, Value), Option<String>) {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => panic!(
            "the API did not answer within {REQUEST_TIMEOUT:?} ({e}); the primary's backends:\n{}",
            primary_backends().await
        ),
        Err(e) => panic!("the API answers: {e}"),
    };
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    ((status, body), served_by)
}

/// The longest any request of a test may take. A request normally takes
/// well under a second and, at the very worst (every pool wait and the
/// payment call timing out), about a minute: past this the test fails with
/// what the primary's backends are doing, instead of hanging CI.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

fn http() -> &'static reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("HTTP client")
    })
}

/// The primary's client backends, one line each: who is idle in a
/// transaction, waiting for what, after which statement.
async fn primary_backends() -> String {
    let rows = primary()
        .await
        .query(
            "SELECT pid, coalesce(application_name, ''), coalesce(state, ''),
                    coalesce(to_char(now() - state_change, 'HH24:MI:SS'), ''),
                    coalesce(wait_event_type || ':' || wait_event, ''),
                    left(coalesce(query, ''), 200)
               FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
              ORDER BY state_change",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                let pid: i32 = r.get(0);
                let (app, state, since, wait, query): (String, String, String, String, String) =
                    (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
                format!("  {pid} {app:?} {state} for {since} {wait} {query:?}\n")
            })
            .collect(),
        Err(e) => format!("  (pg_stat_activity: {e})\n"),
    }
}

fn bind() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

/// Serves `router` on a free port on the shared runtime; returns the port.
fn serve(router: axum::Router) -> u16 {
    let listener = bind();
    let port = listener.local_addr().expect("address").port();
    runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        axum::serve(listener, router).await.expect("serves");
    });
    port
}

/// A fresh idempotency key (32 hex characters).
pub fn new_key() -> String {
    (0..32)
        .map(|_| format!("{:x}", rand::random::<u8>() % 16))
        .collect()
}

/// Valid ride parameters, distinct per call.
pub fn ride_params() -> Value {
    let lat = rand::random::<f64>() * 100.0 - 50.0;
    let lon = rand::random::<f64>() * 300.0 - 150.0;
    json!({ "origin_lat": lat, "origin_lon": lon, "target_lat": lat + 0.01, "target_lon": lon - 0.02 })
}

/// A connection straight to the primary, for checking what is really stored.
pub async fn primary() -> Client {
    connect(env().cluster.primary_port(), APP_USER, APP_PASSWORD, APP_DB).await
}

/// A `Db` of the test's own, through causeway (for running jobs in-process).
pub fn db() -> Db {
    Db::new(&env().database_url, Causality::default()).expect("db")
}

/// A `Db` through causeway for another database (see [`fresh_database`]).
pub fn db_at(database_url: &str) -> Db {
    Db::new(database_url, Causality::default()).expect("db")
}

/// A database of the test's own on the shared cluster, migrated through
/// causeway and replicated: tests of the log compare totals with
/// `sum(distance) FROM rides`, which only means something when the rides
/// are theirs alone. Returns its `DATABASE_URL` (through causeway).
pub async fn fresh_database(prefix: &str) -> String {
    let name = format!("{prefix}_{}", &new_key()[..8]);
    primary()
        .await
        .batch_execute(&format!("CREATE DATABASE {name} OWNER {APP_USER}"))
        .await
        .expect("create database");
    let url = format!(
        "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{name}",
        env().proxy_port
    );
    let db = Db::new(&url, Causality::default()).expect("db");
    demo_app::migrate::migrate(db.shared())
        .await
        .expect("migrate the fresh database");
    tokio::task::spawn_blocking(|| env().cluster.wait_replicas_caught_up())
        .await
        .expect("replicas catch up");
    url
}

/// A connection straight to the primary's database behind `database_url`.
pub async fn primary_of(database_url: &str) -> Client {
    let name = database_url.rsplit('/').next().expect("database name");
    connect(env().cluster.primary_port(), APP_USER, APP_PASSWORD, name).await
}

/// `REDIS_URL` of the shared cluster.
pub fn redis_url() -> String {
    let port = env()
        .cluster
        .redis_port()
        .expect("the shared cluster has Redis");
    format!("redis://127.0.0.1:{port}")
}

/// A new user (the seeded ones are shared by every test): its email.
/// Inserted through causeway on a connection named for the user, so the
/// API's lookup of it (other connections) waits for a replica that has it.
pub async fn new_user(prefix: &str) -> String {
    let email = format!("{prefix}-{}@example.com", &new_key()[..8]);
    db().for_user(&email)
        .expect("user db")
        .get()
        .await
        .expect("connection")
        .execute(
            "INSERT INTO users (email, stripe_customer_id) VALUES ($1, 'cus_test')",
            &[&email],
        )
        .await
        .expect("insert user");
    email
}

/// What the database holds for `user`'s `key`.
#[derive(Debug)]
pub struct KeyState {
    pub id: i64,
    pub recovery_point: String,
    pub locked: bool,
    pub response_code: Option<i32>,
    pub rides: i64,
    pub charge_id: Option<String>,
}

pub async fn key_state(user: &str, key: &str) -> Option<KeyState> {
    let row = primary()
        .await
        .query_opt(
            "SELECT k.id, k.recovery_point, k.locked_at IS NOT NULL, k.response_code,
                    (SELECT count(*) FROM rides r WHERE r.idempotency_key_id = k.id),
                    (SELECT charge_id FROM rides r WHERE r.idempotency_key_id = k.id)
               FROM idempotency_keys k JOIN users u ON u.id = k.user_id
              WHERE u.email = $1 AND k.idempotency_key = $2",
            &[&user, &key],
        )
        .await
        .expect("key state");
    row.map(|row| KeyState {
        id: row.get(0),
        recovery_point: row.get(1),
        locked: row.get(2),
        response_code: row.get(3),
        rides: row.get(4),
        charge_id: row.get(5),
    })
}

/// The charges `ledger` made for the idempotency key with id `key_id`.
pub fn charges_for(ledger: &Ledger, key_id: i64) -> usize {
    let payment_key = demo_app::atomic::charge::payment_key(key_id);
    ledger
        .charges()
        .iter()
        .filter(|c| c.idempotency_key.as_deref() == Some(payment_key.as_str()))
        .count()
}
