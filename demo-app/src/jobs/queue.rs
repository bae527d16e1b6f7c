//! The job queue staged jobs are moved to: a Redis list (`RPUSH`), like the
//! Sidekiq queue of the seed, or, without `REDIS_URL`, the log alone.

use serde_json::{json, Value};

use crate::error::Result;
use crate::redis_client;

/// The Redis list jobs are pushed onto.
pub const JOB_LIST: &str = "demo-app:jobs";

/// A job leaving the database.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: i64,
    pub name: String,
    pub args: Value,
}

impl Job {
    /// What is pushed onto the list.
    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "job_name": self.name, "job_args": self.args })
    }
}

pub enum JobQueue {
    /// Log each job and drop it (no Redis configured).
    Log,
    Redis {
        url: String,
    },
}

impl JobQueue {
    pub fn new(redis_url: Option<&str>) -> JobQueue {
        match redis_url.filter(|u| !u.is_empty()) {
            Some(url) => JobQueue::Redis {
                url: url.to_string(),
            },
            None => JobQueue::Log,
        }
    }

    /// Pushes every job, all or an error.
    pub async fn push_all(&self, jobs: &[Job]) -> Result<()> {
        let JobQueue::Redis { url } = self else {
            return Ok(());
        };
        if jobs.is_empty() {
            return Ok(());
        }
        let payloads: Vec<String> = jobs.iter().map(|j| j.to_json().to_string()).collect();
        let mut conn = redis_client::connect(url).await?;
        redis::cmd("RPUSH")
            .arg(JOB_LIST)
            .arg(&payloads)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }
}
