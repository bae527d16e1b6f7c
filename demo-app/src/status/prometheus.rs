//! What the status line reads from causeway's `/metrics` (the Prometheus
//! text format): how many reads went to replicas and to the primary, and
//! the histogram of how long reads waited for a replica to catch up.
//!
//! Parsing is a pure function of the text, so it is tested with strings;
//! fetching it is `status::Reporter`'s job.

/// Reads counted by `causeway_statements_total`, and the read-wait
/// histogram, as of one scrape. Counters are `f64`, as the format has them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyCounts {
    /// Units sent to a replica (`route="replica"`, any reason).
    pub replica_reads: f64,
    /// Reads sent to the primary: `route="primary"` except the reasons that
    /// are not reads (`write`, `transaction`), as the dashboard counts them.
    pub primary_reads: f64,
    /// Of those, the ones no replica could take: none had replayed far
    /// enough in time (`stale`) or none was healthy (`no_replica`).
    pub fell_back: f64,
    /// `causeway_read_wait_seconds`.
    pub read_wait: Histogram,
}

/// A cumulative histogram: `(upper bound, observations at or below it)`,
/// by increasing bound, the last one `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
}

impl ProxyCounts {
    /// The counts in a `/metrics` page; series it lacks count as zero.
    pub fn parse(text: &str) -> ProxyCounts {
        let mut counts = ProxyCounts::default();
        for line in text.lines() {
            let Some(sample) = Sample::parse(line) else {
                continue;
            };
            match sample.name {
                "causeway_statements_total" => match sample.label("route") {
                    Some("replica") => counts.replica_reads += sample.value,
                    Some("primary") => match sample.label("reason") {
                        Some("write" | "transaction") => {}
                        Some("stale" | "no_replica") => {
                            counts.primary_reads += sample.value;
                            counts.fell_back += sample.value;
                        }
                        _ => counts.primary_reads += sample.value,
                    },
                    _ => {}
                },
                "causeway_read_wait_seconds_bucket" => {
                    let bound = match sample.label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(bound) => bound,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    counts.read_wait.buckets.push((bound, sample.value));
                }
                _ => {}
            }
        }
        counts.read_wait.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        counts
    }

    /// What happened between `earlier` and `self`. A counter that went down
    /// means causeway restarted: then everything since its start counts.
    pub fn since(&self, earlier: &ProxyCounts) -> ProxyCounts {
        let restarted = self.replica_reads < earlier.replica_reads
            || self.primary_reads < earlier.primary_reads
            || self.fell_back < earlier.fell_back
            || self.read_wait.count() < earlier.read_wait.count();
        if restarted {
            return self.clone();
        }
        ProxyCounts {
            replica_reads: self.replica_reads - earlier.replica_reads,
            primary_reads: self.primary_reads - earlier.primary_reads,
            fell_back: self.fell_back - earlier.fell_back,
            read_wait: self.read_wait.since(&earlier.read_wait),
        }
    }
}

impl Histogram {
    /// Observations in all.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |&(_, n)| n)
    }

    /// Bucket by bucket, `self - earlier` (buckets `earlier` lacks count as 0).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|&&(b, _)| b == bound)
                .map_or(0.0, |&(_, n)| n)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(bound, n)| (bound, (n - before(bound)).max(0.0)))
                .collect(),
        }
    }

    /// The `q` quantile, as Prometheus' `histogram_quantile` estimates it:
    /// linear within the bucket it falls in; the highest finite bound if it
    /// falls in `+Inf`. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(bound, n) in &self.buckets {
            if n >= rank {
                if bound.is_infinite() {
                    return Some(lower);
                }
                if n <= below {
                    return Some(bound);
                }
                return Some(lower + (bound - lower) * (rank - below) / (n - below));
            }
            (lower, below) = (bound, n);
        }
        Some(lower)
    }
}

/// One sample line: `name{label="value",...} value [timestamp]`.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl<'a> Sample<'a> {
    /// `None` for comments, blank lines and anything malformed.
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner;
            loop {
                rest = rest.trim_start_matches([',', ' ']);
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest.find('=')?;
                let key = rest[..eq].trim();
                let (value, after) = quoted(rest[eq + 1..].strip_prefix('"')?)?;
                labels.push((key, value));
                rest = after;
            }
        }
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some(Sample {
            name,
            labels,
            value,
        })
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A label value up to its closing quote (unescaping `\\`, `\"`, `\n`), and
/// what follows the quote.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# TYPE causeway_statements_total counter
causeway_statements_total{route="primary",server="primary",reason="write"} 56
causeway_statements_total{route="primary",server="primary",reason="transaction"} 4
causeway_statements_total{route="primary",server="primary",reason="stale"} 2
causeway_statements_total{route="primary",server="primary",reason="no_replica"} 0
causeway_statements_total{route="primary",server="primary",reason="hint"} 1
causeway_statements_total{route="replica",server="replica0",reason="fresh"} 21
causeway_statements_total{route="replica",server="replica1",reason="within_lag"} 34
# TYPE causeway_read_wait_seconds histogram
causeway_read_wait_seconds_bucket{le="0.001"} 10
causeway_read_wait_seconds_bucket{le="0.002"} 18
causeway_read_wait_seconds_bucket{le="0.05"} 19
causeway_read_wait_seconds_bucket{le="+Inf"} 20
causeway_read_wait_seconds_sum 0.5
causeway_read_wait_seconds_count 20
causeway_build_info{version="0.1.0"} 1
"#;

    #[test]
    fn counts_reads_as_the_dashboard_does() {
        let counts = ProxyCounts::parse(PAGE);
        assert_eq!(counts.replica_reads, 55.0);
        assert_eq!(
            counts.primary_reads, 3.0,
            "stale + hint, not write or transaction"
        );
        assert_eq!(counts.fell_back, 2.0, "stale + no_replica");
        assert_eq!(counts.read_wait.count(), 20.0);
        assert_eq!(counts.read_wait.buckets[0], (0.001, 10.0));
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let wait = ProxyCounts::parse(PAGE).read_wait;
        // Rank 10 of 20 is the top of the first bucket.
        assert_eq!(wait.quantile(0.5), Some(0.001));
        // Rank 14: half-way through (0.001, 0.002].
        assert!((wait.quantile(0.7).unwrap() - 0.0015).abs() < 1e-12);
        // Rank 19.8 is in +Inf: the highest finite bound.
        assert_eq!(wait.quantile(0.99), Some(0.05));
        assert_eq!(Histogram::default().quantile(0.99), None);
    }

    #[test]
    fn since_subtracts_and_survives_a_restart() {
        let now = ProxyCounts::parse(PAGE);
        let earlier = ProxyCounts::parse(
            "causeway_statements_total{route=\"replica\",server=\"replica0\",reason=\"fresh\"} 5\n\
             causeway_read_wait_seconds_bucket{le=\"0.001\"} 10\n\
             causeway_read_wait_seconds_bucket{le=\"0.002\"} 10\n\
             causeway_read_wait_seconds_bucket{le=\"0.05\"} 10\n\
             causeway_read_wait_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        let delta = now.since(&earlier);
        assert_eq!(delta.replica_reads, 50.0);
        assert_eq!(delta.primary_reads, 3.0);
        assert_eq!(delta.fell_back, 2.0);
        assert_eq!(delta.read_wait.count(), 10.0);
        assert_eq!(delta.read_wait.buckets[0], (0.001, 0.0));
        // Rank 5 of the 10 new waits: 5/8 of the way through (0.001, 0.002].
        assert!((delta.read_wait.quantile(0.5).unwrap() - 0.001_625).abs() < 1e-12);
        // Counters going down: causeway restarted; count from its start.
        assert_eq!(earlier.since(&now), earlier);
    }

    #[test]
    fn label_values_unescape() {
        let sample = Sample::parse(r#"m{a="x\"y\\z",b="1"} 2.5 1700000000"#).unwrap();
        assert_eq!(sample.label("a"), Some(r#"x"y\z"#));
        assert_eq!(sample.label("b"), Some("1"));
        assert_eq!(sample.value, 2.5);
        assert!(Sample::parse("# HELP m text").is_none());
        assert!(Sample::parse("m{a=\"unterminated} 1").is_none());
    }
}
