//! Round-trip time: smoothed estimate and variation (RFC 6298 / RFC 9002), samples corrected
//! by the peer's reported acknowledgement delay.

use core::time::Duration;

use super::recovery::LAZY_ACK_DELAY;

/// Smoothed RTT, its variation and the minimum seen.
///
/// Kept, and computed, in whole nanoseconds: 8 bytes each rather than a `Duration`'s 16, on
/// every connection, and integer arithmetic where `Duration`'s (normalising seconds and
/// nanoseconds at every step) cost hundreds of instructions per acknowledgement. The values
/// are exactly those the same formulas give in `Duration`s: they only divide by 2, 4 and 8,
/// which divide a second's nanoseconds, so no rounding differs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RttEstimator {
    smoothed: Nanos,
    variance: Nanos,
    latest: Nanos,
    /// The smallest raw sample of a promptly acknowledged packet.
    min: Nanos,
    initial: Nanos,
}

/// A duration in nanoseconds, or none (`u64::MAX`, 584 years: never a round trip).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Nanos(u64);

const MILLISECOND: u64 = 1_000_000;

impl Nanos {
    const NONE: Nanos = Nanos(u64::MAX);

    /// `d` in nanoseconds, saturating below `NONE`.
    fn of(d: Duration) -> Self {
        let nanos = d
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()));
        Nanos(nanos.min(u64::MAX - 1))
    }

    /// A result of arithmetic, saturating below `NONE`.
    fn saturated(n: u64) -> Self {
        Nanos(n.min(u64::MAX - 1))
    }

    fn get(self) -> Option<u64> {
        (self != Nanos::NONE).then_some(self.0)
    }

    /// As a `Duration` (`NONE` only where a value is always held).
    fn duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

/// `d` in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    Nanos::of(d).0
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration) -> Self {
        let initial = Nanos::of(initial);
        RttEstimator {
            smoothed: Nanos::NONE,
            variance: Nanos(initial.0 / 2),
            latest: initial,
            min: Nanos::NONE,
            initial,
        }
    }

    /// Takes a sample: `raw` from send to acknowledgement, of which the peer says it held the
    /// acknowledgement for `ack_delay`. The claim is trusted up to `max_ack_delay` (which
    /// every timeout adds back), so a lying peer can make the path look faster by no more.
    /// A `lazy` packet's acknowledgement may honestly be held up to `LAZY_ACK_DELAY`; that
    /// claim is trusted as far as it keeps the sample above the smallest raw sample of a
    /// prompt one less `max_ack_delay` (when there is one: a game that sends only
    /// unreliable messages has only lazy samples), which bounds what a liar gains the
    /// same way.
    pub(crate) fn update(
        &mut self,
        raw: Duration,
        ack_delay: Duration,
        max_ack_delay: Duration,
        lazy: bool,
    ) {
        let (raw, ack_delay) = (Nanos::of(raw).0, Nanos::of(ack_delay).0);
        let max_ack_delay = Nanos::of(max_ack_delay).0;
        let min = self.min.get();
        let sample = if lazy {
            let floor = min.map_or(0, |m| m.saturating_sub(max_ack_delay));
            let trusted = Nanos::of(LAZY_ACK_DELAY).0.max(max_ack_delay);
            raw.saturating_sub(ack_delay.min(trusted)).max(floor)
        } else {
            self.min = Nanos(min.map_or(raw, |m| m.min(raw)));
            raw.saturating_sub(ack_delay.min(max_ack_delay))
        };
        self.latest = Nanos(sample);
        match self.smoothed.get() {
            None => {
                self.smoothed = Nanos(sample);
                self.variance = Nanos(sample / 2);
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                let variance = self.variance.0.saturating_mul(3).saturating_add(diff);
                self.variance = Nanos::saturated(variance / 4);
                self.smoothed = Nanos::saturated(srtt.saturating_mul(7).saturating_add(sample) / 8);
            }
        }
    }

    fn smoothed_nanos(&self) -> u64 {
        self.smoothed.get().unwrap_or(self.initial.0)
    }

    pub(crate) fn smoothed(&self) -> Duration {
        Nanos(self.smoothed_nanos()).duration()
    }

    pub(crate) fn measured(&self) -> Option<Duration> {
        self.smoothed.get().map(Duration::from_nanos)
    }

    pub(crate) fn variance(&self) -> Duration {
        self.variance.duration()
    }

    /// Probe timeout before backoff: srtt + 4·rttvar + the peer's max ack delay.
    pub(crate) fn pto(&self, max_ack_delay: Duration) -> Duration {
        Duration::from_nanos(self.pto_nanos(nanos(max_ack_delay)))
    }

    /// [`Self::pto`] in nanoseconds (the loss timer is recomputed for every packet:
    /// `Duration` arithmetic cost it several times the instructions).
    pub(crate) fn pto_nanos(&self, max_ack_delay_nanos: u64) -> u64 {
        let spread = self.variance.0.saturating_mul(4).max(MILLISECOND);
        self.smoothed_nanos()
            .saturating_add(spread)
            .saturating_add(max_ack_delay_nanos)
    }

    /// Time after which a packet older than an acknowledged one counts as lost.
    #[cfg(test)]
    pub(crate) fn loss_delay(&self) -> Duration {
        Duration::from_nanos(self.loss_delay_nanos())
    }

    /// Time after which a packet older than an acknowledged one counts as lost, in
    /// nanoseconds.
    pub(crate) fn loss_delay_nanos(&self) -> u64 {
        let base = self.smoothed_nanos().max(self.latest.0);
        (base.saturating_mul(9) / 8).max(MILLISECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The formulas in `Duration`s, as the estimator once computed them.
    #[derive(Clone, Copy)]
    struct Reference {
        smoothed: Option<Duration>,
        variance: Duration,
        latest: Duration,
        min: Option<Duration>,
        initial: Duration,
    }

    impl Reference {
        fn update(&mut self, raw: Duration, ack_delay: Duration, mad: Duration, lazy: bool) {
            let sample = if lazy {
                let floor = self.min.map_or(Duration::ZERO, |m| m.saturating_sub(mad));
                raw.saturating_sub(ack_delay.min(LAZY_ACK_DELAY.max(mad)))
                    .max(floor)
            } else {
                self.min = Some(self.min.map_or(raw, |m| m.min(raw)));
                raw.saturating_sub(ack_delay.min(mad))
            };
            self.latest = sample;
            match self.smoothed {
                None => {
                    self.smoothed = Some(sample);
                    self.variance = sample / 2;
                }
                Some(srtt) => {
                    self.variance = (self.variance * 3 + srtt.abs_diff(sample)) / 4;
                    self.smoothed = Some((srtt * 7 + sample) / 8);
                }
            }
        }

        fn pto(&self, mad: Duration) -> Duration {
            self.smoothed.unwrap_or(self.initial)
                + (self.variance * 4).max(Duration::from_millis(1))
                + mad
        }

        fn loss_delay(&self) -> Duration {
            let base = self.smoothed.unwrap_or(self.initial).max(self.latest);
            (base * 9 / 8).max(Duration::from_millis(1))
        }
    }

    proptest! {
        /// Whole nanoseconds give exactly what `Duration` arithmetic gave.
        #[test]
        fn nanosecond_arithmetic_matches_the_duration_formulas(
            initial in 1u64..3_000_000_000,
            samples in proptest::collection::vec(
                (0u64..20_000_000_000, 0u64..2_000_000_000, 0u64..100_000_000, any::<bool>()),
                1..60,
            )
        ) {
            let initial = Duration::from_nanos(initial);
            let mut rtt = RttEstimator::new(initial);
            let mut reference = Reference {
                smoothed: None,
                variance: initial / 2,
                latest: initial,
                min: None,
                initial,
            };
            for (raw, ack_delay, mad, lazy) in samples {
                let (raw, ack_delay, mad) =
                    (Duration::from_nanos(raw), Duration::from_nanos(ack_delay), Duration::from_nanos(mad));
                rtt.update(raw, ack_delay, mad, lazy);
                reference.update(raw, ack_delay, mad, lazy);
                prop_assert_eq!(rtt.measured(), reference.smoothed);
                prop_assert_eq!(rtt.variance(), reference.variance);
                prop_assert_eq!(rtt.pto(mad), reference.pto(mad));
                prop_assert_eq!(rtt.loss_delay(), reference.loss_delay());
            }
        }
    }

    #[test]
    fn ack_delay_is_taken_out_of_samples_up_to_max_ack_delay() {
        let ms = Duration::from_millis;
        let mut rtt = RttEstimator::new(ms(100));
        rtt.update(ms(50), ms(0), ms(25), false);
        assert_eq!(rtt.smoothed(), ms(50));
        rtt.update(ms(70), ms(20), ms(25), false);
        assert_eq!(
            rtt.latest.duration(),
            ms(50),
            "20 ms of the 70 were the peer's delay"
        );
        rtt.update(ms(100), ms(90), ms(25), false);
        assert_eq!(
            rtt.latest.duration(),
            ms(75),
            "delay capped at max_ack_delay"
        );
    }

    #[test]
    fn a_lazy_acknowledgement_may_claim_a_long_delay_but_not_below_the_smallest_sample() {
        let ms = Duration::from_millis;
        let mut rtt = RttEstimator::new(ms(100));
        rtt.update(ms(45), ms(5), ms(5), false);
        rtt.update(ms(130), ms(90), ms(5), true);
        assert_eq!(
            rtt.latest.duration(),
            ms(40),
            "90 ms of the 130 were the peer's honest delay"
        );
        rtt.update(ms(130), ms(130), ms(5), true);
        assert_eq!(
            rtt.latest.duration(),
            ms(40),
            "45 ms less max_ack_delay is the floor"
        );
        rtt.update(ms(200), ms(150), ms(5), true);
        assert_eq!(
            rtt.latest.duration(),
            ms(100),
            "trusted up to LAZY_ACK_DELAY"
        );
        let mut only_lazy = RttEstimator::new(ms(100));
        only_lazy.update(ms(60), ms(40), ms(5), true);
        assert_eq!(
            only_lazy.latest.duration(),
            ms(20),
            "no prompt sample, no floor"
        );
    }
}
