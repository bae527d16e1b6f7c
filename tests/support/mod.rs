//! Test support: a real, throwaway PostgreSQL cluster for integration tests.
//!
//! [`TestCluster`] runs a primary and streaming replicas (`pg_basebackup -R
//! -X stream`, one physical slot each), and Redis when asked, on free
//! loopback ports in a fresh temp directory. Tests talk to the servers
//! directly with [`TestCluster::psql`] or [`connect`], and point the proxy
//! under test at [`TestCluster::primary_port`] / [`TestCluster::replica_ports`].
//!
//! # Shared or own
//! Starting a cluster costs a few seconds (initdb dominates), so a test binary
//! normally uses one, [`TestCluster::shared`]: started by whichever test gets
//! there first (`OnceLock`; the others block until it is up), then used by
//! every test in parallel. Tests on it should work in their own tables. A test
//! that breaks the cluster on purpose (stops a server, leaves replay paused)
//! starts its own with [`TestCluster::start`]; dropping it stops everything
//! and removes its directory at once.
//!
//! # Teardown: the watchdog
//! The shared cluster lives in a `static`, and Rust never drops statics; a
//! test process can also die without unwinding (`kill -9`, a CI timeout,
//! Ctrl-C). So each cluster spawns a watchdog, a detached `sh` loop that
//! polls `kill -0 <test pid>` every 0.5 s and, once the test process is
//! gone, stops the servers with `pg_ctl stop -m immediate`, kills Redis and
//! deletes the directory. Nothing is left running after `cargo test`, however
//! it ends.
//!
//! # Users
//! Postgres refuses to run as root; as root the servers run as the `postgres`
//! user (created if missing) via `runuser`, and the temp dir is handed to it.
//! Roles on every cluster (see `server.rs` for pg_hba.conf):
//! - `postgres`: superuser, trusted on 127.0.0.1 and the Unix socket;
//! - `app` / `app`: LOGIN SUPERUSER, owns database `app`, SCRAM-SHA-256;
//! - `md5user` / `md5pass`: LOGIN SUPERUSER, password stored and checked as
//!   md5, for testing the proxy's md5 login to a server.
//!
//! Each test binary uses a subset of this module, hence the `allow`s.
#![allow(dead_code)]
#![allow(unused_imports)]

mod client;
mod cluster;
mod lsn;
mod ports;
mod proxy;
mod psql;
pub mod raw;
mod redis;
mod replication;
mod server;
mod tools;
mod wait;
mod watchdog;

pub use client::{connect, connect_app, describe_error, finish_load, pgbench, try_connect};
pub use cluster::{ClusterOptions, TestCluster, WAIT_TIMEOUT};
pub use lsn::Lsn;
pub use ports::free_port;
pub use proxy::{config_text, TestProxy};
pub use redis::redis_ping;
pub use replication::PausedReplay;
pub use server::PgServer;
pub use wait::wait_for;

/// The application role every cluster has (SCRAM-SHA-256).
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app";
/// The database owned by [`APP_USER`].
pub const APP_DB: &str = "app";
/// A role whose password is stored and checked as md5.
pub const MD5_USER: &str = "md5user";
pub const MD5_PASSWORD: &str = "md5pass";
