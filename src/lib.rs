//! causeway: a PostgreSQL wire-protocol proxy that gives read-your-writes
//! consistency over streaming replicas.
//!
//! The layout follows the data: a client's bytes arrive in [`frontend`],
//! are framed by [`protocol`], and go out to a server from [`backend`].

pub mod admin;
pub mod auth_query;
pub mod backend;
pub mod cancel;
pub mod catalog;
pub mod causal;
pub mod causal_store;
pub mod config;
pub mod frontend;
pub mod http;
pub mod lsn;
pub mod memory;
pub mod metrics;
pub mod pause;
pub mod protocol;
pub mod replicas;
pub mod router;
pub mod server;
pub mod shapes;
pub mod stats;
pub mod stream;
pub mod tls;
