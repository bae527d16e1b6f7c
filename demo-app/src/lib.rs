//! causeway's demo app: Rocket Rides with read-your-writes and Stripe-style
//! idempotency keys, every query through causeway (SPEC §2).
//!
//! The binary (`main.rs`) is a set of subcommands; everything they run lives
//! here so the integration tests can run it in-process:
//! - [`migrate`]: schema and seed users;
//! - [`api`]: the rides API, whose `POST /rides` is [`atomic`];
//! - [`payments`]: the fake payment service and its client;
//! - [`jobs`]: enqueuer, completer, reaper;
//! - [`simulate`]: traffic, and the count of stale reads;
//! - [`db`]: how connections are opened, and why read-your-writes needs no
//!   bookkeeping in the app.

pub mod api;
pub mod atomic;
pub mod db;
pub mod error;
pub mod jobs;
pub mod migrate;
pub mod params;
pub mod payments;
pub mod response;
pub mod rides;
pub mod servers;
pub mod shutdown;
pub mod simulate;
pub mod users;
