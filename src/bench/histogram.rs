//! A latency histogram in the manner of HdrHistogram: fixed memory, O(1) record
//! with no allocation, mergeable, percentiles to within 1/64 (1.6 %) of the value.

use std::time::Duration;

/// Values below this many microseconds have a bucket each (exact).
const EXACT_BELOW: u64 = 128;
/// Above that, each power of two is split into this many buckets.
const SUB_BUCKETS: u64 = 64;
/// Enough buckets for any `u64` of microseconds.
const BUCKETS: usize = (EXACT_BELOW + (64 - 7) * SUB_BUCKETS) as usize;

/// Counts of latencies in microseconds.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram({} values, max {} us)", self.total, self.max)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < EXACT_BELOW {
        return micros as usize;
    }
    // The position of the highest bit (>= 7) picks the power of two; the next six
    // bits below it pick the sub-bucket.
    let high = 63 - u64::from(micros.leading_zeros());
    let shift = high - 6;
    let sub = (micros >> shift) - SUB_BUCKETS;
    (EXACT_BELOW + (shift - 1) * SUB_BUCKETS + sub) as usize
}

/// The largest value that falls in `bucket`.
fn highest_in(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < EXACT_BELOW {
        return bucket;
    }
    let shift = (bucket - EXACT_BELOW) / SUB_BUCKETS + 1;
    let sub = (bucket - EXACT_BELOW) % SUB_BUCKETS + SUB_BUCKETS;
    // (sub + 1) << shift - 1, without overflowing in the top bucket.
    (sub << shift) + ((1 << shift) - 1)
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_micros(micros);
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max)
    }

    /// Nearest rank: the smallest recorded value with at least `p` (0–1) of the
    /// values at or below it, as the top of its bucket (never above the maximum).
    /// Zero when empty.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((p * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_micros(highest_in(bucket).min(self.max));
            }
        }
        Duration::from_micros(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut previous_top = None;
        for bucket in 0..BUCKETS {
            let top = highest_in(bucket);
            if let Some(prev) = previous_top {
                assert!(top > prev, "bucket {bucket}");
                assert_eq!(bucket_of(prev + 1), bucket, "first of bucket {bucket}");
            }
            assert_eq!(bucket_of(top), bucket, "top of bucket {bucket}");
            previous_top = Some(top);
            if top == u64::MAX {
                break;
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact_and_large_ones_within_a_sixty_fourth() {
        for v in 0..EXACT_BELOW {
            assert_eq!(highest_in(bucket_of(v)), v);
        }
        for v in [
            128,
            129,
            1000,
            4095,
            4096,
            123_456,
            10_000_000,
            u64::MAX / 3,
        ] {
            let top = highest_in(bucket_of(v));
            assert!(
                top >= v && (top - v) as f64 <= v as f64 / 64.0,
                "{v} -> {top}"
            );
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut h = Histogram::new();
        for v in (1..=100).rev() {
            h.record_micros(v);
        }
        assert_eq!(h.len(), 100);
        assert_eq!(h.percentile(0.50), Duration::from_micros(50));
        assert_eq!(h.percentile(0.90), Duration::from_micros(90));
        assert_eq!(h.percentile(0.99), Duration::from_micros(99));
        assert_eq!(h.percentile(1.0), Duration::from_micros(100));
        assert_eq!(h.percentile(0.0), Duration::from_micros(1));
        assert_eq!(h.max(), Duration::from_micros(100));
    }

    #[test]
    fn a_percentile_never_exceeds_the_maximum() {
        let mut h = Histogram::new();
        h.record_micros(1000);
        assert_eq!(h.percentile(0.5), Duration::from_micros(1000));
        h.record(Duration::from_secs(1 << 40));
        assert_eq!(h.percentile(1.0), h.max());
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        a.record_micros(3);
        b.record_micros(1);
        b.record_micros(2);
        b.record_micros(500);
        a.merge(&b);
        assert_eq!(a.len(), 4);
        assert_eq!(a.percentile(0.5), Duration::from_micros(2));
        assert_eq!(a.percentile(0.75), Duration::from_micros(3));
        assert_eq!(a.max(), Duration::from_micros(500));
        let empty = Histogram::new();
        assert!(empty.is_empty());
        assert_eq!(empty.percentile(0.99), Duration::ZERO);
    }
}
