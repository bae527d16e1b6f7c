//! Query cancellation across the proxy.
//!
//! Each client gets a BackendKeyData made up by the proxy. A CancelRequest
//! carrying that key is turned into a CancelRequest to whichever server
//! connection the client is using at that moment, with that server's key.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use dashmap::DashMap;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What a cancel must reach: a server and its key for the running backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

/// The server a client is using now; the session updates it as it moves.
pub type CurrentServer = Arc<Current>;

/// The last server connection a client used, and whether it is using it
/// now. A transaction-pooled client takes and gives back a connection for
/// every transaction, mostly the same one: then only the flag changes,
/// without a lock.
#[derive(Debug, Default)]
pub struct Current {
    target: Mutex<Option<CancelTarget>>,
    active: AtomicBool,
}

/// Maps the keys the proxy handed out to the clients' current servers.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    by_pid: DashMap<i32, (i32, CurrentServer)>,
}

/// A client's place in the registry; removes itself when dropped.
#[derive(Debug)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
    pub current: CurrentServer,
    /// What `current.target` holds, known without its lock.
    last: Option<CancelTarget>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry.by_pid.remove(&self.pid);
    }
}

impl CancelKey {
    pub fn set(&mut self, target: Option<CancelTarget>) {
        let Some(target) = target else {
            self.current.active.store(false, Ordering::Release);
            return;
        };
        if self.last != Some(target) {
            if let Ok(mut current) = self.current.target.lock() {
                *current = Some(target);
            }
            self.last = Some(target);
        }
        self.current.active.store(true, Ordering::Release);
    }
}

impl CancelRegistry {
    /// Hands out a fresh, unused key for a new client.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut rng = rand::thread_rng();
        loop {
            // Positive pids look like real backend pids to tools that print them.
            let pid = rng.gen_range(1..i32::MAX);
            let secret = rng.gen::<i32>();
            let current: CurrentServer = Arc::default();
            let entry = self.by_pid.entry(pid);
            if let dashmap::Entry::Vacant(slot) = entry {
                slot.insert((secret, current.clone()));
                return CancelKey {
                    pid,
                    secret,
                    current,
                    last: None,
                    registry: self.clone(),
                };
            }
        }
    }

    /// The server a cancel with this key should reach, if the key is known
    /// and the client is using a server now.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let entry = self.by_pid.get(&pid)?;
        let (known_secret, current) = entry.value();
        if *known_secret != secret {
            return None;
        }
        if !current.active.load(Ordering::Acquire) {
            return None;
        }
        current.target.lock().ok().and_then(|c| *c)
    }
}

/// Sends a CancelRequest to a server. Postgres answers nothing; it just
/// closes the connection.
pub async fn send_cancel(target: CancelTarget) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(target.addr).await?;
    let mut out = BytesMut::with_capacity(16);
    out.put_i32(16);
    out.put_i32(80_877_102);
    out.put_i32(target.pid);
    out.put_i32(target.secret);
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_needs_the_right_secret_and_a_current_server() {
        let registry = Arc::new(CancelRegistry::default());
        let mut key = registry.register();
        assert_eq!(registry.lookup(key.pid, key.secret), None);
        let target = CancelTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], 5433)),
            pid: 42,
            secret: 7,
        };
        key.set(Some(target));
        assert_eq!(registry.lookup(key.pid, key.secret), Some(target));
        assert_eq!(registry.lookup(key.pid, key.secret.wrapping_add(1)), None);
        // Given back, then the same connection again, then another.
        key.set(None);
        assert_eq!(registry.lookup(key.pid, key.secret), None);
        key.set(Some(target));
        assert_eq!(registry.lookup(key.pid, key.secret), Some(target));
        let other = CancelTarget { pid: 43, ..target };
        key.set(Some(other));
        assert_eq!(registry.lookup(key.pid, key.secret), Some(other));
        let pid = key.pid;
        drop(key);
        assert_eq!(registry.lookup(pid, 0), None);
        assert!(registry.by_pid.is_empty());
    }
}
