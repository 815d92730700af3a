//! The driver's clock and the endpoint seed: the two things `shoal-proto` leaves to drivers.
//! Public so that other drivers (`shoal-mio`, your own) use the same conversions.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::Instant;

/// Converts `std::time::Instant` into the protocol's [`Instant`]: microseconds since the
/// moment the clock was created. Never goes backwards, even if the caller hands in an older
/// `std::time::Instant` than one it handed in before.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: std::time::Instant,
    last: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Clock {
            origin: std::time::Instant::now(),
            last: Instant::ZERO,
        }
    }

    /// The protocol time now.
    pub fn now(&mut self) -> Instant {
        self.at(std::time::Instant::now())
    }

    /// The protocol time now, without recording it.
    pub fn peek(&self) -> Instant {
        let since = std::time::Instant::now().saturating_duration_since(self.origin);
        let micros = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
        self.last.max(Instant::from_micros(micros))
    }

    /// The protocol time at `t` (clamped to the origin and to the latest time returned).
    pub fn at(&mut self, t: std::time::Instant) -> Instant {
        let since = t.saturating_duration_since(self.origin);
        let micros = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
        self.last = self.last.max(Instant::from_micros(micros));
        self.last
    }

    /// How long from `now` until `deadline`, zero if it has passed.
    pub fn until(now: Instant, deadline: Instant) -> Duration {
        deadline.saturating_duration_since(now)
    }
}

/// 32 bytes from the operating system's cryptographic random source, for
/// `Config::secret_seed` (the root of handshake keys).
pub fn os_secret_seed() -> std::io::Result<shoal_proto::SecretSeed> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(std::io::Error::other)?;
    Ok(shoal_proto::SecretSeed(seed))
}

/// The wall-clock time since the Unix epoch (zero if the clock is set before it), for
/// `Endpoint::set_unix_time`.
pub fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Distinguishes seeds derived in the same process within the same clock tick.
static SEED_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The seed to give the endpoint: `configured` if it is non-zero, otherwise one derived from
/// OS randomness. `RandomState` keys its SipHash from the OS random source (once per thread,
/// then a per-instance increment); hashing the wall clock, the local address, the process id
/// and a counter through it gives distinct, unpredictable seeds without a new dependency.
pub fn endpoint_seed(configured: u64, local: SocketAddr) -> u64 {
    if configured != 0 {
        return configured;
    }
    let mut hasher = RandomState::new().build_hasher();
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .hash(&mut hasher);
    local.hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    SEED_COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .hash(&mut hasher);
    // Zero means "not set" in `Config::seed`; never hand it out.
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_seed_is_kept() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        assert_eq!(endpoint_seed(42, addr), 42);
    }

    #[test]
    fn derived_seeds_are_non_zero_and_differ() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let a = endpoint_seed(0, addr);
        let b = endpoint_seed(0, addr);
        assert_ne!(a, 0);
        assert_ne!(b, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn clock_never_goes_backwards() {
        let mut clock = Clock::new();
        let later = clock.origin + Duration::from_millis(5);
        assert_eq!(clock.at(later), Instant::from_millis(5));
        // An older instant, and one before the origin, both keep the latest time.
        assert_eq!(clock.at(clock.origin), Instant::from_millis(5));
        let before = clock.origin.checked_sub(Duration::from_millis(1));
        if let Some(before) = before {
            assert_eq!(clock.at(before), Instant::from_millis(5));
        }
        assert!(clock.now() >= Instant::from_millis(5));
    }

    #[test]
    fn until_saturates_at_zero() {
        let now = Instant::from_millis(10);
        assert_eq!(
            Clock::until(now, Instant::from_millis(12)),
            Duration::from_millis(2)
        );
        assert_eq!(Clock::until(now, Instant::from_millis(3)), Duration::ZERO);
    }
}
