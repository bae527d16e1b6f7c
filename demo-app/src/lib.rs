//! causeway's demo app: Rocket Rides with read-your-writes, Stripe-style
//! idempotency keys, a unified log and change-data capture, every query
//! through causeway (SPEC §2).
//!
//! The binary (`main.rs`) is a set of subcommands; everything they run lives
//! here so the integration tests can run it in-process:
//! - [`migrate`]: schema and seed users;
//! - [`api`]: the rides API, whose `POST /rides` is [`atomic`];
//! - [`payments`]: the fake payment service and its client;
//! - [`jobs`]: enqueuer, completer, reaper;
//! - [`log`]: staged log records, the streamer and the consumers;
//! - [`cdc`]: change-data capture from a logical replication slot;
//! - [`diagnose`]: what is missing, and how to fix it;
//! - [`simulate`]: traffic, and the count of stale reads;
//! - [`status`]: the simulator's status line, every few seconds;
//! - [`all`]: every process in one terminal;
//! - [`db`]: how connections are opened, and why read-your-writes needs no
//!   bookkeeping in the app.

pub mod all;
pub mod api;
pub mod atomic;
pub mod backoff;
pub mod cdc;
pub mod db;
pub mod diagnose;
pub mod error;
pub mod jobs;
pub mod log;
pub mod migrate;
pub mod params;
pub mod payments;
pub mod redis_client;
pub mod response;
pub mod rides;
pub mod servers;
pub mod shutdown;
pub mod simulate;
pub mod status;
pub mod users;
