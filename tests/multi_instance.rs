//! Several causeway instances behind HAProxy (TCP, round-robin) share one
//! causal view through Redis: a client id's write through one instance is
//! read through the next connection, which HAProxy sends to another, never
//! stale with replay paused; and when one instance is stopped under load,
//! clients reconnect through HAProxy to the other and still read their
//! writes. Needs `haproxy` (cluster/setup.sh installs it).

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use causeway::config::CausalScope;
use support::{ClusterOptions, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio_postgres::Client;

/// HAProxy in front of `backends`, TCP mode, round-robin, checking each
/// backend every 100 ms; killed when dropped.
struct HaProxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    fn start(backends: &[u16]) -> HaProxy {
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy is not installed: bash cluster/setup.sh test installs it");
        let dir = tempfile::tempdir().expect("dir");
        let port = support::free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!("    server causeway{i} 127.0.0.1:{p} check inter 100 fall 1 rise 1\n")
            })
            .collect();
        let config = format!(
            "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
             timeout client 60s\n    timeout server 60s\nfrontend postgres\n    \
             bind 127.0.0.1:{port}\n    default_backend causeway\nbackend causeway\n    \
             balance roundrobin\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("config");
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        support::wait_for("haproxy to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        HaProxy {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn instance(cluster: &TestCluster) -> TestProxy {
    let redis = cluster.redis_port().expect("a cluster with Redis");
    TestProxy::start_with(cluster, |c| {
        c.routing.causal_scope = CausalScope::ClientId;
        c.routing.causal_store = Some(format!("redis://127.0.0.1:{redis}/0"));
        c.proxy.shutdown_timeout_ms = 2_000;
    })
}

async fn client(port: u16, id: &str) -> Result<Client, tokio_postgres::Error> {
    let c = support::try_connect(port, APP_USER, APP_PASSWORD, APP_DB).await?;
    c.batch_execute(&format!("SET causeway.client_id = '{id}'"))
        .await?;
    Ok(c)
}

async fn write(c: &Client) -> Result<i64, tokio_postgres::Error> {
    c.query_one("INSERT INTO multi_notes DEFAULT VALUES RETURNING id", &[])
        .await
        .map(|r| r.get(0))
}

async fn seen(c: &Client, id: i64) -> Result<bool, tokio_postgres::Error> {
    c.query_one("SELECT count(*) = 1 FROM multi_notes WHERE id = $1", &[&id])
        .await
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_behind_haproxy_share_read_your_writes() {
    let cluster = TestCluster::start(ClusterOptions {
        with_redis: true,
        ..ClusterOptions::default()
    });
    cluster.psql_db(
        cluster.primary_port(),
        APP_DB,
        "CREATE TABLE multi_notes (id bigserial PRIMARY KEY)",
    );
    cluster.wait_replicas_caught_up();
    let (a, b) = (instance(&cluster), instance(&cluster));
    let haproxy = HaProxy::start(&[a.port, b.port]);

    // A new connection per write and per read: round-robin alternates the
    // instances. Replay is paused: only the shared store can keep the
    // reads fresh.
    {
        let _paused = cluster.pause_all_replay();
        let mut stale = 0;
        for _ in 0..300 {
            let writer = client(haproxy.port, "rr").await.expect("connect");
            let id = write(&writer).await.expect("write");
            let reader = client(haproxy.port, "rr").await.expect("connect");
            stale += usize::from(!seen(&reader, id).await.expect("read"));
        }
        assert_eq!(stale, 0, "stale reads across instances behind haproxy");
    }
    let (through_a, through_b) = (
        a.proxy.stats.clients_total.load(Ordering::Relaxed),
        b.proxy.stats.clients_total.load(Ordering::Relaxed),
    );
    assert!(
        through_a >= 200 && through_b >= 200,
        "round-robin: {through_a} clients through a, {through_b} through b"
    );

    // One instance stops under load: clients reconnect through haproxy to
    // the other, and their reads still see their writes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for n in 0..4 {
        let (port, stop) = (haproxy.port, stop.clone());
        workers.push(tokio::spawn(async move {
            let id = format!("worker{n}");
            let (mut cycles, mut stale, mut reconnects) = (0u32, 0u32, 0u32);
            let mut c = client(port, &id).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let outcome = async {
                    let row = write(&c).await?;
                    seen(&c, row).await
                }
                .await;
                match outcome {
                    Ok(saw) => {
                        cycles += 1;
                        stale += u32::from(!saw);
                    }
                    Err(_) => {
                        // The instance went away: a new connection, which
                        // haproxy sends to the one left.
                        reconnects += 1;
                        loop {
                            match client(port, &id).await {
                                Ok(new) => {
                                    c = new;
                                    break;
                                }
                                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                    }
                }
            }
            (cycles, stale, reconnects)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(move || a.stop())
        .await
        .expect("stop instance a");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut cycles, mut stale, mut reconnects) = (0, 0, 0);
    for w in workers {
        let (c, s, r) = w.await.expect("worker");
        cycles += c;
        stale += s;
        reconnects += r;
    }
    eprintln!(
        "instance stopped under load: {cycles} cycles, {reconnects} reconnects, {stale} stale"
    );
    assert_eq!(stale, 0);
    assert!(cycles > 0);
    drop(haproxy);
    b.stop();
}
