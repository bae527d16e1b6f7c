//! The unified log itself: one Redis stream whose entries carry a record's
//! `action`, `object` and `data` (JSON), capped at about `maxlen` entries.
//!
//! The cap keeps Redis' memory bounded; it must stay well above how far any
//! consumer can fall behind, or that consumer finds records trimmed away
//! before it read them (and its total falls short).

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamId, StreamMaxlen, StreamRangeReply, StreamReadOptions, StreamReadReply,
};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::redis_client::{self, MAX_BLOCK};

/// The stream's name unless configured.
pub const DEFAULT_STREAM: &str = "rocket-rides-log";
/// About how many entries the stream keeps (`XADD MAXLEN ~`).
pub const DEFAULT_MAXLEN: usize = 1_000_000;
/// The position before the first entry.
pub const START: &str = "0-0";

/// One record of the log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    pub action: String,
    pub object: String,
    pub data: Value,
}

/// A record as read back, with its stream id. An entry someone else wrote,
/// without our fields, is kept as the reason it is not a record, so a reader
/// can step past it instead of stopping there.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: String,
    pub record: std::result::Result<LogRecord, String>,
}

pub struct LogStream {
    url: String,
    pub name: String,
    pub maxlen: usize,
    /// Kept between calls; dropped after an error so the next call reconnects.
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl LogStream {
    pub fn new(url: &str, name: &str, maxlen: usize) -> LogStream {
        LogStream {
            url: url.to_string(),
            name: name.to_string(),
            maxlen,
            conn: Mutex::new(None),
        }
    }

    /// Appends `records` in order (one pipelined round trip); their ids.
    pub async fn append(&self, records: &[LogRecord]) -> Result<Vec<String>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for record in records {
            pipe.cmd("XADD")
                .arg(&self.name)
                .arg(StreamMaxlen::Approx(self.maxlen))
                .arg("*")
                .arg("action")
                .arg(&record.action)
                .arg("object")
                .arg(&record.object)
                .arg("data")
                .arg(record.data.to_string());
        }
        let mut conn = self.conn().await?;
        let ids = self.checked(pipe.query_async::<Vec<String>>(&mut conn).await)?;
        Ok(ids)
    }

    /// Up to `count` entries after position `after`, oldest first.
    pub async fn read_after(&self, after: &str, count: usize) -> Result<Vec<Entry>> {
        let mut conn = self.conn().await?;
        let reply = redis::cmd("XRANGE")
            .arg(&self.name)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async::<StreamRangeReply>(&mut conn)
            .await;
        Ok(self.checked(reply)?.ids.iter().map(entry).collect())
    }

    /// How many entries there are after position `after`, counting up to
    /// `cap` (how far a reader at `after` is behind).
    pub async fn count_after(&self, after: &str, cap: usize) -> Result<usize> {
        let mut conn = self.conn().await?;
        let reply = redis::cmd("XRANGE")
            .arg(&self.name)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(cap)
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await;
        Ok(self.checked(reply)?.len())
    }

    /// Waits up to `block` (at most [`MAX_BLOCK`]) for an entry after `after`.
    pub async fn wait_after(&self, after: &str, block: Duration) -> Result<bool> {
        let mut conn = self.conn().await?;
        let millis = block.min(MAX_BLOCK).as_millis().max(1) as usize;
        let options = StreamReadOptions::default().count(1).block(millis);
        let reply = redis::cmd("XREAD")
            .arg(&options)
            .arg("STREAMS")
            .arg(&self.name)
            .arg(after)
            .query_async::<Option<StreamReadReply>>(&mut conn)
            .await;
        Ok(self
            .checked(reply)?
            .is_some_and(|r| r.keys.iter().any(|k| !k.ids.is_empty())))
    }

    /// Every entry (tests and the curious; the stream is capped).
    pub async fn all(&self) -> Result<Vec<Entry>> {
        let mut all = Vec::new();
        let mut after = START.to_string();
        loop {
            let batch = self.read_after(&after, 1000).await?;
            let Some(last) = batch.last() else {
                return Ok(all);
            };
            after = last.id.clone();
            all.extend(batch);
        }
    }

    async fn conn(&self) -> Result<MultiplexedConnection> {
        if let Some(conn) = self.lock().as_ref() {
            return Ok(conn.clone());
        }
        let conn = redis_client::connect(&self.url).await?;
        *self.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after an error, so the next call makes a new one.
    fn checked<T>(&self, result: redis::RedisResult<T>) -> Result<T> {
        result.map_err(|e| {
            *self.lock() = None;
            Error::from(e)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn entry(raw: &StreamId) -> Entry {
    let field = |name: &str| {
        raw.get::<String>(name)
            .ok_or_else(|| format!("stream entry {} has no field {name:?}", raw.id))
    };
    let record = (|| {
        let data = field("data")?;
        let data = serde_json::from_str(&data)
            .map_err(|e| format!("stream entry {}: data is not JSON: {e}", raw.id))?;
        Ok(LogRecord {
            action: field("action")?,
            object: field("object")?,
            data,
        })
    })();
    Entry {
        id: raw.id.clone(),
        record,
    }
}
