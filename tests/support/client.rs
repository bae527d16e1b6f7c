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
    use std::io::Read;
    // A run that outlives its `-T` by two minutes (ten without `-T`) is
    // killed: a session that stops answering fails its test instead of
    // hanging the suite.
    let limit = std::time::Duration::from_secs(
        args.windows(2)
            .find(|w| w[0] == "-T")
            .and_then(|w| w[1].parse::<u64>().ok())
            .map_or(600, |seconds| seconds + 120),
    );
    let mut child = std::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-U", super::APP_USER, "-p"])
        .arg(port.to_string())
        .args(args)
        .arg(super::APP_DB)
        .env("PGPASSWORD", super::APP_PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pgbench runs");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < limit => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = format!(
        "{}{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    let Some(status) = status else {
        panic!("pgbench {args:?} did not finish within {limit:?}; killed:\n{text}");
    };
    assert!(status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// The output of a pgbench run on `load`, started through the proxy
/// whose console `console` is: if it is still running 60 s after this is
/// called (its `-T` is shorter), a client is stuck, and the test fails
/// with what `SHOW CLIENTS` and `SHOW SERVERS` say each was doing.
pub async fn finish_load(load: std::thread::JoinHandle<String>, console: &Client) -> String {
    let started = std::time::Instant::now();
    while !load.is_finished() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let mut seen = String::new();
            for show in ["SHOW CLIENTS", "SHOW SERVERS"] {
                for message in console.simple_query(show).await.unwrap_or_default() {
                    if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                        let values: Vec<_> = (0..row.len()).map(|i| row.get(i)).collect();
                        seen.push_str(&format!("{values:?}\n"));
                    }
                }
            }
            panic!("pgbench still runs after 60 s more:\n{seen}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    load.join().expect("pgbench thread")
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
