//! Giving memory back to the system once many clients have left.
//!
//! Each client costs the proxy about 18 KiB while connected (buffers, its
//! session). glibc's allocator keeps what they freed for later: after
//! 8,000 idle clients left, the process still held 150 MB, and 18 MB after
//! `malloc_trim`. A sweep watches the number of clients and trims once it
//! has fallen far below its peak, so a burst of connections does not leave
//! the proxy at its high-water mark for good.

use std::time::Duration;

/// How often the sweep looks at the number of clients.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(5);

/// Clients that must have left since the peak before a trim: fewer free
/// too little to be worth a walk of the heap.
const LEFT_FOR_A_TRIM: usize = 1_000;

/// The sweep's memory of the peak since its last trim.
#[derive(Debug, Default)]
pub struct TrimSweep {
    peak: usize,
}

impl TrimSweep {
    /// Takes the most clients connected at once since the last look, and
    /// the number now; true when a trim is due (at least `LEFT_FOR_A_TRIM`
    /// have left since the peak, and at least half of them). The peak
    /// starts again from here after a trim.
    pub fn observe(&mut self, peak: usize, clients: usize) -> bool {
        self.peak = self.peak.max(peak).max(clients);
        let left = self.peak - clients;
        if left >= LEFT_FOR_A_TRIM && left * 2 >= self.peak {
            self.peak = clients;
            return true;
        }
        false
    }
}

/// Returns the allocator's free memory to the system. It walks the heap
/// under the allocator's lock, milliseconds for a heap of a few hundred
/// MB: run it off the runtime's thread.
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the process's own
    // allocator; it takes no pointer and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_follows_a_large_fall_only() {
        let mut sweep = TrimSweep::default();
        assert!(!sweep.observe(0, 0));
        assert!(!sweep.observe(10_000, 10_000));
        // 900 left: too few.
        assert!(!sweep.observe(10_000, 9_100));
        // 4,000 left, but most are still there.
        assert!(!sweep.observe(9_100, 6_000));
        assert!(sweep.observe(6_000, 4_000), "6,000 of 10,000 left");
        // The peak is now 4,000: nothing more until another fall.
        assert!(!sweep.observe(4_000, 4_000));
        assert!(!sweep.observe(4_000, 3_500));
        assert!(sweep.observe(3_500, 1_000), "3,000 of 4,000 left");
        // A burst that came and went between two looks.
        assert!(sweep.observe(3_000, 0), "3,000 came and left unseen");
        // Small pools never trim.
        let mut small = TrimSweep::default();
        assert!(!small.observe(800, 800));
        assert!(!small.observe(800, 0));
    }
}
