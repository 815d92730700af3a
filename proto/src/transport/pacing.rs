//! Pacing: spreads a window's worth of packets over a round trip instead of sending them at
//! one instant, so a large message does not leave as hundreds of back-to-back datagrams.
//! Always on; `Config::max_send_rate` caps the rate further.

use core::time::Duration;

use crate::config::Config;
use crate::time::{micros, Instant, MaybeInstant};

/// Burst allowed at once: the window's share of this interval...
const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// ...but at least this many packets (a game tick's worth goes out together)...
const MIN_BURST_PACKETS: u64 = 10;
/// ...and at most this many.
const MAX_BURST_PACKETS: u64 = 64;

/// A token bucket refilled at 5/4 of window / RTT (or `Config::max_send_rate`, if lower).
/// Sixteen bytes: the bucket's size is worked out at each refill, and the limits are the
/// config's, passed in rather than copied into every connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacer {
    tokens: u64,
    last: MaybeInstant,
}

impl Pacer {
    pub(crate) fn new(config: &Config) -> Self {
        Pacer {
            tokens: MIN_BURST_PACKETS * config.mtu as u64,
            last: MaybeInstant::NONE,
        }
    }

    /// Bytes per second at this window and RTT.
    fn rate(window: u64, rtt: Duration, config: &Config) -> u64 {
        let rate = mul_div(
            window.saturating_add(window / 4),
            1_000_000,
            micros(rtt).max(1),
        );
        let rate = rate.max(1);
        config.max_send_rate.map_or(rate, |cap| rate.min(cap))
    }

    /// Adds the tokens earned since the last refill; returns the rate and the bucket's size.
    fn refill(&mut self, now: Instant, window: u64, rtt: Duration, config: &Config) -> (u64, u64) {
        let mtu = config.mtu as u64;
        let burst = mul_div(window, micros(BURST_INTERVAL), micros(rtt).max(1));
        let mut capacity = burst.clamp(MIN_BURST_PACKETS * mtu, MAX_BURST_PACKETS * mtu);
        if let Some(cap) = config.max_send_rate {
            // A configured rate limit also bounds the burst (1/20 s of it, at least 2 packets).
            capacity = capacity.min((cap / 20).max(2 * mtu));
        }
        let rate = Self::rate(window, rtt, config);
        match self.last.get() {
            Some(last) => {
                let add = mul_div(micros(now - last), rate, 1_000_000);
                if add > 0 {
                    self.tokens = self.tokens.saturating_add(add);
                    self.last = now.into();
                }
            }
            None => self.last = now.into(),
        }
        self.tokens = self.tokens.min(capacity);
        (rate, capacity)
    }

    /// When a packet of `bytes` may leave: `None` means now. `bulk` is how many bytes of
    /// bulk data (what remains of a large message) the caller would send in a row, 0 when
    /// anything else waits. A packet waits for its own tokens, so a message queued beside
    /// a large one leaves within a packet time; bulk alone waits for a burst's worth (or for
    /// all of it, if less), so a large message wakes its sender once per burst rather than
    /// once per packet, at the same average rate.
    pub(crate) fn delay(
        &mut self,
        now: Instant,
        bytes: usize,
        bulk: usize,
        window: u64,
        rtt: Duration,
        config: &Config,
    ) -> Option<Instant> {
        let (rate, capacity) = self.refill(now, window, rtt, config);
        let bytes = bytes as u64;
        if self.tokens >= bytes {
            return None;
        }
        let target = (bulk as u64).min(capacity).max(bytes);
        let wait = mul_div(target - self.tokens, 1_000_000, rate);
        Some(now + Duration::from_micros(wait.max(1)))
    }

    /// Whether the bucket holds fewer than `bytes` tokens (before the refill `delay` makes):
    /// only then can `delay` hold a packet, and only then is bulk worth looking for.
    pub(crate) fn short_of(&self, bytes: usize) -> bool {
        self.tokens < bytes as u64
    }

    /// A packet of `bytes` left.
    pub(crate) fn on_sent(&mut self, bytes: usize) {
        self.tokens = self.tokens.saturating_sub(bytes as u64);
    }
}

/// `a * b / c` rounded down (saturating; `c` is not 0). In 64 bits when the product fits,
/// which it does for any real window and rate: a 128-bit division is a library call, and the
/// pacer runs for every packet.
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    match a.checked_mul(b) {
        Some(product) => product / c,
        None => u64::try_from(u128::from(a) * u128::from(b) / u128::from(c)).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_div_matches_128_bit_arithmetic_and_saturates() {
        let wide = |a: u64, b: u64, c: u64| {
            u64::try_from(u128::from(a) * u128::from(b) / u128::from(c)).unwrap_or(u64::MAX)
        };
        for (a, b, c) in [
            (0, 5, 7),
            (1_500_000, 1_000_000, 40_000),
            (u64::MAX / 3, 1_000_000, 1),
            (u64::MAX, 1_000_000, 1_000_000),
            (u64::MAX, u64::MAX, u64::MAX),
            (1 << 40, 1 << 30, 3),
        ] {
            assert_eq!(mul_div(a, b, c), wide(a, b, c), "{a} * {b} / {c}");
        }
        assert_eq!(mul_div(u64::MAX, 2, 1), u64::MAX);
    }

    /// A config of `mtu` with no rate limit, and a pacer of it.
    fn unlimited(mtu: usize) -> (Config, Pacer) {
        let config = Config {
            mtu,
            max_send_rate: None,
            ..Config::default()
        };
        let pacer = Pacer::new(&config);
        (config, pacer)
    }

    #[test]
    fn a_window_is_spread_over_the_round_trip() {
        let mtu = 1200;
        let window = 100 * mtu as u64;
        let rtt = Duration::from_millis(100);
        let (config, mut p) = unlimited(mtu);
        let t0 = Instant::from_millis(1000);
        let mut now = t0;
        let mut sent = 0;
        let mut burst = 0;
        while sent < 100 {
            match p.delay(now, mtu, 0, window, rtt, &config) {
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

    /// A packet behind a spent bucket waits for its own tokens, not for a burst: a game's
    /// state message queued beside a large one leaves within a packet time. (Waking once per
    /// burst saves wake-ups, but a burst at a small window is half a round trip or more.)
    #[test]
    fn a_packet_behind_a_spent_bucket_waits_one_packet_time() {
        let mtu = 1200;
        let window = 16 * mtu as u64;
        let rtt = Duration::from_millis(80);
        let (config, mut p) = unlimited(mtu);
        let now = Instant::from_millis(1000);
        while p.delay(now, mtu, 0, window, rtt, &config).is_none() {
            p.on_sent(mtu);
        }
        // 5/4 of 16 packets per 80 ms: a packet every 4 ms.
        let wait = p
            .delay(now, mtu, 0, window, rtt, &config)
            .map(|at| at - now);
        assert!(
            wait.is_some_and(|w| w <= Duration::from_millis(4)),
            "{wait:?}"
        );
    }

    /// Bulk data alone (the rest of a large message) waits for a burst's worth of tokens, so
    /// its sender wakes once per burst; at the same average rate as packet by packet.
    #[test]
    fn bulk_alone_waits_for_a_burst_and_keeps_the_rate() {
        let mtu = 1200;
        let window = 100 * mtu as u64;
        let rtt = Duration::from_millis(100);
        let bulk = 400 * mtu;
        let run = |bulk: usize| {
            let (config, mut p) = unlimited(mtu);
            let t0 = Instant::from_millis(1000);
            let (mut now, mut sent, mut wakes) = (t0, 0, 0);
            while sent < 300 {
                match p.delay(now, mtu, bulk, window, rtt, &config) {
                    None => {
                        p.on_sent(mtu);
                        sent += 1;
                    }
                    Some(at) => {
                        now = at;
                        wakes += 1;
                    }
                }
            }
            (now - t0, wakes)
        };
        let (packet_time, packet_wakes) = run(0);
        let (burst_time, burst_wakes) = run(bulk);
        // 100 packets per 100 ms at 5/4: a burst is 2 ms of the window, 2 packets, so at
        // least the floor of 10.
        assert!(
            packet_wakes >= 250,
            "{packet_wakes} wake-ups packet by packet"
        );
        assert!(burst_wakes <= 40, "{burst_wakes} wake-ups in bursts");
        let (p, b) = (packet_time.as_micros(), burst_time.as_micros());
        assert!(
            b >= p && b <= p + p / 20,
            "{burst_time:?} in bursts, {packet_time:?} by packet"
        );
        // Less bulk than a burst waits only for itself: 3 packets at 1,250 a second are
        // 2.4 ms, where a burst's 10 would be 8 ms.
        let (config, mut p) = unlimited(mtu);
        let now = Instant::from_millis(1000);
        while p.delay(now, mtu, 3 * mtu, window, rtt, &config).is_none() {
            p.on_sent(mtu);
        }
        let wait = p
            .delay(now, mtu, 3 * mtu, window, rtt, &config)
            .map(|at| at - now);
        assert!(
            wait.is_some_and(|w| w > Duration::from_millis(1) && w <= Duration::from_micros(2_500)),
            "{wait:?}"
        );
    }
}
