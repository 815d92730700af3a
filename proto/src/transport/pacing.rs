//! Pacing: spreads a window's worth of packets over a round trip instead of sending them at
//! one instant, so a large message does not leave as hundreds of back-to-back datagrams.
//! Always on; `Config::max_send_rate` caps the rate further.

use core::time::Duration;

use crate::time::{micros, Instant};

/// Burst allowed at once: the window's share of this interval...
const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// ...but at least this many packets (a game tick's worth goes out together)...
const MIN_BURST_PACKETS: u64 = 10;
/// ...and at most this many.
const MAX_BURST_PACKETS: u64 = 64;

/// A token bucket refilled at 5/4 of window / RTT (or the configured cap, if lower).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacer {
    tokens: u64,
    capacity: u64,
    last: Option<Instant>,
    max_rate: Option<u64>,
    mtu: u64,
}

impl Pacer {
    pub(crate) fn new(mtu: usize, max_rate: Option<u64>) -> Self {
        let mtu = mtu as u64;
        Pacer {
            tokens: MIN_BURST_PACKETS * mtu,
            capacity: MIN_BURST_PACKETS * mtu,
            last: None,
            max_rate,
            mtu,
        }
    }

    /// Bytes per second at this window and RTT.
    fn rate(&self, window: u64, rtt: Duration) -> u64 {
        let rtt = micros(rtt).max(1);
        let rate = u64::try_from(u128::from(window) * 5 / 4 * 1_000_000 / u128::from(rtt))
            .unwrap_or(u64::MAX)
            .max(1);
        self.max_rate.map_or(rate, |cap| rate.min(cap))
    }

    fn refill(&mut self, now: Instant, window: u64, rtt: Duration) {
        let burst = u64::try_from(
            u128::from(window) * u128::from(micros(BURST_INTERVAL))
                / u128::from(micros(rtt).max(1)),
        )
        .unwrap_or(u64::MAX);
        let mut capacity = burst.clamp(MIN_BURST_PACKETS * self.mtu, MAX_BURST_PACKETS * self.mtu);
        if let Some(cap) = self.max_rate {
            // A configured rate limit also bounds the burst (1/20 s of it, at least 2 packets).
            capacity = capacity.min((cap / 20).max(2 * self.mtu));
        }
        self.capacity = capacity;
        let rate = self.rate(window, rtt);
        match self.last {
            Some(last) => {
                let elapsed = micros(now - last);
                let add = u64::try_from(u128::from(elapsed) * u128::from(rate) / 1_000_000)
                    .unwrap_or(u64::MAX);
                if add > 0 {
                    self.tokens = self.tokens.saturating_add(add);
                    self.last = Some(now);
                }
            }
            None => self.last = Some(now),
        }
        self.tokens = self.tokens.min(self.capacity);
    }

    /// When a packet of `bytes` may leave: `None` means now.
    pub(crate) fn delay(
        &mut self,
        now: Instant,
        bytes: usize,
        window: u64,
        rtt: Duration,
    ) -> Option<Instant> {
        self.refill(now, window, rtt);
        let bytes = bytes as u64;
        if self.tokens >= bytes {
            return None;
        }
        let missing = bytes - self.tokens;
        let wait =
            u64::try_from(u128::from(missing) * 1_000_000 / u128::from(self.rate(window, rtt)))
                .unwrap_or(u64::MAX);
        Some(now + Duration::from_micros(wait.max(1)))
    }

    /// A packet of `bytes` left.
    pub(crate) fn on_sent(&mut self, bytes: usize) {
        self.tokens = self.tokens.saturating_sub(bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_spread_over_the_round_trip() {
        let mtu = 1200;
        let window = 100 * mtu as u64;
        let rtt = Duration::from_millis(100);
        let mut p = Pacer::new(mtu, None);
        let t0 = Instant::from_millis(1000);
        let mut now = t0;
        let mut sent = 0;
        let mut burst = 0;
        while sent < 100 {
            match p.delay(now, mtu, window, rtt) {
                None => {
                    p.on_sent(mtu);
                    sent += 1;
                    if now == t0 {
                        burst += 1;
                    }
                }
                Some(at) => now = at,
            }
        }
        assert!(burst <= MIN_BURST_PACKETS as usize, "burst {burst}");
        let spread = now - t0;
        assert!(spread >= Duration::from_millis(60), "{spread:?}");
        assert!(spread <= Duration::from_millis(100), "{spread:?}");
    }
}
