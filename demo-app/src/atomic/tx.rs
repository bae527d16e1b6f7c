//! One SERIALIZABLE transaction on a connection named for the request's user.
//!
//! causeway sends a transaction that is not READ ONLY to the primary, and
//! when it commits raises the causal LSN of the user's client id, so the
//! user's later reads, on any connection, see it.

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
