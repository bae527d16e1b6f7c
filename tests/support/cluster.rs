//! `TestCluster`: start, control and tear down a primary, its streaming
//! replicas and (optionally) Redis, all on free loopback ports in one temp dir.
//!
//! Start-up is initdb, start the primary, create the roles, then for every
//! replica *in parallel* `pg_basebackup -R -X stream` + start, then wait until
//! the primary reports each one `streaming`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::ports::free_port;
use super::redis::RedisServer;
use super::server::{
    base_backup, is_running, pg_ctl_start, start_with_free_port, tail, write_file, write_settings,
    PgServer, ServerSettings, PG_HBA,
};
use super::tools::{run, Tools};
use super::wait::try_wait_for;
use super::watchdog;

/// How long any single wait of the fixture may take before it panics.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What kind of cluster [`TestCluster::start`] builds.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Streaming replicas, named `replica0`, `replica1`, ...
    pub replicas: usize,
    /// Also run a Redis (needs `redis-server`).
    pub with_redis: bool,
    /// Extra `postgresql.conf` lines for every server, e.g. `"max_connections = 50"`.
    pub extra_config: Vec<String>,
    /// `ssl = on` with this certificate and key (PEM files, copied into
    /// the cluster), and TLS-only logins (`hostssl`) for everybody but the
    /// fixture's superuser.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replicas: 2,
            with_redis: false,
            extra_config: Vec::new(),
            tls: None,
        }
    }
}

/// A running primary + streaming replicas (+ Redis). See the module docs of
/// `support` for when to share one and when to start your own.
pub struct TestCluster {
    dir: PathBuf,
    settings: ServerSettings,
    primary: PgServer,
    replicas: Vec<PgServer>,
    redis: Option<RedisServer>,
    watchdog: Mutex<Option<Child>>,
    startup_time: Duration,
}

impl TestCluster {
    /// The cluster of this test binary (2 replicas + Redis), started by the
    /// first test that asks; every other test waits for it and gets the same.
    /// Never dropped: the watchdog removes it when the process exits.
    ///
    /// Tests share it, so a test that pauses replay or stops a server should
    /// either undo it quickly or use its own [`TestCluster::start`].
    pub fn shared() -> &'static TestCluster {
        static SHARED: OnceLock<TestCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            TestCluster::start(ClusterOptions {
                with_redis: true,
                ..ClusterOptions::default()
            })
        })
    }

    /// Starts a cluster of one's own; dropping it stops and deletes it at once.
    /// Blocks (a few seconds): call it before entering an async runtime, or
    /// accept that it blocks the runtime's thread meanwhile.
    pub fn start(options: ClusterOptions) -> TestCluster {
        let started = Instant::now();
        let tools = Tools::get();
        let dir = tempfile::Builder::new()
            .prefix("causeway-cluster-")
            .tempdir_in(tools.cluster_parent_dir())
            .unwrap_or_else(|e| panic!("cannot create a temp dir for the test cluster: {e}"))
            .keep();
        // From here on a panic drops `cluster`, which stops whatever started.
        let watchdog = watchdog::spawn(tools, &dir);
        let socket_dir = dir.join("sock");
        let server = |name: String| PgServer {
            port: free_port(),
            data_dir: dir.join(&name),
            log: dir.join("logs").join(format!("{name}.log")),
            name,
        };
        let mut extra_config = options.extra_config.clone();
        if let Some((cert, key)) = &options.tls {
            extra_config.extend(tls_files(tools, &dir, cert, key));
        }
        let mut cluster = TestCluster {
            settings: ServerSettings {
                // A Unix socket path over 107 bytes stops the server: then TCP only.
                socket_dir: (socket_dir.as_os_str().len() + 20 <= 107).then_some(socket_dir),
                extra_config,
            },
            primary: server("primary".to_string()),
            replicas: (0..options.replicas)
                .map(|i| server(format!("replica{i}")))
                .collect(),
            redis: options
                .with_redis
                .then(|| RedisServer::new(dir.join("redis"), free_port())),
            watchdog: Mutex::new(Some(watchdog)),
            startup_time: Duration::ZERO,
            dir,
        };
        cluster.boot(tools);
        cluster.startup_time = started.elapsed();
        eprintln!(
            "test cluster started in {:.2?}: primary {}, replicas {:?}, redis {:?}, dir {}",
            cluster.startup_time,
            cluster.primary.port,
            cluster.replica_ports(),
            cluster.redis_port(),
            cluster.dir.display()
        );
        cluster
    }

    fn boot(&mut self, tools: &Tools) {
        tools.make_ancestors_traversable(&self.dir);
        for sub in [self.dir.join("logs"), self.dir.join("sock")] {
            fs::create_dir(&sub).unwrap_or_else(|e| panic!("mkdir {}: {e}", sub.display()));
            tools.give_to_server_user(&sub);
        }
        tools.give_to_server_user(&self.dir);
        if let Some(redis) = &self.redis {
            redis.spawn(); // starts in the background while Postgres boots
        }

        let primary = &self.primary;
        run(
            tools
                .server_command("initdb", &self.dir)
                .arg("-D")
                .arg(&primary.data_dir)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]),
            "initdb of the primary",
        );
        let hba = if self.settings.extra_config.iter().any(|l| l == "ssl = on") {
            PG_HBA.replace("host    all          all", "hostssl all          all")
        } else {
            PG_HBA.to_string()
        };
        write_file(tools, &primary.data_dir.join("pg_hba.conf"), &hba);
        let conf = primary.data_dir.join("postgresql.conf");
        let mut text =
            fs::read_to_string(&conf).unwrap_or_else(|e| panic!("read {}: {e}", conf.display()));
        text.push_str("\ninclude_if_exists = 'causeway.conf'\n");
        write_file(tools, &conf, &text);
        start_with_free_port(tools, &self.settings, &mut self.primary, &self.dir);

        self.psql_statements(
            self.primary.port,
            "postgres",
            &[
                "CREATE ROLE app LOGIN SUPERUSER PASSWORD 'app'",
                "CREATE DATABASE app OWNER app",
                "CREATE ROLE md5user LOGIN SUPERUSER",
                "SET password_encryption = 'md5'",
                "ALTER ROLE md5user PASSWORD 'md5pass'",
            ],
        );
        // The replicas' slots exist, and hold WAL, before any clone starts:
        // with `pg_basebackup -C` each slot would only be made after that
        // clone's checkpoint, and the other clone's checkpoint could recycle
        // the WAL segment the first one still has to stream.
        for replica in &self.replicas {
            self.psql(
                self.primary.port,
                &format!(
                    "SELECT pg_create_physical_replication_slot('{}', true)",
                    replica.name
                ),
            );
        }

        // Clone and start the replicas in parallel: each is mostly waiting
        // (checkpoint, WAL streaming, startup), so two cores are plenty.
        let primary_port = self.primary.port;
        let (settings, dir) = (&self.settings, &self.dir);
        thread::scope(|scope| {
            let clones: Vec<_> = self
                .replicas
                .iter_mut()
                .map(|replica| {
                    scope.spawn(move || {
                        base_backup(tools, dir, primary_port, replica);
                        start_with_free_port(tools, settings, replica, dir);
                    })
                })
                .collect();
            for clone in clones {
                clone
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            }
        });
        let names: Vec<String> = self.replicas.iter().map(|r| r.name.clone()).collect();
        self.wait_streaming(&names);

        if let Some(redis) = &self.redis {
            redis.wait_ready(WAIT_TIMEOUT);
        }
    }

    /// The temp directory holding data directories, `logs/`, `sock/`, `redis/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`TestCluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    pub fn replica_ports(&self) -> Vec<u16> {
        self.replicas.iter().map(|r| r.port).collect()
    }

    pub fn replica_port(&self, i: usize) -> u16 {
        self.replica(i).port
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    pub fn redis_port(&self) -> Option<u16> {
        self.redis.as_ref().map(|r| r.port)
    }

    /// Directory of the Unix sockets (`None` when the path would be too long).
    pub fn socket_dir(&self) -> Option<&Path> {
        self.settings.socket_dir.as_deref()
    }

    /// `primary`, `replica0`, `replica1`, ...
    pub fn server_names(&self) -> Vec<String> {
        self.servers().map(|s| s.name.clone()).collect()
    }

    /// The server called `name` (`primary`, `replicaN`); panics naming the
    /// servers that exist.
    pub fn server(&self, name: &str) -> &PgServer {
        self.servers().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no server {name:?} in this cluster (servers: {:?})",
                self.server_names()
            )
        })
    }

    pub fn port_of(&self, name: &str) -> u16 {
        self.server(name).port
    }

    /// The server's log so far (for assertions or a failure message).
    pub fn server_log(&self, name: &str) -> String {
        let log = &self.server(name).log;
        fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()))
    }

    /// Stops one server (`primary`, `replicaN` with `pg_ctl -m fast`, or `redis`).
    pub fn stop_server(&self, name: &str) {
        if name == "redis" {
            return self.redis().stop();
        }
        self.pg_ctl(
            name,
            &["-m", "fast", "-w", "-t", "60", "-s", "stop"],
            "stopping",
        );
    }

    /// Runs `pg_ctl -D <name's data dir> args`, panicking with its output.
    fn pg_ctl(&self, name: &str, args: &[&str], doing: &str) {
        let server = self.server(name);
        run(
            Tools::get()
                .server_command("pg_ctl", &self.dir)
                .arg("-D")
                .arg(&server.data_dir)
                .args(args),
            &format!("{doing} {name}"),
        );
    }

    /// Promotes a replica (`pg_ctl promote`, waiting until it is out of
    /// recovery): it becomes a primary on a new timeline.
    pub fn promote(&self, name: &str) {
        self.pg_ctl(name, &["-w", "-t", "60", "-s", "promote"], "promoting");
    }

    /// Starts a stopped server again and waits until it is useful: a replica
    /// until it streams, the primary until every running replica streams again.
    pub fn start_server(&self, name: &str) {
        if name == "redis" {
            let redis = self.redis();
            redis.spawn();
            return redis.wait_ready(WAIT_TIMEOUT);
        }
        let tools = Tools::get();
        let server = self.server(name);
        if let Err(e) = pg_ctl_start(tools, server, &self.dir) {
            panic!("starting {name}: {e}");
        }
        let waiting_for: Vec<String> = if name == "primary" {
            self.replicas
                .iter()
                .filter(|r| is_running(tools, r, &self.dir))
                .map(|r| r.name.clone())
                .collect()
        } else {
            vec![name.to_string()]
        };
        self.wait_streaming(&waiting_for);
    }

    /// Makes the stopped server `name` a standby of `primary` (a fresh
    /// base backup from it, with a slot made there), and starts it: what a
    /// cluster manager does with an old primary after a failover.
    pub fn reclone_as_standby(&self, name: &str, primary: &str) {
        let server = self.server(name);
        self.psql(
            self.port_of(primary),
            &format!("SELECT pg_create_physical_replication_slot('{name}')"),
        );
        fs::remove_dir_all(&server.data_dir)
            .unwrap_or_else(|e| panic!("remove {}: {e}", server.data_dir.display()));
        let tools = Tools::get();
        base_backup(tools, &self.dir, self.port_of(primary), server);
        // The backup copied the other server's settings file; this one's
        // own port and name go back in.
        write_settings(tools, &self.settings, server);
        self.start_server_alone(name);
    }

    /// Starts a stopped server without waiting for it to stream (its
    /// primary may be gone): `pg_ctl start -w` only waits for it to accept
    /// connections.
    pub fn start_server_alone(&self, name: &str) {
        if let Err(e) = pg_ctl_start(Tools::get(), self.server(name), &self.dir) {
            panic!("starting {name}: {e}");
        }
    }

    /// Points the stopped replica `name` at the server `primary` (after a
    /// promotion), with no replication slot (the new primary has none for
    /// it). Takes effect when it starts.
    pub fn repoint_replica(&self, name: &str, primary: &str) {
        let auto = self.server(name).data_dir.join("postgresql.auto.conf");
        let mut text =
            fs::read_to_string(&auto).unwrap_or_else(|e| panic!("read {}: {e}", auto.display()));
        text.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={name}'\nprimary_slot_name = ''\n",
            self.port_of(primary)
        ));
        write_file(Tools::get(), &auto, &text);
    }

    /// Whether the server's postmaster is running (`pg_ctl status`).
    pub fn is_running(&self, name: &str) -> bool {
        is_running(Tools::get(), self.server(name), &self.dir)
    }

    pub(crate) fn replica(&self, i: usize) -> &PgServer {
        self.replicas.get(i).unwrap_or_else(|| {
            panic!(
                "no replica {i}: this cluster has {} replicas",
                self.replicas.len()
            )
        })
    }

    fn redis(&self) -> &RedisServer {
        self.redis
            .as_ref()
            .unwrap_or_else(|| panic!("this cluster has no Redis (ClusterOptions::with_redis)"))
    }

    fn servers(&self) -> impl Iterator<Item = &PgServer> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// Waits until the primary lists each of `names` as `streaming`.
    pub(crate) fn wait_streaming(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let what = format!("{names:?} streaming from the primary");
        let check = || {
            let rows = self.try_psql(
                self.primary.port,
                "postgres",
                "SELECT application_name || '=' || state FROM pg_stat_replication",
            )?;
            let streaming: Vec<&str> = rows
                .lines()
                .filter_map(|row| row.strip_suffix("=streaming"))
                .collect();
            if names.iter().all(|n| streaming.contains(&n.as_str())) {
                Ok(())
            } else {
                Err(format!("pg_stat_replication: {rows:?}"))
            }
        };
        if let Err(message) = try_wait_for(&what, WAIT_TIMEOUT, check) {
            let logs: String = names
                .iter()
                .map(|n| format!("\n--- {n} log ---\n{}", tail(&self.server_log(n), 20)))
                .collect();
            panic!("{message}{logs}");
        }
    }
}

impl Drop for TestCluster {
    /// Stops every server at once (`-m immediate`: the data is thrown away),
    /// kills Redis, deletes the directory and dismisses the watchdog. Never
    /// panics: it may run while a failed test unwinds.
    fn drop(&mut self) {
        let tools = Tools::get();
        let stops: Vec<Child> = self
            .servers()
            .filter(|s| s.data_dir.join("postmaster.pid").exists())
            .filter_map(|s| {
                tools
                    .server_command("pg_ctl", &self.dir)
                    .arg("-D")
                    .arg(&s.data_dir)
                    .args(["-m", "immediate", "-w", "-t", "30", "-s", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut stop in stops {
            let _ = stop.wait();
        }
        if let Some(redis) = &self.redis {
            redis.stop();
        }
        let _ = fs::remove_dir_all(&self.dir);
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut watchdog) = watchdog {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Copies a server certificate and key into the cluster directory, owned
/// by the servers' user with the key readable by it alone (Postgres
/// refuses a key others can read); the settings that use them.
fn tls_files(tools: &Tools, dir: &Path, cert: &Path, key: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let (cert_copy, key_copy) = (dir.join("server.crt"), dir.join("server.key"));
    for (from, to) in [(cert, &cert_copy), (key, &key_copy)] {
        fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        tools.give_to_server_user(to);
    }
    fs::set_permissions(&key_copy, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", key_copy.display()));
    vec![
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{}'", cert_copy.display()),
        format!("ssl_key_file = '{}'", key_copy.display()),
    ]
}
