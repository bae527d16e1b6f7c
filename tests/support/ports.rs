//! Free loopback ports: bind `127.0.0.1:0`, read the port the kernel chose,
//! release it. Another process could take it before our server binds it; the
//! window is a few milliseconds and we accept it. Within this process no port
//! is handed out twice, so the servers of one or several clusters, and a proxy
//! under test, never collide with each other.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback TCP port that nothing listened on a moment ago and that this
/// process has not handed out before (use it for a proxy under test, too).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr of a bound listener: {e}"))
            .port();
        let mut ports = handed_out().lock().unwrap_or_else(|p| p.into_inner());
        if ports.insert(port) {
            return port;
        }
    }
    panic!("no new free port on 127.0.0.1 after 100 tries")
}
