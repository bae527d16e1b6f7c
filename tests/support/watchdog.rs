//! The watchdog: a tiny detached `sh` loop that outlives the test process and
//! tears the cluster down once that process is gone.
//!
//! Why: the shared cluster lives in a `static`, and Rust never drops statics;
//! a test process may also be killed (Ctrl-C, a CI timeout, `kill -9`) before
//! any destructor runs. Without the watchdog every `cargo test` would leave
//! three postmasters and a Redis running. It polls `kill -0 PID` twice a
//! second; when the test process has exited it stops every server it finds
//! (`DIR/*/postmaster.pid`) with `pg_ctl stop -m immediate`, all at once, kills Redis
//! (`DIR/redis/redis.pid`) and removes DIR. It also exits quietly when DIR
//! disappears, which is how a cluster dropped in-process dismisses it.
//!
//! It runs in its own process group and ignores INT/HUP/TERM, so the Ctrl-C
//! that kills `cargo test` does not kill the watchdog too.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::tools::Tools;

/// Starts the watchdog for the cluster in `dir`, watching this process.
pub fn spawn(tools: &Tools, dir: &Path) -> Child {
    let pg_ctl = tools.shell_prefix("pg_ctl");
    // $1 = pid to watch, $2 = cluster directory.
    let script = format!(
        r#"trap '' INT HUP TERM QUIT PIPE
while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 0.5; done
[ -d "$2" ] || exit 0
cd /
for pidfile in "$2"/*/postmaster.pid; do
  [ -f "$pidfile" ] || continue
  {pg_ctl} stop -D "${{pidfile%/postmaster.pid}}" -m immediate -w -t 30 >/dev/null 2>&1 &
done
if [ -f "$2/redis/redis.pid" ]; then kill -9 "$(cat "$2/redis/redis.pid")" 2>/dev/null; fi
wait
rm -rf "$2"
"#
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("causeway-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        // No inherited pipes: a harness that waits for EOF on our stdout must
        // not wait for the watchdog too.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the cluster watchdog (sh): {e}"))
}
