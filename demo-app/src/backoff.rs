//! [`Backoff`]: how long a loop waits after a failure before it tries again
//! (a lost connection to causeway or Redis), so a down service is not
//! hammered and a brief outage costs little.

use std::time::Duration;

use tokio::sync::watch;

/// Waits that double after each failure, from 100 ms to 5 s.
#[derive(Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(100) * 2u32.saturating_pow(self.failures.min(6));
        self.failures += 1;
        delay.min(Duration::from_secs(5))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleeps the next delay, or less if `shutdown` comes first.
    pub async fn sleep(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_seconds() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
