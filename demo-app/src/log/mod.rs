//! The unified log (seed rocket-rides-log): rides flow from Postgres into a
//! Redis stream, and consumers turn the stream into a result they can prove.
//!
//! - [`staged`]: the ride's transaction stages a log record beside the ride,
//!   so the log holds exactly the rides that committed, in id order.
//! - [`streamer`]: moves staged records to the stream and deletes them, in
//!   one Postgres transaction; an injected failure sends a batch twice.
//! - [`consumer`]: keeps a running total of ride distance, and commits the
//!   total with its stream position and last ride id in one transaction, so
//!   a crash (injected before commit) loses nothing and counts nothing
//!   twice; duplicates from the streamer are skipped by ride id.
//! - [`stream`]: the Redis stream itself (XADD, XRANGE, XREAD).
//! - [`distance`]: exact distances, so totals equal `sum(distance)` to the metre.
//!
//! Every Postgres statement goes through causeway: the streamer's
//! `SELECT ... FOR UPDATE` and `DELETE`, and the consumers' transactions, are
//! writes, so the primary runs them.

pub mod consumer;
pub mod distance;
pub mod staged;
pub mod stream;
pub mod streamer;
