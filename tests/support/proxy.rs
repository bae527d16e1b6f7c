//! The proxy under test, run in-process on its own runtime and thread so it
//! outlives any one test's runtime, listening on a free port, pointed at a
//! [`TestCluster`].

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use causeway::config::Config;
use causeway::server::{self, Proxy};
use tokio::sync::watch;

use super::cluster::TestCluster;

/// A running causeway; stops when dropped.
pub struct TestProxy {
    pub port: u16,
    pub proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The config text for a cluster: users `app` (SCRAM), `md5user` (md5) and
/// `trusted` (trust, logs in to servers as `postgres`).
pub fn config_text(cluster: &TestCluster) -> String {
    let mut text = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
shutdown_timeout_ms = 2000

[primary]
name = "primary"
port = {primary}

[auth]
admin_users = ["app"]

[routing]
monitor_user = "postgres"
max_wait_ms = 200

[[users]]
name = "app"
password = "app"

[[users]]
name = "md5user"
password = "md5pass"
auth = "md5"

[[users]]
name = "trusted"
auth = "trust"
server_user = "postgres"
"#,
        primary = cluster.primary_port()
    );
    for (i, port) in cluster.replica_ports().iter().enumerate() {
        text.push_str(&format!(
            "\n[[replicas]]\nname = \"replica{i}\"\nport = {port}\n"
        ));
    }
    text
}

impl TestProxy {
    /// Starts a proxy for `cluster` with the default test config.
    pub fn start(cluster: &TestCluster) -> TestProxy {
        Self::start_with(cluster, |_| {})
    }

    /// Starts a proxy with the test config changed by `tweak`, and waits
    /// until its monitor has seen every replica healthy.
    pub fn start_with(cluster: &TestCluster, tweak: impl FnOnce(&mut Config)) -> TestProxy {
        let proxy = Self::start_unready(cluster, tweak);
        proxy.wait_healthy(Duration::from_secs(15));
        proxy
    }

    /// Waits until the proxy's monitor sees the primary and every replica
    /// healthy; panics after `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) {
        let started = Instant::now();
        let expect_replicas = self.proxy.config.replicas.len();
        loop {
            let positions = self.proxy.monitor.positions();
            let healthy = positions.replicas.iter().filter(|r| r.healthy).count();
            if positions.primary_healthy && healthy >= expect_replicas {
                return;
            }
            if started.elapsed() > timeout {
                panic!("proxy monitor never saw the servers healthy: {positions:?}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts a proxy with the test config changed by `tweak`, without
    /// waiting for its monitor (the servers may be out of its reach).
    pub fn start_unready(cluster: &TestCluster, tweak: impl FnOnce(&mut Config)) -> TestProxy {
        let mut config = Config::parse(&config_text(cluster), "test config")
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        tweak(&mut config);
        let proxy = Arc::new(Proxy::new(config));
        let (stop, stop_rx) = watch::channel(false);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let running = proxy.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind proxy");
                let port = listener.local_addr().expect("proxy address").port();
                running.start_monitor();
                let _ = port_tx.send(port);
                server::serve(server::ProxyHandle::new(running, None), listener, stop_rx).await;
            });
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy did not start");
        TestProxy {
            port,
            proxy,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the proxy and waits for it to finish draining.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
