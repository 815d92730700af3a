//! A bounded histogram of latencies with relative precision, for percentiles at any scale.

use core::time::Duration;

/// Sub-buckets per power of two: values are kept to within 1/64 (about 1.6%).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets: exact below `SUB`, then `SUB / 2` per power of two up to 2^64.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * (SUB / 2)) as usize;

/// Latencies in microseconds, counted in log-linear buckets (like HdrHistogram): fixed size
/// (about 15 KiB) whatever the number of samples, percentiles within 1.6%, exact count, sum,
/// minimum and maximum.
///
/// ```
/// use core::time::Duration;
/// use shoal_sim::LatencyHistogram;
/// let mut h = LatencyHistogram::new();
/// for ms in 1..=100 {
///     h.record(Duration::from_millis(ms));
/// }
/// assert_eq!(h.count(), 100);
/// assert_eq!(h.max(), Duration::from_millis(100));
/// let p50 = h.percentile(50.0).as_secs_f64() * 1000.0;
/// assert!((p50 - 50.0).abs() <= 1.0, "{p50}");
/// ```
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    count: u64,
    sum_micros: u128,
    min: u64,
    max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let log = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = log + 1 - SUB_BITS;
    let sub = (v >> shift) - SUB / 2; // in [0, SUB/2)
    (SUB + u64::from(shift - 1) * (SUB / 2) + sub) as usize
}

/// The smallest value that falls into `bucket`, and the largest.
fn bucket_range(bucket: usize) -> (u64, u64) {
    let b = bucket as u64;
    if b < SUB {
        return (b, b);
    }
    let shift = (b - SUB) / (SUB / 2) + 1;
    let sub = (b - SUB) % (SUB / 2) + SUB / 2;
    let low = sub << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        LatencyHistogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_micros: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Counts one latency given in microseconds.
    pub fn record_micros(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.count += 1;
        self.sum_micros += u128::from(micros);
        self.min = self.min.min(micros);
        self.max = self.max.max(micros);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_micros += other.sum_micros;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest sample (zero if empty).
    pub fn min(&self) -> Duration {
        Duration::from_micros(if self.count == 0 { 0 } else { self.min })
    }

    /// The largest sample (exact).
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max)
    }

    /// The mean (zero if empty).
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(
            u64::try_from(self.sum_micros / u128::from(self.count)).unwrap_or(u64::MAX),
        )
    }

    /// The latency below which `p` percent of samples fall (`p` in `[0, 100]`), to within
    /// 1.6%, never above the maximum; zero if empty.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        if p >= 100.0 {
            return self.max();
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * self.count as f64)
            .ceil()
            .max(1.0) as u64;
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, high) = bucket_range(bucket);
                let mid = low + (high - low) / 2;
                return Duration::from_micros(mid.clamp(self.min, self.max));
            }
        }
        self.max()
    }

    /// `(low, high, count)` in microseconds for every non-empty bucket, in increasing order.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(b, &n)| {
                let (low, high) = bucket_range(b);
                (low, high, n)
            })
    }

    /// The cumulative distribution, for plots: for every non-empty bucket in increasing
    /// order, `(upper, share)`, where `upper` is the bucket's largest value in microseconds
    /// (never above the largest sample) and `share` the fraction of samples at or below it.
    /// Both rise; the last share is 1. Empty if there are no samples.
    ///
    /// ```
    /// use shoal_sim::LatencyHistogram;
    /// let mut h = LatencyHistogram::new();
    /// for micros in [10, 10, 20, 40] {
    ///     h.record_micros(micros);
    /// }
    /// let cdf: Vec<(u64, f64)> = h.cumulative().collect();
    /// assert_eq!(cdf, [(10, 0.5), (20, 0.75), (40, 1.0)]);
    /// ```
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        let total = self.count as f64;
        let mut seen = 0u64;
        self.buckets().map(move |(_, high, n)| {
            seen += n;
            (high.min(self.max), seen as f64 / total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_once_and_in_order() {
        let mut last = 0usize;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            let (low, high) = bucket_range(b);
            assert!(low <= v && v <= high, "{v} not in [{low}, {high}]");
            if v < 100_000 {
                assert!(b >= last);
                last = b;
            }
        }
    }

    #[test]
    fn percentiles_are_within_precision() {
        let mut h = LatencyHistogram::new();
        for v in 1..=10_000u64 {
            h.record_micros(v * 10);
        }
        for p in [50.0, 95.0, 99.0] {
            let exact = p / 100.0 * 100_000.0;
            let got = h.percentile(p).as_micros() as f64;
            assert!(
                (got - exact).abs() / exact < 0.016,
                "p{p}: {got} vs {exact}"
            );
        }
        assert_eq!(h.percentile(100.0), Duration::from_micros(100_000));
        assert_eq!(h.min(), Duration::from_micros(10));
    }

    #[test]
    fn cumulative_shares_rise_to_one_and_bounds_stay_within_the_samples() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.cumulative().count(), 0);
        for v in (1..=5_000u64).map(|i| i * i) {
            h.record_micros(v);
        }
        let cdf: Vec<(u64, f64)> = h.cumulative().collect();
        assert!(cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(cdf.last(), Some(&(25_000_000, 1.0)));
        // The share at a bound is within the histogram's precision of the exact share.
        for &(upper, share) in &cdf {
            let exact = (upper as f64).sqrt().floor() / 5_000.0;
            assert!(
                (share - exact).abs() <= 0.02 * exact + 1e-9,
                "{upper}: {share} vs {exact}"
            );
        }
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record_micros(5);
        b.record_micros(500);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.max(), Duration::from_micros(500));
        assert_eq!(a.min(), Duration::from_micros(5));
        assert_eq!(LatencyHistogram::new().percentile(50.0), Duration::ZERO);
    }
}
