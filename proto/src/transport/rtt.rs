//! Round-trip time: smoothed estimate and variation (RFC 6298 / RFC 9002), samples corrected
//! by the peer's reported acknowledgement delay.

use core::time::Duration;

/// Smoothed RTT, its variation and the minimum seen.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RttEstimator {
    smoothed: Option<Duration>,
    variance: Duration,
    latest: Duration,
    initial: Duration,
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration) -> Self {
        RttEstimator {
            smoothed: None,
            variance: initial / 2,
            latest: initial,
            initial,
        }
    }

    /// Takes a sample: `raw` from send to acknowledgement, of which the peer says it held the
    /// acknowledgement for `ack_delay`. The claim is trusted up to `max_ack_delay` (which
    /// every timeout adds back), so a lying peer can make the path look faster by no more.
    pub(crate) fn update(&mut self, raw: Duration, ack_delay: Duration, max_ack_delay: Duration) {
        let sample = raw.saturating_sub(ack_delay.min(max_ack_delay));
        self.latest = sample;
        match self.smoothed {
            None => {
                self.smoothed = Some(sample);
                self.variance = sample / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                self.variance = (self.variance * 3 + diff) / 4;
                self.smoothed = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    pub(crate) fn smoothed(&self) -> Duration {
        self.smoothed.unwrap_or(self.initial)
    }

    pub(crate) fn measured(&self) -> Option<Duration> {
        self.smoothed
    }

    pub(crate) fn variance(&self) -> Duration {
        self.variance
    }

    /// Probe timeout before backoff: srtt + 4·rttvar + the peer's max ack delay.
    pub(crate) fn pto(&self, max_ack_delay: Duration) -> Duration {
        self.smoothed() + (self.variance * 4).max(Duration::from_millis(1)) + max_ack_delay
    }

    /// Time after which a packet older than an acknowledged one counts as lost.
    pub(crate) fn loss_delay(&self) -> Duration {
        let base = self.smoothed().max(self.latest);
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
        rtt.update(ms(50), ms(0), ms(25));
        assert_eq!(rtt.smoothed(), ms(50));
        rtt.update(ms(70), ms(20), ms(25));
        assert_eq!(rtt.latest, ms(50), "20 ms of the 70 were the peer's delay");
        rtt.update(ms(100), ms(90), ms(25));
        assert_eq!(rtt.latest, ms(75), "delay capped at max_ack_delay");
    }
}
