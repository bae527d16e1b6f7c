//! One Postgres server of a test cluster: its settings file, starting it
//! (dodging the free-port race), cloning a replica from the primary.
//!
//! Every server gets the same settings from `causeway.conf` in its data
//! directory (included at the end of `postgresql.conf`, and copied by
//! `pg_basebackup`), so a replica only has to rewrite its port and name.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::ports::free_port;
use super::tools::{run, try_run, Tools};

/// pg_hba.conf of every server: the superuser is trusted on loopback and the
/// socket (fixture and replication); `md5user` must log in with md5 (so the
/// proxy's md5 login to a server is testable); everybody else with SCRAM.
pub const PG_HBA: &str = "\
# Written by tests/support (causeway test cluster).
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          postgres                 trust
local   replication  postgres                 trust
host    all          postgres  127.0.0.1/32   trust
host    replication  postgres  127.0.0.1/32   trust
host    all          md5user   127.0.0.1/32   md5
local   all          all                      scram-sha-256
host    all          all       127.0.0.1/32   scram-sha-256
";

/// One Postgres server of the cluster.
#[derive(Clone, Debug)]
pub struct PgServer {
    /// `primary`, `replica0`, ...: also its `cluster_name`, so its processes
    /// show up in `ps` as `postgres: replica0: ...`, and its
    /// `application_name` in the primary's `pg_stat_replication`.
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// Settings shared by every server of one cluster.
pub struct ServerSettings {
    pub socket_dir: Option<PathBuf>,
    pub extra_config: Vec<String>,
}

/// Writes `causeway.conf` for `server`: the settings every server shares plus
/// its own name and port.
pub fn write_settings(tools: &Tools, settings: &ServerSettings, server: &PgServer) {
    let sockets = settings
        .socket_dir
        .as_ref()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut conf = format!(
        "# Written by tests/support for server '{name}'.
cluster_name = '{name}'
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
max_connections = 200
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
wal_level = logical
hot_standby = on
hot_standby_feedback = on
max_wal_senders = 10
max_replication_slots = 10
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 100ms
# Throwaway test data: no fsync (much faster); commits still wait for the
# local WAL write, so a committed row is in the WAL the replicas receive.
fsync = off
synchronous_commit = on
log_line_prefix = '%m [%p] %q%u@%d '
",
        name = server.name,
        port = server.port,
    );
    for line in &settings.extra_config {
        conf.push_str(line);
        conf.push('\n');
    }
    write_file(tools, &server.data_dir.join("causeway.conf"), &conf);
}

/// Starts a server; when its port was taken meanwhile (the free-port race),
/// moves it to another free port and tries again.
pub fn start_with_free_port(
    tools: &Tools,
    settings: &ServerSettings,
    server: &mut PgServer,
    dir: &Path,
) {
    for attempt in 1.. {
        write_settings(tools, settings, server);
        let log_before = fs::metadata(&server.log).map(|m| m.len()).unwrap_or(0);
        let Err(error) = pg_ctl_start(tools, server, dir) else {
            return;
        };
        let log = fs::read(&server.log).unwrap_or_default();
        let new_log = String::from_utf8_lossy(&log[(log_before as usize).min(log.len())..]);
        if attempt < 4 && new_log.contains("could not bind") {
            server.port = free_port();
            continue;
        }
        panic!("starting {}: {error}", server.name);
    }
}

/// `pg_ctl start -w`; the error carries the tail of the server log.
pub fn pg_ctl_start(tools: &Tools, server: &PgServer, dir: &Path) -> Result<(), String> {
    let mut cmd = tools.server_command("pg_ctl", dir);
    cmd.arg("-D")
        .arg(&server.data_dir)
        .arg("-l")
        .arg(&server.log)
        .args(["-w", "-t", "60", "-s", "start"])
        // Own process group: a Ctrl-C of `cargo test` is the watchdog's to handle.
        .process_group(0);
    try_run(&mut cmd).map(drop).map_err(|e| {
        let log = fs::read_to_string(&server.log).unwrap_or_default();
        format!(
            "{e}\n--- {} (port {}) log ---\n{}",
            server.name,
            server.port,
            tail(&log, 30)
        )
    })
}

/// Clones the primary into the replica's data directory, ready to stream:
/// `-R` writes standby.signal + primary_conninfo (with the slot named by
/// `-S`, made beforehand), so the primary keeps WAL for a replica that is
/// stopped or slow.
pub fn base_backup(tools: &Tools, dir: &Path, primary_port: u16, replica: &PgServer) {
    run(
        tools
            .server_command("pg_basebackup", dir)
            .arg("-D")
            .arg(&replica.data_dir)
            .arg("-d")
            .arg(format!("host=127.0.0.1 port={primary_port} user=postgres"))
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .args(["-S", &replica.name]),
        &format!("pg_basebackup for {}", replica.name),
    );
}

pub fn is_running(tools: &Tools, server: &PgServer, dir: &Path) -> bool {
    try_run(
        tools
            .server_command("pg_ctl", dir)
            .arg("-D")
            .arg(&server.data_dir)
            .arg("status"),
    )
    .is_ok()
}

/// Writes a file the servers read, owned by their user.
pub fn write_file(tools: &Tools, path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    tools.give_to_server_user(path);
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
