//! A throwaway Redis: `redis-server` as a child process on a free loopback
//! port, no persistence, its files in the cluster directory. Its pid goes to
//! `redis/redis.pid` so the watchdog can kill it after a crash of the test.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::tools::redis_server_path;
use super::wait::wait_for;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Prepares (does not start) a Redis whose files live in `dir`.
    pub fn new(dir: PathBuf, port: u16) -> RedisServer {
        RedisServer {
            port,
            dir,
            child: Mutex::new(None),
        }
    }

    /// Spawns redis-server; returns at once (see [`RedisServer::wait_ready`]).
    pub fn spawn(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", self.dir.display()));
        let log = self.dir.join("redis.log");
        let child = Command::new(redis_server_path())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        fs::write(self.dir.join("redis.pid"), child.id().to_string())
            .unwrap_or_else(|e| panic!("write redis.pid: {e}"));
        *slot = Some(child);
    }

    /// Waits until Redis answers PING.
    pub fn wait_ready(&self, timeout: Duration) {
        wait_for("redis answering PING", timeout, || {
            if let Some(child) = self
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                    panic!(
                        "redis-server exited ({status}) on port {}:\n{log}",
                        self.port
                    );
                }
            }
            redis_ping(self.port).map(|_| ())
        });
    }

    /// Kills Redis and reaps it (idempotent).
    pub fn stop(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(self.dir.join("redis.pid"));
        }
    }
}

/// Sends `PING` in Redis' inline protocol and returns the reply line
/// (`+PONG` when healthy), or why there was none.
pub fn redis_ping(port: u16) -> Result<String, String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"PING\r\n")
        .map_err(|e| format!("send PING: {e}"))?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("connection closed after {reply:?}")),
            Ok(_) => reply.push(byte[0]),
            Err(e) => return Err(format!("read PING reply: {e}")),
        }
    }
    reply.truncate(reply.len() - 2);
    Ok(String::from_utf8_lossy(&reply).into_owned())
}
