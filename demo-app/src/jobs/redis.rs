//! Just enough of the Redis protocol (RESP2) for the job queue: commands as
//! arrays of bulk strings, pipelined, and their replies parsed.
//!
//! Enough to push jobs with RPUSH and look at a list with LRANGE; a full
//! client crate would cost more compile time than this file.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One connection to Redis.
pub struct RedisConnection {
    stream: BufReader<TcpStream>,
}

impl RedisConnection {
    /// Connects to `redis://host:port` (a database number or password in the
    /// URL is not supported).
    pub async fn connect(url: &str) -> Result<RedisConnection> {
        let address = url
            .strip_prefix("redis://")
            .unwrap_or(url)
            .trim_end_matches('/');
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| Error::Redis(format!("connect {address}: {e}")))?;
        Ok(RedisConnection {
            stream: BufReader::new(stream),
        })
    }

    /// Sends every command, then reads every reply; an error reply is an error.
    pub async fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>> {
        let mut out = Vec::new();
        for command in commands {
            encode(command, &mut out);
        }
        self.stream.get_mut().write_all(&out).await.map_err(io)?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    pub async fn command(&mut self, command: Vec<&[u8]>) -> Result<Reply> {
        let mut replies = self.pipeline(&[command]).await?;
        replies.pop().ok_or_else(|| Error::Redis("no reply".into()))
    }

    /// One reply; arrays recurse, hence the boxed future.
    fn read_reply(&mut self) -> Pin<Box<dyn Future<Output = Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.map_err(io)?;
            let line = line.trim_end_matches(['\r', '\n']);
            let (kind, rest) = line.split_at(line.len().min(1));
            let number = || {
                rest.parse::<i64>()
                    .map_err(|_| Error::Redis(format!("bad reply line {line:?}")))
            };
            match kind {
                "+" => Ok(Reply::Status(rest.to_string())),
                "-" => Err(Error::Redis(rest.to_string())),
                ":" => Ok(Reply::Integer(number()?)),
                "$" => match usize::try_from(number()?) {
                    Err(_) => Ok(Reply::Bulk(None)),
                    Ok(length) => {
                        let mut data = vec![0; length + 2];
                        self.stream.read_exact(&mut data).await.map_err(io)?;
                        data.truncate(length);
                        Ok(Reply::Bulk(Some(data)))
                    }
                },
                "*" => match usize::try_from(number()?) {
                    Err(_) => Ok(Reply::Array(None)),
                    Ok(length) => {
                        let mut items = Vec::with_capacity(length.min(1024));
                        for _ in 0..length {
                            items.push(self.read_reply().await?);
                        }
                        Ok(Reply::Array(Some(items)))
                    }
                },
                "" => Err(Error::Redis("connection closed".into())),
                _ => Err(Error::Redis(format!("unexpected reply {line:?}"))),
            }
        })
    }
}

/// `*N\r\n` then `$len\r\narg\r\n` for each argument.
fn encode(command: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
    for arg in command {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn io(error: std::io::Error) -> Error {
    Error::Redis(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_bulk_arrays() {
        let mut out = Vec::new();
        encode(&[b"RPUSH", b"q", b"{}"], &mut out);
        assert_eq!(out, b"*3\r\n$5\r\nRPUSH\r\n$1\r\nq\r\n$2\r\n{}\r\n");
    }
}
