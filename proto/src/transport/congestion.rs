//! Congestion control behind a small trait, with NewReno as the default.

use core::time::Duration;

use crate::time::{Instant, MaybeInstant};

/// Smallest congestion window, in packets of `mtu` bytes.
pub(crate) const MIN_WINDOW_PACKETS: u64 = 4;
/// Initial congestion window, in packets.
pub(crate) const INITIAL_WINDOW_PACKETS: u64 = 16;
/// The congestion window never exceeds this many full packets.
pub(crate) const MAX_WINDOW_PACKETS: u64 = 1024;

/// A congestion controller: how many bytes may be in flight. The recovery code calls it for
/// every acknowledged packet and every congestion event; pacing reads its window.
pub(crate) trait Controller: core::fmt::Debug {
    /// A packet of `bytes` sent at `sent_at` was acknowledged. `app_limited`: the sender was
    /// not using its window when it sent it, so the acknowledgement says nothing about
    /// whether a larger window would be safe.
    fn on_ack(&mut self, sent_at: Instant, bytes: u64, app_limited: bool);
    /// Packets were lost; the newest of them was sent at `sent_at`. `persistent`: losses span
    /// long enough with nothing acknowledged in between that the path may have changed.
    fn on_congestion_event(&mut self, now: Instant, sent_at: Instant, persistent: bool);
    /// Bytes that may be in flight.
    fn window(&self) -> u64;
}

/// NewReno: slow start, then one packet per window per round trip; halve on loss, once per
/// round trip; collapse to the minimum on persistent congestion.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewReno {
    mtu: u64,
    window: u64,
    ssthresh: u64,
    /// Bytes acknowledged towards the next one-packet increase (congestion avoidance).
    acked: u64,
    /// Losses of packets sent before this instant belong to a congestion event already
    /// responded to.
    recovery_start: MaybeInstant,
}

impl NewReno {
    pub(crate) fn new(mtu: usize) -> Self {
        let mtu = mtu as u64;
        NewReno {
            mtu,
            window: INITIAL_WINDOW_PACKETS * mtu,
            ssthresh: u64::MAX,
            acked: 0,
            recovery_start: MaybeInstant::NONE,
        }
    }

    fn min_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mtu
    }
}

impl Controller for NewReno {
    fn on_ack(&mut self, sent_at: Instant, bytes: u64, app_limited: bool) {
        if app_limited
            || self
                .recovery_start
                .get()
                .is_some_and(|start| sent_at <= start)
        {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
        } else {
            self.acked += bytes;
            if self.acked >= self.window {
                self.acked -= self.window;
                self.window += self.mtu;
            }
        }
        self.window = self.window.min(MAX_WINDOW_PACKETS * self.mtu);
    }

    fn on_congestion_event(&mut self, now: Instant, sent_at: Instant, persistent: bool) {
        if persistent {
            // Everything in flight for three probe timeouts was lost: the path may have
            // changed. Start again from the minimum, remembering half the old window.
            self.ssthresh = (self.window / 2).max(self.min_window());
            self.window = self.min_window();
            self.acked = 0;
            self.recovery_start = now.into();
            return;
        }
        if self
            .recovery_start
            .get()
            .is_some_and(|start| sent_at <= start)
        {
            return;
        }
        self.recovery_start = now.into();
        self.window = (self.window / 2).max(self.min_window());
        self.ssthresh = self.window;
        self.acked = 0;
    }

    fn window(&self) -> u64 {
        self.window
    }
}

/// How long losses must span, with nothing acknowledged between, to count as persistent
/// congestion: three probe timeouts (RFC 9002 §7.6).
pub(crate) fn persistent_congestion_duration(pto: Duration) -> Duration {
    pto * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_limited_acks_do_not_grow_the_window() {
        let mut c = NewReno::new(1000);
        let w = c.window();
        for _ in 0..100 {
            c.on_ack(Instant::ZERO, 1000, true);
        }
        assert_eq!(c.window(), w);
        c.on_ack(Instant::ZERO, 1000, false);
        assert_eq!(c.window(), w + 1000);
    }

    #[test]
    fn loss_halves_once_per_round_and_persistent_congestion_collapses() {
        let mut c = NewReno::new(1000);
        let t = Instant::from_millis;
        c.on_congestion_event(t(10), t(5), false);
        assert_eq!(c.window(), 8_000);
        c.on_congestion_event(t(11), t(6), false);
        assert_eq!(c.window(), 8_000, "same round trip");
        c.on_congestion_event(t(30), t(20), false);
        assert_eq!(c.window(), 4_000, "floor of four packets");
        c.on_congestion_event(t(40), t(35), false);
        assert_eq!(c.window(), 4_000);
        let mut c = NewReno::new(1000);
        c.on_congestion_event(t(10), t(5), true);
        assert_eq!(c.window(), 4_000);
    }
}
