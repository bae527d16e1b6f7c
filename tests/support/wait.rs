//! Polling with a deadline: every wait in the fixture ends, either with the
//! condition met or with a panic that says what was last seen.

use std::time::{Duration, Instant};

/// Calls `check` every 20 ms until it returns `Ok`; after `timeout` panics
/// with `what` and the last `Err` (the state that was seen instead).
pub fn wait_for(what: &str, timeout: Duration, check: impl FnMut() -> Result<(), String>) {
    if let Err(message) = try_wait_for(what, timeout, check) {
        panic!("{message}");
    }
}

/// [`wait_for`] that returns the timeout message instead of panicking, for
/// callers that add context (a server log) before they panic.
pub fn try_wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
