//! A fake payment service standing in for Stripe, and the app's client of it.
//!
//! The API's charge step is a real HTTP call to `demo-app payments`, because
//! the point of the idempotency-key design is what happens when a call to a
//! foreign system fails halfway: the service can lose a request before it
//! records the charge or after, and only its own idempotency key makes the
//! retry safe. [`ledger`] is the service's state and rules, [`server`] its
//! HTTP face, [`client`] what the API calls.

pub mod client;
pub mod ledger;
pub mod server;

pub use client::{ChargeOutcome, PaymentsClient};
pub use ledger::{ChargeRequest, FailureMode, Ledger};

/// What one ride costs, in cents.
pub const RIDE_PRICE_CENTS: i64 = 20_00;
