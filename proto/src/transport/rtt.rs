//! Round-trip time: smoothed estimate and variation (RFC 6298 / RFC 9002), samples corrected
//! by the peer's reported acknowledgement delay.

use core::time::Duration;

use super::recovery::LAZY_ACK_DELAY;

/// Smoothed RTT, its variation and the minimum seen.
///
/// Kept as whole nanoseconds (8 bytes each rather than a `Duration`'s 16, on every
/// connection); the arithmetic is done in `Duration`s, so the values are exactly those a
/// `Duration` field would hold.
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
#[derive(Clone, Copy, Debug)]
struct Nanos(u64);

impl Nanos {
    const NONE: Nanos = Nanos(u64::MAX);

    fn of(d: Duration) -> Self {
        Nanos(
            u64::try_from(d.as_nanos())
                .unwrap_or(u64::MAX - 1)
                .min(u64::MAX - 1),
        )
    }

    fn get(self) -> Option<Duration> {
        (self.0 != u64::MAX).then(|| Duration::from_nanos(self.0))
    }

    /// For the fields that always hold a value.
    fn duration(self) -> Duration {
        self.get().unwrap_or(Duration::MAX)
    }
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration) -> Self {
        RttEstimator {
            smoothed: Nanos::NONE,
            variance: Nanos::of(initial / 2),
            latest: Nanos::of(initial),
            min: Nanos::NONE,
            initial: Nanos::of(initial),
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
        let min = self.min.get();
        let sample = if lazy {
            let floor = min.map_or(Duration::ZERO, |m| m.saturating_sub(max_ack_delay));
            raw.saturating_sub(ack_delay.min(LAZY_ACK_DELAY.max(max_ack_delay)))
                .max(floor)
        } else {
            self.min = Nanos::of(min.map_or(raw, |m| m.min(raw)));
            raw.saturating_sub(ack_delay.min(max_ack_delay))
        };
        self.latest = Nanos::of(sample);
        match self.smoothed.get() {
            None => {
                self.smoothed = Nanos::of(sample);
                self.variance = Nanos::of(sample / 2);
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                self.variance = Nanos::of((self.variance() * 3 + diff) / 4);
                self.smoothed = Nanos::of((srtt * 7 + sample) / 8);
            }
        }
    }

    pub(crate) fn smoothed(&self) -> Duration {
        self.smoothed.get().unwrap_or(self.initial.duration())
    }

    pub(crate) fn measured(&self) -> Option<Duration> {
        self.smoothed.get()
    }

    pub(crate) fn variance(&self) -> Duration {
        self.variance.duration()
    }

    /// Probe timeout before backoff: srtt + 4·rttvar + the peer's max ack delay.
    pub(crate) fn pto(&self, max_ack_delay: Duration) -> Duration {
        self.smoothed() + (self.variance() * 4).max(Duration::from_millis(1)) + max_ack_delay
    }

    /// Time after which a packet older than an acknowledged one counts as lost.
    pub(crate) fn loss_delay(&self) -> Duration {
        let base = self.smoothed().max(self.latest.duration());
        (base * 9 / 8).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
