//! Connecting to Redis (`REDIS_URL`), in one place, with the timeouts the
//! demo's uses need: the consumer blocks in `XREAD BLOCK` for up to
//! [`MAX_BLOCK`], so replies may take longer than the client's default.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::error::Result;

/// The longest a blocking read asks Redis to wait.
pub const MAX_BLOCK: Duration = Duration::from_secs(1);

/// A connection to `url` (`redis://host:port[/db]`).
pub async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(MAX_BLOCK + Duration::from_secs(4)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}
