//! tokio-postgres clients for tests: log in like an application would (with a
//! password, over TCP) to a server or to the proxy under test.

use tokio_postgres::{Client, Config, NoTls};

/// Connects and spawns the connection task on the current tokio runtime;
/// panics with the server's error (SQLSTATE and message) when login fails.
pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> Client {
    try_connect(port, user, password, db)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect to 127.0.0.1:{port} as {user} db {db}: {}",
                describe_error(&e)
            )
        })
}

/// Connects as the application role to database `db`, with startup
/// `options` (`-c name=value ...`) if given, as a driver configured with
/// them would; panics with the server's error when login fails.
pub async fn connect_app(port: u16, db: &str, options: Option<&str>) -> Client {
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(super::APP_USER)
        .password(super::APP_PASSWORD)
        .dbname(db)
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(options) = options {
        config.options(options);
    }
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        panic!(
            "connect to 127.0.0.1:{port} db {db}: {}",
            describe_error(&e)
        )
    });
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection to port {port} ended: {}", describe_error(&e));
        }
    });
    client
}

/// Runs pgbench against `port` as the application role on its database
/// with `args`; panics unless it succeeds, and returns stdout + stderr.
pub fn pgbench(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-U", super::APP_USER, "-p"])
        .arg(port.to_string())
        .args(args)
        .arg(super::APP_DB)
        .env("PGPASSWORD", super::APP_PASSWORD)
        .output()
        .expect("pgbench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// [`connect`] that returns the error, for tests that expect a refusal
/// (see [`describe_error`] and `Error::code()`).
pub async fn try_connect(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection to port {port} ended: {}", describe_error(&e));
        }
    });
    Ok(client)
}

/// `SQLSTATE: message` for a server error, else the error and its causes
/// (tokio-postgres' own Display says only "db error").
pub fn describe_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
