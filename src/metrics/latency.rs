//! Latency histograms recorded on every unit: a fixed set of buckets, each
//! a counter, rendered in the Prometheus text format next to the
//! recorder's output.
//!
//! The recorder's own histograms keep every sample until the next scrape
//! (an atomic bucket behind an epoch guard): about 80 ns a sample, twice a
//! unit, on the proxy's busiest path. Here a sample is two relaxed atomic
//! adds. The series look as the recorder's did: same names, labels and
//! bucket bounds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (the recorder's buckets too,
/// for the histograms it still keeps).
pub const BUCKETS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The same bounds in nanoseconds, for recording without floating point.
const BUCKETS_NANOS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// One labelled series of a latency histogram.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative); the last is above every bound.
    counts: [AtomicU64; BUCKETS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least the sample (`le`).
        let bucket = BUCKETS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the series' `_bucket`, `_sum` and `_count` lines; `labels`
    /// is what goes inside the braces before `le` (`route="primary"`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let bounds = BUCKETS_SECONDS.iter().map(|b| b.to_string());
        for (count, le) in self
            .counts
            .iter()
            .zip(bounds.chain(std::iter::once("+Inf".to_string())))
        {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Appends the `# TYPE` line of a histogram family.
pub fn render_type(out: &mut String, name: &str) {
    let _ = writeln!(out, "# TYPE {name} histogram");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket_line<'a>(text: &'a str, le: &str) -> &'a str {
        let key = format!("le=\"{le}\"}} ");
        text.lines()
            .find_map(|l| l.split_once(&key).map(|(_, v)| v))
            .unwrap_or("missing")
    }

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_holds_them_and_buckets_add_up() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(50)); // exactly on 0.00005: that bucket
        h.record(Duration::from_micros(51));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(9));
        let mut out = String::new();
        h.render(&mut out, "t_seconds", "route=\"primary\"");
        assert_eq!(bucket_line(&out, "0.00005"), "1");
        assert_eq!(bucket_line(&out, "0.0001"), "2");
        assert_eq!(bucket_line(&out, "0.002"), "2");
        assert_eq!(bucket_line(&out, "0.005"), "3");
        assert_eq!(bucket_line(&out, "5"), "3");
        assert_eq!(bucket_line(&out, "+Inf"), "4");
        assert!(
            out.contains("t_seconds_count{route=\"primary\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_sum{route=\"primary\"} 9.003101\n"),
            "{out}"
        );
        assert_eq!(out.lines().count(), 17 + 2);
    }

    #[test]
    fn bounds_in_nanoseconds_are_the_bounds_in_seconds() {
        for (nanos, seconds) in BUCKETS_NANOS.iter().zip(BUCKETS_SECONDS) {
            assert_eq!(*nanos, (seconds * 1e9).round() as u64);
        }
    }
}
