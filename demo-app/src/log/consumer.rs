//! `demo-app consumer NAME`: a running total of ride distance, read from the
//! stream, that stays exact whatever fails.
//!
//! One pass is one Postgres transaction: lock the consumer's checkpoint
//! (total, stream position, last ride id), read the entries after that
//! position, add each new ride's distance, and commit the new total with
//! the new position and last ride id. Because the three move together:
//! - a crash before the commit (injected at `crash_rate`, 10% by default,
//!   after the total is computed) changes nothing: the next pass reads the
//!   same entries again from the old position;
//! - a record the streamer sent twice is skipped: rides enter the log in id
//!   order ([`super::staged`]), so a ride id not above the last one counted
//!   was counted already.
//!
//! Several consumers (different names) each keep their own checkpoint; all
//! converge on `SELECT sum(distance) FROM rides`.
//!
//! Between passes the consumer waits on the stream (`XREAD BLOCK`), outside
//! any transaction, so an idle consumer holds no lock and writes nothing.
//!
//! Every connection a consumer takes is named for it
//! (`SET causeway.client_id = 'consumer:<stream>:<name>'`), so a read of its
//! checkpoint after a commit sees that commit, from a replica or the
//! primary, even in a new process that restarted the consumer.

use std::time::Duration;

use deadpool_postgres::Pool;
use rand::Rng;
use tokio::sync::watch;

use super::distance::Metres;
use super::stream::{Entry, LogStream, START};
use crate::backoff::Backoff;
use crate::error::{Error, Result};

pub const DEFAULT_BATCH: usize = 100;
pub const DEFAULT_CRASH_RATE: f64 = 0.1;

/// What a consumer has committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub total: Metres,
    /// The last stream entry read (counted or skipped).
    pub stream_id: String,
    /// The highest ride id counted.
    pub last_ride_id: i64,
}

/// What one committed pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pass {
    /// The stream position the pass started after.
    pub from: String,
    /// Rides added to the total.
    pub counted: usize,
    /// Rides skipped as already counted (the streamer's double sends).
    pub duplicates: usize,
    /// Entries that were no ride record.
    pub ignored: usize,
    pub checkpoint: Checkpoint,
}

impl Pass {
    pub fn entries(&self) -> usize {
        self.counted + self.duplicates + self.ignored
    }
}

pub struct Consumer {
    pub name: String,
    pub pool: Pool,
    pub stream: LogStream,
    pub batch: usize,
    pub crash_rate: f64,
}

impl Consumer {
    /// A pooled connection, named for this consumer (module docs).
    async fn conn(&self) -> Result<deadpool_postgres::Object> {
        let conn = self.pool.get().await?;
        let id = format!("consumer:{}:{}", self.stream.name, self.name);
        conn.batch_execute(&crate::db::set_client_id(&id)).await?;
        Ok(conn)
    }

    /// One pass (module docs). An injected crash is [`Error::Injected`].
    pub async fn run_once(&self) -> Result<Pass> {
        let mut conn = self.conn().await?;
        let tx = crate::db::read_committed(&mut conn).await?;
        tx.execute(
            "INSERT INTO consumer_checkpoints (stream, name) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&self.stream.name, &self.name],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT total_distance::text, stream_id, last_ride_id
                   FROM consumer_checkpoints WHERE stream = $1 AND name = $2
                    FOR UPDATE",
                &[&self.stream.name, &self.name],
            )
            .await?;
        let mut checkpoint = Checkpoint {
            total: parse_total(row.try_get(0)?)?,
            stream_id: row.try_get(1)?,
            last_ride_id: row.try_get(2)?,
        };
        let from = checkpoint.stream_id.clone();
        let entries = self.stream.read_after(&from, self.batch).await?;
        let mut pass = Pass {
            from,
            counted: 0,
            duplicates: 0,
            ignored: 0,
            checkpoint: checkpoint.clone(),
        };
        if entries.is_empty() {
            return Ok(pass);
        }
        for entry in &entries {
            match ride_of(entry) {
                Ok((id, _)) if id <= checkpoint.last_ride_id => pass.duplicates += 1,
                Ok((id, distance)) => {
                    checkpoint.total += distance;
                    checkpoint.last_ride_id = id;
                    pass.counted += 1;
                }
                Err(why) => {
                    tracing::warn!("consumer {}: skipping entry {}: {why}", self.name, entry.id);
                    pass.ignored += 1;
                }
            }
            checkpoint.stream_id = entry.id.clone();
        }
        if rand::thread_rng().gen_bool(self.crash_rate.clamp(0.0, 1.0)) {
            return Err(Error::Injected(format!(
                "consumer {} computed total {} km up to ride {} and crashed before \
                 committing: the next pass reads from {} again",
                self.name, checkpoint.total, checkpoint.last_ride_id, pass.from
            )));
        }
        tx.execute(
            "UPDATE consumer_checkpoints
                SET total_distance = $3::text::numeric, stream_id = $4,
                    last_ride_id = $5, updated_at = now()
              WHERE stream = $1 AND name = $2",
            &[
                &self.stream.name,
                &self.name,
                &checkpoint.total.to_string(),
                &checkpoint.stream_id,
                &checkpoint.last_ride_id,
            ],
        )
        .await?;
        tx.commit().await?;
        pass.checkpoint = checkpoint;
        Ok(pass)
    }

    /// The committed checkpoint, if the consumer ever committed one. A plain
    /// read, which a replica may serve: never older than this consumer's
    /// last commit (module docs), though another process running the same
    /// consumer may have committed since; [`run_once`] reads the current
    /// one under lock.
    ///
    /// [`run_once`]: Consumer::run_once
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT total_distance::text, stream_id, last_ride_id
                   FROM consumer_checkpoints WHERE stream = $1 AND name = $2",
                &[&self.stream.name, &self.name],
            )
            .await?;
        row.map(|row| {
            Ok(Checkpoint {
                total: parse_total(row.try_get(0)?)?,
                stream_id: row.try_get(1)?,
                last_ride_id: row.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Passes until `shutdown`, logging (at debug) the total after each
    /// that counted, and injected crashes.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut position = match self.checkpoint().await {
            Ok(Some(checkpoint)) => {
                println!(
                    "consumer {}: resuming at stream position {} with total {} km",
                    self.name, checkpoint.stream_id, checkpoint.total
                );
                checkpoint.stream_id
            }
            _ => START.to_string(),
        };
        let mut backoff = Backoff::default();
        while !*shutdown.borrow() {
            let waited = tokio::select! {
                waited = self.stream.wait_after(&position, Duration::from_secs(1)) => waited,
                _ = shutdown.changed() => return,
            };
            match waited {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!("consumer {}: {e}", self.name);
                    backoff.sleep(&mut shutdown).await;
                    continue;
                }
            }
            match self.run_once().await {
                Ok(pass) => {
                    backoff.reset();
                    if pass.counted > 0 || pass.duplicates > 0 {
                        tracing::debug!(
                            "consumer {}: total_distance = {} km after ride {} \
                             (+{} rides, {} duplicates skipped)",
                            self.name,
                            pass.checkpoint.total,
                            pass.checkpoint.last_ride_id,
                            pass.counted,
                            pass.duplicates
                        );
                    }
                    position = pass.checkpoint.stream_id;
                }
                Err(Error::Injected(what)) => tracing::debug!("{what}"),
                Err(e) => {
                    tracing::warn!("consumer {}: {e}", self.name);
                    backoff.sleep(&mut shutdown).await;
                }
            }
        }
    }
}

/// The ride id and distance of a `create ride` record.
fn ride_of(entry: &Entry) -> std::result::Result<(i64, Metres), String> {
    let record = entry.record.as_ref().map_err(String::clone)?;
    if record.object != "ride" || record.action != "create" {
        return Err(format!("not a ride: {} {}", record.action, record.object));
    }
    let id = record.data["id"]
        .as_i64()
        .ok_or_else(|| format!("ride without an id: {}", record.data))?;
    let distance = record.data["distance"]
        .as_str()
        .ok_or_else(|| format!("ride {id} without a distance: {}", record.data))?
        .parse()?;
    Ok((id, distance))
}

fn parse_total(text: String) -> Result<Metres> {
    text.parse()
        .map_err(|e| Error::Other(format!("consumer checkpoint: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::log::stream::LogRecord;

    fn entry(data: serde_json::Value) -> Entry {
        Entry {
            id: "1-0".into(),
            record: Ok(LogRecord {
                action: "create".into(),
                object: "ride".into(),
                data,
            }),
        }
    }

    #[test]
    fn reads_ride_records() {
        assert_eq!(
            ride_of(&entry(json!({ "id": 7, "distance": "1.500" }))),
            Ok((7, Metres(1500)))
        );
        assert!(ride_of(&entry(json!({ "distance": "1.5" }))).is_err());
        assert!(ride_of(&entry(json!({ "id": 7, "distance": 1.5 }))).is_err());
        let broken = Entry {
            id: "2-0".into(),
            record: Err("no data".into()),
        };
        assert!(ride_of(&broken).is_err());
    }
}
