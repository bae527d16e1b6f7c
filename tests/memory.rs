//! Memory given back: once many clients have left, the proxy's resident
//! memory falls back near where it started (`src/memory.rs`), instead of
//! staying at its high-water mark until the process ends.
//!
//! The real `causeway` binary, spawned with a generated config in front of
//! a cluster of its own, so its resident memory is its own; 2,000 clients
//! connect, each runs a statement, all leave.

mod support;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    free_port, try_connect, ClusterOptions, TestCluster, APP_DB, APP_PASSWORD, APP_USER,
};

/// Enough that their buffers are tens of MB, and more than the 1,000 that
/// must leave before the proxy gives memory back.
const CLIENTS: usize = 2_000;

/// The spawned proxy, killed when the test ends however it ends.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Each client holds a socket here and one in the proxy, which inherits
/// this limit: raised to the hard limit, as a shell's `ulimit -n` would.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct given, nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    assert!(ok, "getrlimit(RLIMIT_NOFILE) failed");
    let needed = (CLIENTS + 200) as libc::rlim_t;
    assert!(
        limit.rlim_max >= needed,
        "this test needs {needed} open files per process; the hard limit is {}",
        limit.rlim_max
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    assert!(ok, "setrlimit(RLIMIT_NOFILE) failed");
}

#[test]
fn memory_of_departed_clients_goes_back_to_the_system() {
    raise_open_files_limit();
    let cluster = TestCluster::start(ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = format!(
        r#"
replicas = []

[proxy]
listen = "127.0.0.1:{port}"
max_client_connections = {max}

[auth]
method = "trust"

[primary]
name = "primary"
port = {primary}

[routing]
monitor_user = "postgres"

[metrics]
enabled = false

[[users]]
name = "{APP_USER}"
password = "{APP_PASSWORD}"
"#,
        max = CLIENTS + 100,
        primary = cluster.primary_port(),
    );
    let config_path = dir.path().join("proxy.toml");
    fs::write(&config_path, config).expect("write proxy.toml");
    let log_path = dir.path().join("causeway.log");
    let log = fs::File::create(&log_path).expect("log file");
    let proxy = Spawned(
        Command::new(env!("CARGO_BIN_EXE_causeway"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start causeway"),
    );
    let pid = proxy.0.id();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            match try_connect(port, APP_USER, APP_PASSWORD, APP_DB).await {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("causeway did not accept a client in 30 s: {e}"),
            }
        };
        first.simple_query("SELECT 1").await.expect("first client");
        let before = rss_kib(pid);

        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS / 100 {
            let batch = (0..100).map(|_| async {
                let client = try_connect(port, APP_USER, APP_PASSWORD, APP_DB)
                    .await
                    .expect("connect");
                client.simple_query("SELECT 1").await.expect("SELECT 1");
                client
            });
            clients.extend(futures_util::future::join_all(batch).await);
        }
        let during = rss_kib(pid);
        let grown = during.saturating_sub(before);
        assert!(
            grown > 10 * 1024,
            "{CLIENTS} clients should take more than 10 MB: {before} KiB before, {during} KiB with them"
        );

        drop(clients);
        // The proxy looks every 5 s; half of the growth back is the mark.
        let mark = before + grown / 2;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut now = rss_kib(pid);
        while now > mark && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            now = rss_kib(pid);
        }
        assert!(
            now <= mark,
            "30 s after {CLIENTS} clients left, causeway still holds {now} KiB \
             ({before} KiB before them, {during} KiB with them); its log:\n{}",
            fs::read_to_string(&log_path).unwrap_or_default()
        );
        first.simple_query("SELECT 1").await.expect("a client that stayed");
    });
}
