//! The demo app's error type: what went wrong talking to Postgres, to the
//! connection pool, to the payment service or to Redis, or a failure the
//! demo injected on purpose.
//!
//! The one distinction the API needs is [`Error::is_conflict`]: a
//! serialization failure (SQLSTATE 40001), a deadlock (40P01) or a unique
//! violation (23505) raised by a concurrent request is answered with 409 and
//! "retry with the same key"; everything else is a 500.

use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {}", describe_db(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("connection pool: {}", with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("payment service: {0}")]
    Payment(String),
    #[error("redis: {0}")]
    Redis(String),
    /// A failure injected on purpose (streamer, consumers): not a bug.
    #[error("injected failure: {0}")]
    Injected(String),
    #[error("{0}")]
    Other(String),
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        Error::Redis(error.to_string())
    }
}

impl Error {
    /// The SQLSTATE of a database error, wherever it came from.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            Error::Db(e) => e.code(),
            Error::Pool(deadpool_postgres::PoolError::Backend(e)) => e.code(),
            _ => None,
        }
    }

    /// Whether a concurrent transaction caused this (see the module docs).
    pub fn is_conflict(&self) -> bool {
        self.sql_state().is_some_and(is_conflict_state)
    }
}

/// 40001, 40P01 and 23505: the transaction lost a race and can be retried.
pub fn is_conflict_state(state: &SqlState) -> bool {
    *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED
        || *state == SqlState::UNIQUE_VIOLATION
}

/// `SQLSTATE message` for a server error (tokio-postgres says only "db error").
fn describe_db(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => with_causes(error),
    }
}

/// The error and its causes: "error connecting to server" says little alone.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_the_retryable_states() {
        assert!(is_conflict_state(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(is_conflict_state(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(is_conflict_state(&SqlState::UNIQUE_VIOLATION));
        assert!(!is_conflict_state(&SqlState::SYNTAX_ERROR));
        assert!(!is_conflict_state(&SqlState::READ_ONLY_SQL_TRANSACTION));
    }
}
