//! Time as the protocol sees it: absolute instants handed in by the driver.
//!
//! The core never reads a clock. Drivers convert their clock (`std::time::Instant`, a game's
//! frame clock, the simulator's virtual clock) into [`Instant`], an integer count of
//! microseconds since an origin of the driver's choosing. Only differences between instants
//! matter, so any origin works as long as it stays fixed for the endpoint's lifetime.

use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A point in time, in microseconds since an arbitrary origin chosen by the driver.
///
/// ```
/// use core::time::Duration;
/// use shoal_proto::Instant;
/// let t0 = Instant::from_micros(1_000);
/// let t1 = t0 + Duration::from_millis(2);
/// assert_eq!(t1.as_micros(), 3_000);
/// assert_eq!(t1 - t0, Duration::from_millis(2));
/// assert_eq!(t0 - t1, Duration::ZERO); // differences saturate at zero
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant { micros: 0 };

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Instant { micros }
    }

    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant {
            micros: millis.saturating_mul(1000),
        }
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }
}

/// Converts a duration to whole microseconds, saturating at `u64::MAX`.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Instant {
    /// `self` plus `nanos` nanoseconds (whole microseconds of them, as adding a `Duration`
    /// of as many nanoseconds gives), saturating.
    pub(crate) fn plus_nanos(self, nanos: u64) -> Instant {
        Instant {
            micros: self.micros.saturating_add(nanos / 1000),
        }
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant {
            micros: self.micros.saturating_add(micros(rhs)),
        }
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant {
            micros: self.micros.saturating_sub(micros(rhs)),
        }
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// The timers a connection keeps. Each has at most one deadline; the connection's next
/// wake-up is the earliest of them. Indexing a fixed table by this enum keeps timer handling
/// allocation-free and makes "which timer fired" a plain match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Resend the handshake packet (client, while connecting).
    Handshake,
    /// Give up on the handshake (client).
    HandshakeTimeout,
    /// Loss detection: retransmission timeout or time-threshold loss.
    Loss,
    /// Send a delayed acknowledgement.
    Ack,
    /// Send a keepalive because nothing was sent for a while.
    Keepalive,
    /// Close the connection because nothing was received for a while.
    Idle,
    /// The earliest pending request deadline.
    Request,
    /// Evict stale partial unreliable messages.
    Reassembly,
    /// The send rate limiter has tokens again.
    Pacing,
    /// The next challenge to a direct path being probed.
    Probe,
    /// The peer said it does not know this connection and nothing authentic came since:
    /// believe it.
    ResetConfirm,
}

impl Timer {
    pub(crate) const COUNT: usize = 11;
    pub(crate) const ALL: [Timer; Timer::COUNT] = [
        Timer::Handshake,
        Timer::HandshakeTimeout,
        Timer::Loss,
        Timer::Ack,
        Timer::Keepalive,
        Timer::Idle,
        Timer::Request,
        Timer::Reassembly,
        Timer::Pacing,
        Timer::Probe,
        Timer::ResetConfirm,
    ];
}

/// A fixed table of deadlines indexed by [`Timer`], in microseconds, with `u64::MAX` for
/// "not set" (a deadline at the end of time never comes anyway): half the size of
/// `Option<Instant>`s, and the earliest is a branch-free minimum.
#[derive(Clone, Debug)]
pub(crate) struct TimerTable {
    deadlines: [u64; Timer::COUNT],
}

impl Default for TimerTable {
    fn default() -> Self {
        TimerTable {
            deadlines: [UNSET; Timer::COUNT],
        }
    }
}

const UNSET: u64 = u64::MAX;

/// An optional instant in eight bytes, where `Option<Instant>` takes sixteen: a connection
/// keeps several, and a server thousands of connections. `u64::MAX` µs stands for none, as in
/// [`TimerTable`], so an instant at the very end of time (which only saturating arithmetic
/// or a driver's made-up clock reaches) is kept one microsecond earlier: it still reads as an
/// instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MaybeInstant(u64);

impl MaybeInstant {
    /// No instant.
    pub(crate) const NONE: MaybeInstant = MaybeInstant(UNSET);

    pub(crate) fn get(self) -> Option<Instant> {
        (self.0 != UNSET).then_some(Instant { micros: self.0 })
    }
}

impl Default for MaybeInstant {
    fn default() -> Self {
        MaybeInstant::NONE
    }
}

impl From<Option<Instant>> for MaybeInstant {
    fn from(t: Option<Instant>) -> Self {
        MaybeInstant(t.map_or(UNSET, |t| t.micros.min(UNSET - 1)))
    }
}

impl From<Instant> for MaybeInstant {
    fn from(t: Instant) -> Self {
        Some(t).into()
    }
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = at.micros;
    }

    pub(crate) fn set_opt(&mut self, timer: Timer, at: Option<Instant>) {
        self.deadlines[timer as usize] = at.map_or(UNSET, |t| t.micros);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = UNSET;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        let micros = self.deadlines[timer as usize];
        (micros != UNSET).then_some(Instant { micros })
    }

    /// Whether `timer` is set and due at `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        matches!(self.get(timer), Some(t) if t <= now)
    }

    /// The earliest deadline, if any timer is set.
    pub(crate) fn next(&self) -> Option<Instant> {
        let micros = self.deadlines.iter().copied().fold(UNSET, u64::min);
        (micros != UNSET).then_some(Instant { micros })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_table_next_is_earliest_deadline() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Idle, Instant::from_micros(50));
        t.set(Timer::Ack, Instant::from_micros(20));
        assert_eq!(t.next(), Some(Instant::from_micros(20)));
        t.stop(Timer::Ack);
        assert_eq!(t.next(), Some(Instant::from_micros(50)));
        assert!(t.is_expired(Timer::Idle, Instant::from_micros(50)));
        assert!(!t.is_expired(Timer::Idle, Instant::from_micros(49)));
    }

    #[test]
    fn a_maybe_instant_takes_eight_bytes_and_keeps_every_instant() {
        assert_eq!(core::mem::size_of::<MaybeInstant>(), 8);
        assert_eq!(MaybeInstant::default().get(), None);
        assert_eq!(MaybeInstant::NONE.get(), None);
        for micros in [0, 1, 40_000, u64::MAX / 2, u64::MAX - 1] {
            let t = Instant::from_micros(micros);
            assert_eq!(MaybeInstant::from(t).get(), Some(t));
            assert_eq!(MaybeInstant::from(Some(t)).get(), Some(t));
        }
        assert_eq!(MaybeInstant::from(None).get(), None);
        assert_eq!(
            MaybeInstant::from(Instant::from_micros(u64::MAX)).get(),
            Some(Instant::from_micros(u64::MAX - 1)),
            "the end of time is still an instant"
        );
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_micros(u64::MAX - 1);
        assert_eq!((t + Duration::from_secs(1)).as_micros(), u64::MAX);
        assert_eq!(Instant::ZERO - Duration::from_secs(1), Instant::ZERO);
    }
}
