//! The demo app end to end: a real causeway (in-process) in front of a real
//! primary, two streaming replicas and Redis (the repo's test fixture), the
//! API and the payment service on free ports, and HTTP requests as a client
//! would send them.
//!
//! One test binary, so one cluster for all of these files.

#[path = "../../../tests/support/mod.rs"]
mod support;

mod harness;

mod cdc;
mod diagnose;
mod idempotency;
mod jobs;
mod log;
mod no_double_charge;
mod reads;
mod validation;
