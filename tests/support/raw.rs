//! A bare-bytes Postgres client, for tests that send what no driver would:
//! garbage, absurd lengths, truncated and unknown messages.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A message as read off the wire: tag and body.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl RawMessage {
    /// A field of an ErrorResponse or NoticeResponse ('C' = SQLSTATE, 'M' = message, 'S' = severity).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                return None;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if kind == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A frontend message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

impl RawClient {
    pub async fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to proxy");
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and logs in as a `trust` user, reading up to ReadyForQuery.
    pub async fn login_trusted(port: u16, user: &str, db: &str) -> RawClient {
        let mut client = RawClient::connect(port).await;
        client
            .send(&startup_packet(&[("user", user), ("database", db)]))
            .await;
        let messages = client.read_until_ready().await;
        assert!(
            messages
                .iter()
                .any(|m| m.tag == b'R' && m.body == [0, 0, 0, 0]),
            "no AuthenticationOk in {messages:?}"
        );
        client
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send to proxy");
    }

    /// Reads one message; `None` when the connection closed.
    pub async fn read_message(&mut self) -> Option<RawMessage> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let body = self.buf[5..len + 1].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..len + 1);
                    return Some(RawMessage { tag, body });
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("proxy answered nothing for 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages up to and including ReadyForQuery.
    pub async fn read_until_ready(&mut self) -> Vec<RawMessage> {
        let mut messages = Vec::new();
        while let Some(m) = self.read_message().await {
            let done = m.tag == b'Z';
            messages.push(m);
            if done {
                return messages;
            }
        }
        panic!("connection closed before ReadyForQuery: {messages:?}");
    }

    /// Reads until the proxy closes the connection; returns what came.
    pub async fn read_until_closed(&mut self) -> Vec<RawMessage> {
        let mut messages = Vec::new();
        while let Some(m) = self.read_message().await {
            messages.push(m);
        }
        messages
    }
}
