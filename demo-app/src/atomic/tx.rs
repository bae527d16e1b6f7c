//! One SERIALIZABLE transaction on a connection from the request's pool.
//!
//! causeway sends a transaction that is not READ ONLY to the primary, and
//! marks the session's causal LSN when it commits, so the request's later
//! reads on the same session see it.

use deadpool_postgres::{Object, Transaction};
use tokio_postgres::IsolationLevel;

use crate::error::Result;

pub async fn serializable(conn: &mut Object) -> Result<Transaction<'_>> {
    Ok(conn
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()
        .await?)
}
