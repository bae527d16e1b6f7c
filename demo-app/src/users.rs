//! Users, found by the email in the `Authorization` header.

use crate::db::UserDb;
use crate::error::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub email: String,
    /// The user's customer at the payment service.
    pub customer_id: String,
}

/// The user with `email`, if any, looked up on a connection named for that
/// email (so it never runs under another user's id). Users are seeded by
/// `migrate` and never change, so any replica may answer.
pub async fn find_by_email(db: &UserDb, email: &str) -> Result<Option<User>> {
    let client = db.get().await?;
    let row = client
        .query_opt(
            "SELECT id, email, stripe_customer_id FROM users WHERE email = $1",
            &[&email],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(User {
            id: row.try_get(0)?,
            email: row.try_get(1)?,
            customer_id: row.try_get(2)?,
        }),
        None => None,
    })
}
